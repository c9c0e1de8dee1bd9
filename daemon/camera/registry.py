"""Which camera a config's ``camera.type`` names: one builder per type, in one table.

A new kind of camera is a driver module and one line here; nothing else chooses between them.
Every camera the daemon gets times its reads out after ``camera.read_timeout_s``
(:mod:`.read_timeout`), so a stalled driver is a fault the daemon recovers from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .frame import Camera
from .opencv import OpenCVCamera
from .pi_camera import Picamera2Camera
from .read_timeout import with_read_timeout
from .replay import ReplayCamera

if TYPE_CHECKING:
    from ..config.schema import Config


#: what a builder returns: a driver, unopened
Driver = OpenCVCamera | Picamera2Camera | ReplayCamera


def _opencv(c: Any) -> Driver:
    return OpenCVCamera(c.device, c.width, c.height, c.fps, rotate=c.rotate, mirror=c.mirror)


def _picamera2(c: Any) -> Driver:
    return Picamera2Camera(c.width, c.height, c.detect_width, c.detect_height, c.fps,
                           rotate=c.rotate, mirror=c.mirror, timeout_s=c.read_timeout_s)


def _replay(c: Any) -> Driver:
    return ReplayCamera(c.source, c.realtime, c.loop, c.fps, rotate=c.rotate, mirror=c.mirror)


#: ``camera.type`` -> a builder taking that type's config section
CAMERAS: dict[str, Callable[[Any], Driver]] = {
    "opencv": _opencv, "picamera2": _picamera2, "replay": _replay,
}


def camera_factory(cfg: Config) -> Callable[[], Camera]:
    """A factory of fresh, unopened cameras as ``cfg.camera`` describes (``ResilientCamera``
    calls it at every reopen), grey if asked, frames no larger than ``max_side``, with reads
    timed out after ``read_timeout_s``."""
    c = cfg.camera
    build = CAMERAS[c.type]

    def make() -> Camera:
        camera = build(c)
        camera.grey = c.grey  # an IR camera: grey frames (base.to_grey)
        camera.max_side = c.max_side  # frames shrunk at capture (base.fit_to_side)
        return camera

    return with_read_timeout(make, c.read_timeout_s)
