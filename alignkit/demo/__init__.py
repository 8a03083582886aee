"""A tiny deterministic fact world, its gold judge and base model for alignkit's offline demo."""
