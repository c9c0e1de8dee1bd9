"""Towers, training loops, the head, export and model provenance."""
