"""Recorded pictures as a camera: a video file, an image folder or a glob pattern.

How tests and the ``replay`` camera type feed real pictures to the daemon, paced like a camera
or as fast as they decode.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import CameraError, DataError, UsageError
from ..faces.images import load_image
from .base import BaseCamera, describe_error, fit_to_side
from .frame import Frame

logger = logging.getLogger(__name__)

#: file name endings a folder source plays; other files (notes, SOURCE.md) are ignored quietly
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"}
)


def _natural_key(path: str) -> list[object]:
    """frame_2 before frame_10, the way people number pictures."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


class ReplayCamera(BaseCamera):
    """Plays a video file, an image folder or a glob pattern as if it were a camera.

    ``realtime`` paces frames at the video's frame rate (``fps`` for pictures) against the
    monotonic clock: nothing is dropped, a frame is delivered when due, and a consumer slower
    than the source gets frames as fast as it asks (the schedule moves on, no catch-up burst).
    Without it, frames come as fast as they decode. ``loop`` starts again at the end; otherwise
    ``read()`` returns ``None`` at the end, as for a video that ends early. A source that cannot
    be opened at all (missing, not a video, no pictures) raises ``CameraError`` in ``open()``.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        realtime: bool = True,
        loop: bool = False,
        fps: float = 15.0,
        rotate: int = 0,
        mirror: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(rotate, mirror)
        if not fps > 0:
            raise UsageError(f"replay fps must be positive, not {fps!r}")
        self.source = os.fspath(source)
        self.realtime, self.loop, self.fps = realtime, loop, float(fps)
        self.name = f"replay:{self.source}"
        self._clock, self._sleep = clock, sleep
        self.kind: str | None = None  # "video" or "images", known after open()
        self.files: list[str] = []
        self.skipped = 0  # unreadable pictures skipped (each time one is met)
        self._warned: set[str] = set()
        self._cap: Any = None
        self._position = 0  # next frame number in the file / position in the list
        self._frames_this_pass = 0
        self._rate = self.fps
        self._start: float | None = None
        self._due_index = 0
        self._ended = False

    # -- opening -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        path = Path(self.source)
        if path.is_dir():
            files = [str(p) for p in path.iterdir() if p.is_file()
                     and p.suffix.lower() in IMAGE_SUFFIXES]
            self._open_images(files, f"folder {self.source} has no pictures")
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            self._open_images([str(path)], "")
        elif path.is_file():
            self._open_video()
        elif _has_glob(self.source):
            files = [p for p in glob.glob(self.source) if os.path.isfile(p)]
            self._open_images(files, f"pattern {self.source} matches no files")
        else:
            raise CameraError(f"replay source {self.source}: no such file or folder")
        self._index = 0
        self._start = None
        self._due_index = 0
        self._ended = False

    def _open_images(self, files: list[str], empty_message: str) -> None:
        if not files:
            raise CameraError(empty_message)
        self.kind = "images"
        self.files = sorted(files, key=_natural_key)
        self._rate = self.fps
        self._position = 0
        self._frames_this_pass = 0
        logger.info("replay: %d pictures from %s", len(self.files), self.source)

    def _open_video(self) -> None:
        cap = self._open_capture()
        rate = cap.get(cv2.CAP_PROP_FPS)
        self._rate = float(rate) if 0 < rate <= 1000 else self.fps  # nan/0: container says nothing
        self._cap = cap
        self.kind = "video"
        self._position = 0
        self._frames_this_pass = 0
        logger.info("replay: video %s at %.2f fps", self.source, self._rate)

    def _open_capture(self) -> Any:
        try:
            cap = cv2.VideoCapture(self.source)
        except cv2.error as exc:
            raise CameraError(f"video {self.source}: cannot open ({describe_error(exc)})") from exc
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"video {self.source}: cannot open (not a video, or damaged)")
        return cap

    # -- reading -------------------------------------------------------------------------

    def read(self) -> Frame | None:
        if self.kind is None:
            raise CameraError(f"{self.name} is not open")
        if self._ended:
            return None
        picture = self._next_picture()
        if picture is None:
            self._ended = True
            logger.info("replay: %s ended after %d frames", self.source, self._index)
            return None
        image, source_index = picture
        if self.realtime:
            self._wait_until_due()
        return self._frame(image, source_index=source_index)

    def _next_picture(self) -> tuple[np.ndarray, int] | None:
        """(RGB picture, source index) or None at the end; restarts once per end when looping."""
        for _ in range(2):
            picture = self._next_video() if self.kind == "video" else self._next_image()
            if picture is not None:
                self._frames_this_pass += 1
                return picture
            if not self.loop or self._frames_this_pass == 0:
                return None  # the end, or a whole pass without one good picture: stop spinning
            self._restart()
        return None

    def _restart(self) -> None:
        self._position = 0
        self._frames_this_pass = 0
        if self.kind == "video":
            if self._cap is not None:
                self._cap.release()
            self._cap = None
            self._cap = self._open_capture()  # reopening is more reliable than seeking to 0

    def _next_video(self) -> tuple[np.ndarray, int] | None:
        try:
            ok, bgr = self._cap.read()
        except cv2.error as exc:  # a damaged file ends where it breaks
            logger.warning("video %s: decoding stopped at frame %d: %s",
                           self.source, self._position, exc)
            return None
        if not ok or bgr is None:
            return None
        position = self._position
        self._position += 1
        # shrunk before the colour conversion: one full-size copy fewer (base.fit_to_side)
        return cv2.cvtColor(fit_to_side(bgr, self.max_side), cv2.COLOR_BGR2RGB), position

    def _next_image(self) -> tuple[np.ndarray, int] | None:
        while self._position < len(self.files):
            position = self._position
            self._position += 1
            file = self.files[position]
            try:
                return load_image(file), position
            except DataError as exc:
                self.skipped += 1
                if file not in self._warned:  # once per file, not once per loop
                    self._warned.add(file)
                    logger.warning("replay: skipping unreadable picture %s: %s", file, exc)
        return None

    def _wait_until_due(self) -> None:
        now = self._clock()
        interval = 1.0 / self._rate
        if self._start is None:
            self._start = now
        due = self._start + self._due_index * interval
        if due > now:
            self._sleep(due - now)
        elif now - due > interval:
            # behind by more than a frame: restart the schedule here instead of bursting later
            self._start = now - self._due_index * interval
        self._due_index += 1

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        self.kind = None
