"""Signed bundles: the format and reading them on the door."""
