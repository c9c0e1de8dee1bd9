"""Metrics, held-out evaluation, door-level evaluation, spoofs and plots."""
