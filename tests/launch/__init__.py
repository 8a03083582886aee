"""Tests that spawn `accelerate launch` (marked `launch`); a package so its conftest does not shadow tests/conftest.py."""
