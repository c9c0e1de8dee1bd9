"""Recognition: the model folder, the twin's head, the gallery, fusion and per-frame verdicts.

The LiteRT runtime sits below both this package and faces/, in daemon/runtime.py.
"""
