"""What a detector returns. Shared by every detector, the aligner, the trainer and the daemon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: landmark order used everywhere: eye on the image's left (the subject's right eye), eye on the
#: image's right, nose tip, mouth centre. BlazeFace and YuNet both map onto these four.
LANDMARK_NAMES: tuple[str, ...] = ("eye_left", "eye_right", "nose", "mouth")


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates."""

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # (4, 2) float32, LANDMARK_NAMES order
    score: float

    @property
    def size(self) -> float:
        """Face size in pixels: the larger side of the box (used by the 'too small' gate)."""
        return float(max(self.box[2], self.box[3]))

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)
