"""Recognition: the LiteRT runtime, the model folder, the twin's head, the gallery, fusion and per-frame verdicts."""
