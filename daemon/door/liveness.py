"""Presence checks for an ordinary RGB camera: a photo of a resident must not open the door.

Both checks use the 468-point face mesh (daemon/faces/mesh.py) and run only on frames that
already matched a resident, so a stranger costs nothing extra. Within one attempt:

- **blink**: the eyes' openness (lid gap over eye width, from the iris model's eye contours on
  crops placed by the mesh, daemon/faces/mesh.py; the mesh's own eyelid points hardly move when
  the eyes shut) must dip below ``blink_closed_ratio`` of the eyes' open level and come back
  above ``blink_open_ratio`` of it within ``blink_max_seconds``. A printed photo never blinks.
- **motion**: a flat picture (a print or a screen, held, moved, tilted or turned) moves all its
  landmarks by one homography, a plane-to-plane map. A real head turning moves them with
  parallax: the nose tip, which stands out of the face, slides against the face outline and the
  eye corners. For each new frame a homography is fitted (least squares) from an earlier frame's
  outline and eye-corner points to this frame's, and the nose points' distance from where the
  homography puts them, in inter-ocular distances, is the parallax. ``motion_frames`` frames
  reaching ``motion_threshold`` pass.

  Two pictures of the resident shown in turn (two head turns, a photo and its mirror image, a
  photo and a copy with the nose pushed aside) differ by exactly such a parallax, so the
  parallax must also come from a **continuous sweep**, as a real head's does: the landmarks
  move a little from each matched frame to the next. Between consecutive matched frames the
  step (their own nose parallax) must stay under ``motion_max_step``, the crop must not jump
  (scale, position) and the frames must be at most ``motion_max_gap_seconds`` apart; otherwise
  the sweep starts again from that frame (its earlier references are dropped). And no single
  step may make up more than ``motion_max_share`` of a frame's parallax against its reference:
  a swap of pictures puts all of it in one or two steps, a turning head spreads it over
  several. A left-right mirrored landmark set is not refused as such: a real head turning
  through the frontal pose makes one too; the swap to a mirror image is a jump like any other.

What neither stops: a video of the resident played on a screen (it blinks and has parallax), a
3-D mask or bust (parallax; blinking masks exist), a photo bent into a curve (not a plane, so it
has some parallax of its own), a slideshow whose pictures blend into each other slowly enough to
look like a sweep (a cross-dissolve is a crude morph: docs/how-it-works/liveness.md has its rate),
and a resident coerced at the door. An IR camera with IR illumination does better: a screen
shows nothing in IR and a print looks wrong.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from ..faces.mesh import Mesh

logger = logging.getLogger(__name__)

Mode = Literal["off", "blink", "motion", "both"]
MODES: tuple[str, ...] = ("off", "blink", "motion", "both")

#: eyelid points of the 468-point mesh, in the order of Soukupova & Cech's eye aspect ratio:
#: outer corner, two upper-lid points, inner corner, two lower-lid points (p1..p6)
EYE_RIGHT = (33, 160, 158, 133, 153, 144)  # the subject's right eye (image left)
EYE_LEFT = (263, 387, 385, 362, 380, 373)
#: the face outline (MediaPipe's FACEMESH_FACE_OVAL) and the four eye corners: the points the
#: homography is fitted to
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
EYE_CORNERS = (33, 133, 362, 263)
PLANE_POINTS = FACE_OVAL + EYE_CORNERS
#: the nose tip and the points along the lower nose ridge: furthest out of the face's plane
NOSE_POINTS = (1, 4, 5, 195)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean EAR of both eyes: (|p2-p6| + |p3-p5|) / (2 |p1-p4|); about 0.3 open, under 0.15
    closed, for most people and head poses."""
    values = []
    for p1, p2, p3, p4, p5, p6 in (EYE_RIGHT, EYE_LEFT):
        p = points[:, :2]
        width = float(np.linalg.norm(p[p1] - p[p4]))
        gap = float(np.linalg.norm(p[p2] - p[p6]) + np.linalg.norm(p[p3] - p[p5]))
        values.append(gap / (2.0 * width) if width > 0 else 0.0)
    return float(np.mean(values))


def inter_ocular(points: np.ndarray) -> float:
    """Distance between the outer eye corners, pixels: the unit parallax is measured in."""
    return float(np.linalg.norm(points[EYE_RIGHT[0], :2] - points[EYE_LEFT[0], :2]))


def nose_parallax(earlier: np.ndarray, later: np.ndarray) -> float:
    """How far the nose moved off the plane that carries the outline and eye corners from
    ``earlier`` to ``later`` (mesh points, image pixels), in inter-ocular distances.

    0 (up to the mesh's jitter) for any picture of a face on a flat surface, however it is
    moved, turned or tilted; grows with a real head's turn.
    """
    src = earlier[list(PLANE_POINTS), :2].astype(np.float64)
    dst = later[list(PLANE_POINTS), :2].astype(np.float64)
    homography, _ = cv2.findHomography(src, dst, 0)
    if homography is None:
        return 0.0
    nose = earlier[None, list(NOSE_POINTS), :2].astype(np.float64)
    moved = cv2.perspectiveTransform(nose, homography)[0]
    scale = inter_ocular(later)
    if scale <= 0:
        return 0.0
    return float(np.linalg.norm(moved - later[list(NOSE_POINTS), :2], axis=1).mean() / scale)


@dataclass(frozen=True)
class LivenessSettings:
    """The ``liveness:`` config section, as the check needs it (bounds: daemon/config/schema.py)."""

    mode: Mode = "motion"
    timeout_seconds: float = 5.0
    blink_closed_ratio: float = 0.6
    blink_open_ratio: float = 0.85
    blink_max_seconds: float = 0.6
    motion_threshold: float = 0.18
    motion_frames: int = 2
    min_presence: float = 0.5
    motion_max_step: float = 0.15
    motion_max_share: float = 0.4
    motion_max_gap_seconds: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def needs_blink(self) -> bool:
        return self.mode in ("blink", "both")

    @property
    def needs_motion(self) -> bool:
        return self.mode in ("motion", "both")


#: earlier frames each new frame is compared with (the sweep's first, then every few)
MAX_REFERENCES = 8
#: a crop jump between consecutive matched frames: the eye distance changing by more than this
#: factor (a real face at 1 m moves far less in a frame), or the face moving by more than this
#: many eye distances (the real clip: under 0.5 at 15 fps, 0.9 at 7.5 fps)
CROP_JUMP_SCALE = 1.25
CROP_JUMP_SHIFT = 1.5
#: EAR samples kept for the open-eye level (a running high percentile)
EAR_HISTORY = 60


@dataclass
class LivenessTracker:
    """One attempt's liveness evidence, fed one matched frame's mesh at a time."""

    settings: LivenessSettings
    started: float | None = None
    frames: int = 0
    blink_frames: list[int] = field(default_factory=list)  # frame numbers where a blink ended
    motion_frames: list[int] = field(default_factory=list)  # frames reaching the threshold
    best_parallax: float = 0.0
    min_eye_ratio: float = 1.0
    _ears: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=EAR_HISTORY))
    _closed_at: float | None = None
    _must_open: bool = False  # eyes stayed shut too long: wait for them to open first
    jumps: int = 0  # times the sweep started again (a jump between consecutive frames)
    largest_step: float = 0.0  # the largest step seen between consecutive matched frames
    #: (mesh, its position in ``_steps``): the current sweep's frames parallax is measured from
    _references: deque[tuple[np.ndarray, int]] = field(
        default_factory=lambda: deque(maxlen=MAX_REFERENCES))
    _since_reference: int = 0
    _steps: list[float] = field(default_factory=list)  # the current sweep's steps, in order
    _previous: tuple[float, np.ndarray] | None = None  # the last matched frame's time and mesh

    def add(self, now: float, mesh: Mesh, frame: int | None = None) -> None:
        """Take one matched frame's mesh (a mesh that is no face, by the model's own presence
        score, adds nothing)."""
        if mesh.presence < self.settings.min_presence:
            return
        if self.started is None:
            self.started = now
        self.frames += 1
        label = self.frames if frame is None else frame
        if self.settings.needs_blink:
            openness = mesh.eye_openness
            self._blink(now, eye_aspect_ratio(mesh.points) if openness is None else openness,
                        label)
        if self.settings.needs_motion:
            self._motion(now, mesh.points, label)

    def _blink(self, now: float, ear: float, label: int) -> None:
        opened = max((e for _, e in self._ears), default=ear)
        # the open-eye level: a high percentile of the recent EARs (the eyes are open most of
        # the time; a single wide frame does not set it)
        if len(self._ears) >= 3:
            opened = float(np.percentile([e for _, e in self._ears], 80))
        self._ears.append((now, ear))
        if len(self._ears) < 3 or opened <= 0:
            return
        ratio = ear / opened
        self.min_eye_ratio = min(self.min_eye_ratio, ratio)
        s = self.settings
        if ratio <= s.blink_closed_ratio:
            if self._closed_at is None and not self._must_open:
                self._closed_at = now
        elif ratio >= s.blink_open_ratio:
            self._must_open = False
            if self._closed_at is not None and now - self._closed_at <= s.blink_max_seconds:
                self.blink_frames.append(label)
                logger.debug("blink ended at frame %s (%.2f s closed)", label,
                             now - self._closed_at)
            self._closed_at = None
        if self._closed_at is not None and now - self._closed_at > s.blink_max_seconds:
            # closed too long (eyes shut, looking down, a picture): not a blink, and no new
            # closure counts until the eyes have been open again
            self._closed_at, self._must_open = None, True

    def _jump(self, now: float, points: np.ndarray) -> str | None:
        """Why the sweep cannot go on from the last matched frame to ``points`` (None: it can);
        the step, when there is one, joins the sweep."""
        assert self._previous is not None
        then, previous = self._previous
        s = self.settings
        if now - then > s.motion_max_gap_seconds:
            return f"{now - then:.2f} s since the last matched frame"
        before, after = inter_ocular(previous), inter_ocular(points)
        if before <= 0 or after <= 0 or max(before, after) / min(before, after) > CROP_JUMP_SCALE:
            return f"eye distance {before:.0f} -> {after:.0f} px"
        centre = np.linalg.norm(points[list(PLANE_POINTS), :2].mean(0)
                                - previous[list(PLANE_POINTS), :2].mean(0))
        if centre > CROP_JUMP_SHIFT * after:
            return f"face moved {centre / after:.2f} eye distances"
        step = nose_parallax(previous, points)
        self.largest_step = max(self.largest_step, step)
        if step > s.motion_max_step:
            return f"step parallax {step:.3f} > {s.motion_max_step:g}"
        self._steps.append(step)
        return None

    def _motion(self, now: float, points: np.ndarray, label: int) -> None:
        if self._previous is not None:
            why = self._jump(now, points)
            if why is not None:  # another picture, or too long unseen: a new sweep from here
                self.jumps += 1
                logger.debug("frame %s: the sweep starts again (%s)", label, why)
                self._references.clear()
                self._steps.clear()
                self._since_reference = 0
        self._previous = (now, points.copy())
        position = len(self._steps)
        share = self.settings.motion_max_share
        parallax = 0.0
        for reference, at in self._references:
            if at >= position:
                continue
            value = nose_parallax(reference, points)
            # a sweep: no one step of the way from the reference makes up too much of it
            if max(self._steps[at:position]) <= share * value:
                parallax = max(parallax, value)
        self.best_parallax = max(self.best_parallax, parallax)
        if parallax >= self.settings.motion_threshold:
            self.motion_frames.append(label)
        # references: the sweep's first frame, then one every few frames (a slow turn is
        # compared across its whole sweep, at a bounded cost per frame)
        self._since_reference += 1
        if not self._references or self._since_reference >= 4:
            self._references.append((points.copy(), position))
            self._since_reference = 0
        if self._references and self._references[0][1] > 0 and len(self._steps) > 4 * 64:
            # a long still sweep: steps before the oldest reference are no longer needed
            drop = self._references[0][1]
            del self._steps[:drop]
            self._references = deque(((r, at - drop) for r, at in self._references),
                                     maxlen=MAX_REFERENCES)

    @property
    def blinked(self) -> bool:
        return bool(self.blink_frames)

    @property
    def moved(self) -> bool:
        return len(self.motion_frames) >= self.settings.motion_frames

    @property
    def passed(self) -> bool:
        s = self.settings
        if not s.enabled:
            return True
        return (self.blinked or not s.needs_blink) and (self.moved or not s.needs_motion)

    def timed_out(self, now: float) -> bool:
        return (self.settings.enabled and self.started is not None
                and now - self.started > self.settings.timeout_seconds and not self.passed)

    def failure_reason(self) -> str:
        """What the audit log says when the attempt ends without liveness."""
        s = self.settings
        missing = []
        if s.needs_blink and not self.blinked:
            missing.append("no blink")
        if s.needs_motion and not self.moved:
            jumps = f", {self.jumps} jumps" if self.jumps else ""
            missing.append(f"no head motion (parallax {self.best_parallax:.3f} < "
                           f"{s.motion_threshold:g} in {len(self.motion_frames)}/"
                           f"{s.motion_frames} frames{jumps})")
        return f"liveness: {' and '.join(missing) or 'not passed'} in {s.timeout_seconds:g} s"

    def summary(self) -> dict[str, object]:
        """For the audit record's details: which check passed, in which frames."""
        return {"mode": self.settings.mode, "frames": self.frames,
                "blink_frames": list(self.blink_frames[:10]),
                "motion_frames": list(self.motion_frames[:10]),
                "best_parallax": round(self.best_parallax, 4), "jumps": self.jumps,
                "largest_step": round(self.largest_step, 4),
                "min_eye_ratio": round(self.min_eye_ratio, 3), "passed": self.passed}
