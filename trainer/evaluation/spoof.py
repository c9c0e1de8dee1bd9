"""Presentation attacks made from real photos, and the daemon run that replays them.

Used by tests/test_liveness.py and benchmarks/liveness.py to show what the door's liveness check
(daemon/door/liveness.py) refuses. Every attack is a sequence of camera frames built from a real
picture, as someone at the door would show it:

- ``still``: a photo held still in front of the camera (camera noise, so no two frames are equal
  and the repeated-frame rule alone does not refuse it);
- ``moved``: the photo moved, turned and tilted by a smooth random homography per frame (a
  hand-held print), with camera noise, blur, JPEG re-encoding and lighting changes;
- ``frozen``: one frame of a real video of the resident, shown again and again (a frozen feed);
- ``blinked``: the still photo with the eyes painted over every ~1.5 s for a few frames (a crude
  synthetic blink: it shows what blink mode stops and what it does not);
- slideshows, two pictures of the resident shown in turn and moved by hand like ``moved`` (the
  second one placed so that its face lands where the first one's was, as a careful attacker
  would print them): ``slideshow``, two real photos of the resident (different head turns),
  switched every 0.4-1.0 s; ``mirror``, the photo and its mirror image; ``nosewarp``, the photo
  and a copy with the nose pushed sideways (0.25-0.4 inter-ocular distances); and two variants
  of ``slideshow``: ``flicker``, switched every 0.1-0.25 s, and ``crossfade``, each switch a
  0.2-0.4 s cross-dissolve (a phone's slideshow), whose in-between frames make the pose change
  look gradual.

Sequences are written into one video, separated by frames without a face that end each attempt,
and played through the real daemon (``twinlockd run``'s ``Daemon``) with a replay camera on a
simulated clock: every frame is seen at its own time stamp, however slow the machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from twinlock.daemon.camera.replay import ReplayCamera
from twinlock.daemon.camera.resilient import ResilientCamera
from twinlock.daemon.door.liveness import EYE_LEFT, EYE_RIGHT, inter_ocular
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.errors import DataError
from twinlock.daemon.faces.blazeface import BlazeFaceDetector
from twinlock.daemon.faces.mesh import FaceMesh
from twinlock.daemon.storage.audit import AuditLog, AuditRecord

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("still", "moved", "frozen", "blinked", "slideshow", "mirror",
                          "nosewarp", "flicker", "crossfade")
#: kinds that show two pictures in turn; ``PAIRED`` ones need a second real photo per photo
SLIDESHOWS: tuple[str, ...] = ("slideshow", "mirror", "nosewarp", "flicker", "crossfade")
PAIRED: tuple[str, ...] = ("slideshow", "flicker", "crossfade")
FRAME_SIZE = (640, 360)  # width, height: the example clip's


class SimClock:
    """Time that moves only when someone sleeps: a replay is seen at its own frame times."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class SimulatedDaemon(Daemon):
    """The real daemon whose replay camera runs on a SimClock (measurement and tests only)."""

    def __init__(self, config_path: Path, clock: SimClock | None = None) -> None:
        self.sim = clock or SimClock()
        super().__init__(config_path)

    def _camera(self) -> ResilientCamera:
        c = self.cfg.camera
        source, fps = getattr(c, "source", ""), float(getattr(c, "fps", 15.0))
        def make() -> ReplayCamera:
            camera = ReplayCamera(source, True, False, fps, c.rotate, c.mirror,
                                  clock=self.sim.now, sleep=self.sim.sleep)
            camera.grey = c.grey
            return camera

        return ResilientCamera(
            make,
            c.reopen_backoff_initial_s, c.reopen_backoff_max_s, sleep=self.sim.sleep,
            clock=self.sim.now, on_state=self._camera_state)


def run_replay(config_path: Path) -> list[AuditRecord]:
    """Play the config's replay source through the daemon; the audit records it wrote."""
    daemon = SimulatedDaemon(config_path)
    daemon.run()
    with AuditLog(daemon.cfg.audit.db) as audit:
        return list(audit.query())


# --------------------------------------------------------------------------------------------
# building frames


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plausible wall behind the print: a smooth colour gradient with a little texture."""
    w, h = FRAME_SIZE
    base = rng.uniform(40, 200, 3)
    tilt = rng.uniform(-40, 40, 3)
    ramp = np.linspace(-0.5, 0.5, w)[None, :, None] * tilt
    noise = cv2.GaussianBlur(rng.normal(0, 12, (h, w)), (0, 0), 6)[..., None]
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def _placement(photo_shape: tuple[int, ...], face_px: float, face_box: tuple[float, ...],
               rng: np.random.Generator) -> np.ndarray:
    """Homography putting the photo's face, ``face_px`` wide, near the frame's centre."""
    w, h = FRAME_SIZE
    x, y, fw, fh = face_box
    s = face_px / max(fw, fh)
    cx, cy = x + fw / 2, y + fh / 2
    tx = w / 2 + rng.uniform(-60, 60) - s * cx
    ty = h / 2 + rng.uniform(-20, 20) - s * cy
    return np.array([[s, 0, tx], [0, s, ty], [0, 0, 1.0]])


def hand_held(t: float, params: np.ndarray) -> np.ndarray:
    """A smooth homography at time ``t``: rotation, translation, scale and both tilts, each a sum
    of two sinusoids with random amplitude, frequency and phase (``params``: 6 x 6)."""
    w, h = FRAME_SIZE

    def wave(i: int) -> float:
        a1, f1, p1, a2, f2, p2 = params[i]
        return a1 * math.sin(2 * math.pi * f1 * t + p1) + a2 * math.sin(2 * math.pi * f2 * t + p2)

    angle, dx, dy, zoom, px, py = (wave(i) for i in range(6))
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]])
    c, s = math.cos(angle), math.sin(angle)
    motion = np.array([[c * (1 + zoom), -s * (1 + zoom), dx], [s * (1 + zoom), c * (1 + zoom), dy],
                       [px, py, 1.0]])
    return centre @ motion @ np.linalg.inv(centre)


def random_motion(rng: np.random.Generator) -> np.ndarray:
    """Parameters for ``hand_held``: up to ~20 deg turns, ~60 px shifts, ~20 % zoom, tilts that
    shrink one side of the print by up to ~35 % (a print turned about 40 deg away)."""
    amps = np.array([0.18, 40.0, 20.0, 0.12, 0.0007, 0.0007])
    params = np.zeros((6, 6))
    for i, amp in enumerate(amps):
        params[i] = [rng.uniform(0.3, 1) * amp, rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi),
                     rng.uniform(0, 0.5) * amp, rng.uniform(0.6, 1.5), rng.uniform(0, 2 * np.pi)]
    return params


_NOISE: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
NOISE_BANK = 24  # noise frames drawn once per frame size, then picked at random


def _noise(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) parts of one frame of Gaussian sensor noise (sigma 2.5), as uint8:
    a bank drawn once, because drawing 0.7 M normals per frame dominated the run."""
    if shape not in _NOISE:
        bank = np.rint(2.5 * np.random.default_rng(7).standard_normal((NOISE_BANK, *shape),
                                                                        dtype=np.float32))
        _NOISE[shape] = (np.clip(bank, 0, 255).astype(np.uint8),
                         np.clip(-bank, 0, 255).astype(np.uint8))
    k = int(rng.integers(NOISE_BANK))
    return _NOISE[shape][0][k], _NOISE[shape][1][k]


def camera_effects(image: np.ndarray, rng: np.random.Generator, strong: bool) -> np.ndarray:
    """Sensor noise always; with ``strong`` also blur, lighting and JPEG re-encoding."""
    out = image
    if strong:
        out = cv2.convertScaleAbs(out, alpha=rng.uniform(0.7, 1.3), beta=rng.uniform(-20, 20))
        sigma = rng.uniform(0, 1.5)
        if sigma > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), sigma)
    plus, minus = _noise(out.shape, rng)
    out = cv2.subtract(cv2.add(out, plus), minus)
    if strong:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 95))])
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = decoded
    return out


def eye_points(photo: np.ndarray, detector: BlazeFaceDetector, mesh: FaceMesh) -> np.ndarray:
    """The photo's face mesh (468 x 3, image pixels), for painting its eyes shut."""
    faces = detector.detect(photo)
    if not faces:
        raise DataError("no face in the photo to blink")
    return mesh.landmarks(photo, max(faces, key=lambda f: f.size)).points


def closed_eyes(photo: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The photo with its eyes painted shut: the openings (mesh eyelid points, dilated) filled
    with the skin around them (inpainting), and a dark lash line drawn where the lids meet."""
    mask = np.zeros(photo.shape[:2], np.uint8)
    iod = inter_ocular(points)
    for eye in (EYE_RIGHT, EYE_LEFT):
        cv2.fillConvexPoly(mask, cv2.convexHull(points[list(eye), :2].astype(np.int32)), 255)
    size = max(3, int(iod * 0.06))
    out = cv2.inpaint(photo, cv2.dilate(mask, np.ones((size, size), np.uint8)), 5,
                      cv2.INPAINT_TELEA)
    for p1, _, _, p4, p5, p6 in (EYE_RIGHT, EYE_LEFT):
        # the closed lid's edge: from corner to corner through the lower lid's points
        line = points[[p1, p6, p5, p4], :2].astype(np.int32)
        cv2.polylines(out, [line], False, (40, 28, 24), max(1, int(iod * 0.025)),
                      cv2.LINE_AA)
    return out


def nose_warped(photo: np.ndarray, points: np.ndarray, amount: float) -> np.ndarray:
    """The photo with its nose pushed sideways by ``amount`` inter-ocular distances (negative:
    to the image's left): a smooth displacement, largest at the nose tip and fading over about
    a third of the eye distance, so the rest of the face stays where it was."""
    h, w = photo.shape[:2]
    iod = inter_ocular(points)
    cx, cy = (points[1, :2] + points[195, :2]) / 2  # the middle of the lower nose ridge
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sigma = 0.3 * iod
    g = np.exp(-((xx - cx) ** 2 + ((yy - cy) / 1.4) ** 2) / (2 * sigma ** 2))
    return cv2.remap(photo, xx - np.float32(amount * iod) * g, yy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _switch_times(kind: str, seconds: float, rng: np.random.Generator) -> list[float]:
    """When a slideshow changes picture: every 0.4-1.0 s (``flicker``: 0.1-0.25 s)."""
    low, high = (0.1, 0.25) if kind == "flicker" else (0.4, 1.0)
    times, t = [], 0.0
    while t < seconds:
        t += float(rng.uniform(low, high))
        times.append(t)
    return times


def _face_to_face(box: tuple[float, ...], onto: tuple[float, ...]) -> np.ndarray:
    """Similarity (3x3) putting the face ``box`` of one photo onto the face ``onto`` of another."""
    x, y, fw, fh = box
    u, v, uw, uh = onto
    s = max(uw, uh) / max(fw, fh, 1e-6)
    return np.array([[s, 0, u + uw / 2 - s * (x + fw / 2)], [0, s, v + uh / 2 - s * (y + fh / 2)],
                     [0, 0, 1.0]])


def attack_frames(kind: str, photo: np.ndarray, face_box: tuple[float, ...], frames: int,
                  fps: float, rng: np.random.Generator,
                  closed: np.ndarray | None = None, second: np.ndarray | None = None,
                  second_box: tuple[float, ...] | None = None) -> Iterator[np.ndarray]:
    """``frames`` RGB camera frames of one attack of ``kind`` made from ``photo`` (RGB).

    ``frozen`` expects ``photo`` to be a whole video frame (shown as it is, at its own size);
    ``blinked`` needs ``closed``, the photo with its eyes painted over; the slideshows need
    ``second``, the other picture, and ``second_box``, its face."""
    if kind not in KINDS:
        raise DataError(f"unknown attack kind {kind!r}; use one of {', '.join(KINDS)}")
    w, h = FRAME_SIZE
    if kind == "frozen":
        base = cv2.resize(photo, FRAME_SIZE, interpolation=cv2.INTER_AREA)
        for _ in range(frames):
            yield camera_effects(base, rng, strong=False)
        return
    if kind in SLIDESHOWS and (second is None or second_box is None):
        raise DataError(f"a {kind} attack needs a second picture")
    background = _background(rng)
    place = _placement(photo.shape, rng.uniform(90, 220), face_box, rng)
    motion = random_motion(rng)
    blink_every, blink_len = rng.uniform(1.2, 2.0), int(rng.integers(2, 4))
    switches, fade = [], 0.0  # (the older kinds draw nothing more: their videos stay the same)
    if kind in SLIDESHOWS:
        switches, fade = _switch_times(kind, frames / fps, rng), float(rng.uniform(0.2, 0.4))
    onto_first = _face_to_face(second_box, face_box) if second_box is not None else np.eye(3)
    for i in range(frames):
        t = i / fps
        hand = hand_held(t, motion) if kind == "moved" or kind in SLIDESHOWS else np.eye(3)
        matrix = hand @ place
        shown = photo
        if kind == "blinked" and closed is not None and int(t * fps) % int(blink_every * fps) \
                in range(int(0.5 * fps), int(0.5 * fps) + blink_len):
            shown = closed
        canvas = background.copy()
        layers = [(shown, matrix, 1.0)]
        if second is not None and kind in SLIDESHOWS:
            done = [s for s in switches if s <= t]
            showing_second = len(done) % 2 == 1
            mix = 1.0
            if kind == "crossfade" and done and t - done[-1] < fade:
                mix = (t - done[-1]) / fade  # the picture coming in, fading over the other
            b = (second, matrix @ onto_first)
            a = (photo, matrix)
            new, old = (b, a) if showing_second else (a, b)
            layers = [(old[0], old[1], 1.0), (new[0], new[1], mix)] if mix < 1.0 else \
                [(new[0], new[1], 1.0)]
        for image, m, alpha in layers:
            warped = cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_LINEAR)
            inside = cv2.warpPerspective(np.full(image.shape[:2], 255, np.uint8), m, (w, h))
            if alpha < 1.0:
                warped = cv2.addWeighted(warped, alpha, canvas, 1.0 - alpha, 0.0)
            cv2.copyTo(warped, inside, canvas)
        yield camera_effects(canvas, rng, strong=kind == "moved" or kind in SLIDESHOWS)


def write_attack_video(path: Path, kind: str, photos: list[np.ndarray], sequences: int,
                       frames: int, fps: float, gap_frames: int, seed: int,
                       detector: BlazeFaceDetector, mesh: FaceMesh,
                       progress: Callable[[int], None] | None = None,
                       partners: list[np.ndarray] | None = None) -> list[tuple[int, int]]:
    """``sequences`` attacks of ``kind`` (photos taken in turn) in one video at ``fps``, each
    followed by ``gap_frames`` frames of an empty wall; the (first, last) frame of each.

    ``partners``: for ``slideshow``, ``flicker`` and ``crossfade``, another real photo of the
    same person for each of ``photos`` (the picture shown in turn with it); ``mirror`` and
    ``nosewarp`` make theirs from the photo."""
    if kind in PAIRED and (partners is None or len(partners) != len(photos)):
        raise DataError(f"a {kind} attack needs a second photo of each person")
    rng = np.random.default_rng(seed)
    boxes, closed = [], []
    seconds: list[np.ndarray | None] = []
    second_boxes: list[tuple[float, ...] | None] = []
    for n, photo in enumerate(photos):
        faces = detector.detect(photo)
        if not faces:
            raise DataError("an attack photo shows no face")
        boxes.append(max(faces, key=lambda f: f.size).box)
        closed.append(closed_eyes(photo, eye_points(photo, detector, mesh))
                      if kind == "blinked" else None)
        other: np.ndarray | None = None
        if kind in PAIRED and partners is not None:
            other = partners[n]
        elif kind == "mirror":
            other = np.ascontiguousarray(photo[:, ::-1])
        elif kind == "nosewarp":
            amount = float(rng.uniform(0.25, 0.4)) * float(rng.choice([-1.0, 1.0]))
            other = nose_warped(photo, eye_points(photo, detector, mesh), amount)
        seconds.append(other)
        if other is not None:
            found = detector.detect(other)
            if not found:
                raise DataError("the second picture of a slideshow shows no face")
            second_boxes.append(max(found, key=lambda f: f.size).box)
        else:
            second_boxes.append(None)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, FRAME_SIZE)
    if not writer.isOpened():
        raise DataError(f"cannot write {path}")
    spans, index = [], 0
    try:
        for n in range(sequences):
            k = n % len(photos)
            first = index
            for image in attack_frames(kind, photos[k], boxes[k], frames, fps, rng, closed[k],
                                       seconds[k], second_boxes[k]):
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                index += 1
            spans.append((first, index - 1))
            wall = _background(rng)
            for _ in range(gap_frames):
                writer.write(cv2.cvtColor(camera_effects(wall, rng, False), cv2.COLOR_RGB2BGR))
                index += 1
            if progress is not None:
                progress(n)
    finally:
        writer.release()
    return spans
