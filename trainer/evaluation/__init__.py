"""Held-out evaluation, door-level evaluation, spoof replays and learning curves (the metrics and
plots they use live in trainer/stats/)."""
