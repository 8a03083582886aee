"""alignkit's stage recipes: `accelerate launch recipes/<stage>.py --config <yaml>` or `alignkit <stage> --config <yaml>`."""
