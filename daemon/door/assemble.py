"""Every config -> runtime translation of the door, in one place.

The config schema (daemon/config/schema.py) only says what a valid config is; the parts that
run (the detector, the frame analyser, the door machine, liveness) take plain settings of their
own. This module builds them from a config: the matcher (model, gallery, detector, verifier,
face mesh; replaced as a whole on reload), the door machine's and liveness's settings, and the
stamp that tells a reload whether anything it loads from changed.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..bundle.store import CURRENT_NAME, bundles_dir, current_bundle, unpack_bundle
from ..config.schema import Config, DetectorConfig, LivenessConfig
from ..errors import ModelError
from ..faces import quality as q
from ..faces.assets import MESH_ROLE
from ..faces.mesh import IRIS_ROLE, FaceMesh
from ..faces.pipeline import DetectorSpec
from ..recognition.analyser import FrameAnalyser
from ..recognition.fusion import decision_settings, resident_thresholds
from ..recognition.gallery import load_gallery
from ..recognition.model import FaceEmbedder
from ..recognition.verify import Verifier
from .liveness import LivenessSettings
from .machine import DoorSettings

logger = logging.getLogger(__name__)


def door_settings(cfg: Config) -> DoorSettings:
    """The config keys the door machine's decisions read."""
    v, lk = cfg.verification, cfg.lockout
    return DoorSettings(v.frames_required, v.frame_window, v.window_seconds,
                        cfg.action.cooldown_seconds, lk.attempt_seconds, lk.enabled,
                        lk.max_failures, lk.window_seconds, lk.lockout_seconds,
                        lk.max_failed_frames, liveness_settings(cfg.liveness))


def liveness_settings(cfg: LivenessConfig) -> LivenessSettings:
    """The check's own settings object (daemon/door/liveness.py takes no pydantic model)."""
    return LivenessSettings(cfg.mode, cfg.timeout_seconds, cfg.blink_closed_ratio,
                            cfg.blink_open_ratio, cfg.blink_max_seconds,
                            cfg.motion_threshold, cfg.motion_frames, cfg.min_presence,
                            cfg.motion_max_step, cfg.motion_max_share,
                            cfg.motion_max_gap_seconds)


def detector_spec(cfg: DetectorConfig, model_default: DetectorSpec) -> DetectorSpec:
    """The detector to build: the model's own (``model_default``) with this config's
    overrides, or the one configured here. Warns when it differs from the model's, since
    crops then no longer match what the model was trained on."""
    path = str(cfg.model_path) if cfg.model_path is not None else None
    if cfg.type == "model":
        spec = replace(
            model_default,
            model_path=path if path is not None else model_default.model_path,
            score_threshold=(
                cfg.score_threshold
                if cfg.score_threshold is not None
                else model_default.score_threshold
            ),
        )
    else:
        variant = cfg.variant if cfg.type == "blazeface" else DetectorSpec.variant
        spec = DetectorSpec(
            type=cfg.type, variant=variant, model_path=path,
            score_threshold=cfg.score_threshold,
        )
    if (spec.type, spec.variant) != (model_default.type, model_default.variant):
        logger.warning(
            "detector %s differs from the model's %s: crops may not match training",
            spec.describe(), model_default.describe(),
        )
    return spec


@dataclass
class Matcher:
    """Everything built from the model and gallery; replaced as a whole on reload."""

    analyser: FrameAnalyser
    users: int
    origin: str
    #: the installed bundle's id; None for an unsigned model folder (development)
    bundle_id: str | None = None

    @property
    def embedder(self) -> FaceEmbedder:
        return self.analyser.embedder

    @property
    def verifier(self) -> Verifier:
        assert self.analyser.verifier is not None  # the door's analyser always has a gallery
        return self.analyser.verifier

    @property
    def mesh(self) -> FaceMesh | None:
        """The face mesh for liveness; None when liveness is off."""
        return self.analyser.mesh

    def describe(self) -> str:
        meta = self.embedder.meta
        return (f"model {meta.model_id} ({meta.architecture}, {meta.quantization}), "
                f"{self.users} user(s), threshold {self.verifier.threshold:.4f}, from "
                f"{self.origin}")


def model_files(cfg: Config) -> tuple[Path, Path, str, str | None]:
    """(model folder, gallery file, description, bundle id) from a verified bundle or, in
    development, from the configured folder (no bundle id). Raises TwinLockError (BundleError
    for a refused bundle)."""
    if cfg.model.source == "folder":
        logger.warning("model.source is 'folder': loading an UNSIGNED model and gallery")
        return cfg.model.dir, cfg.model.gallery, f"unsigned folder {cfg.model.dir}", None
    active = cfg.state_dir / "active"
    verified, root = unpack_bundle(current_bundle(cfg.state_dir), cfg.model.public_key, active)
    for old in active.iterdir():  # one unpacked bundle at a time
        if old.is_dir() and old != root and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return (root / "model", root / "gallery.json", f"bundle {verified.bundle_id}",
            verified.bundle_id)


def source_stamp(cfg: Config) -> tuple[object, ...]:
    """What a config loads the model and gallery from, without reading a byte: the installed
    bundle's (or the model folder's files', the gallery's, the liveness models') inode, size
    and times. A reload finding the same stamp and an equal config has nothing to change."""
    if cfg.model.source == "bundle":
        paths = [bundles_dir(cfg.state_dir) / CURRENT_NAME]
    else:
        folder = Path(cfg.model.dir)
        paths = [Path(cfg.model.gallery), folder,
                 *(sorted(folder.iterdir()) if folder.is_dir() else [])]
    paths += [Path(p) for p in (cfg.liveness.mesh_model_path, cfg.liveness.iris_model_path)
              if p is not None]
    stamp: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            stamp.append((str(path), None))
            continue
        stamp.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamp)


def build_matcher(cfg: Config) -> Matcher:
    """Load model + gallery and check they belong together. Raises TwinLockError."""
    model_dir, gallery_path, origin, bundle_id = model_files(cfg)
    embedder = FaceEmbedder(model_dir, cfg.model.num_threads, tuple(cfg.model.runtimes))
    meta = embedder.meta
    gallery = load_gallery(gallery_path)
    if gallery.model_id != meta.model_id:
        raise ModelError(f"gallery {gallery_path} was made with model {gallery.model_id}, "
                         f"not {meta.model_id}: re-enrol (twinlock enroll) for this model")
    if gallery.embedding_dim not in (None, meta.embedding_dim):
        raise ModelError(f"gallery anchors are {gallery.embedding_dim}-d, the model makes "
                         f"{meta.embedding_dim}-d embeddings")
    v = cfg.verification
    threshold, threshold_from, fusion = decision_settings(
        meta.thresholds, meta.default_threshold, meta.metrics, v.threshold, v.threshold_name,
        v.fusion, residents=len(gallery.users))
    logger.info("decision: fusion %s, threshold %.4f (%s)", fusion, threshold, threshold_from)
    per_resident = resident_thresholds(
        meta.thresholds, meta.default_threshold, meta.metrics,
        [user.anchor_counts for user in gallery.users.values()], v.threshold,
        v.threshold_name, v.fusion)
    detector = detector_spec(cfg.detector, meta.detector).build(cfg.model.num_threads)
    pipeline = meta.face_pipeline(detector)
    verifier = Verifier(gallery, meta.head_weights, meta.head_bias, threshold,
                        v.verification_threshold, fusion, per_resident)
    qc = cfg.quality
    thresholds = q.QualityThresholds(qc.min_face_px, qc.min_brightness, qc.max_brightness,
                                     qc.min_sharpness)
    mesh = None
    if cfg.liveness.mode != "off":
        # the model folder's (signed, checked) copy unless the config names another file
        mesh_file = cfg.liveness.mesh_model_path or meta.asset_path(MESH_ROLE)
        mesh = FaceMesh(mesh_file, cfg.model.num_threads,
                        eyes=liveness_settings(cfg.liveness).needs_blink,
                        iris_model_path=cfg.liveness.iris_model_path or meta.asset_path(IRIS_ROLE))
        logger.info("liveness: %s (face mesh %s)", cfg.liveness.mode, mesh.model_path)
    else:
        logger.warning("liveness is off: a photo of a resident can open the door")
    analyser = FrameAnalyser(pipeline, embedder, thresholds, verifier, cfg.quality.multiple_faces,
                             mesh)
    return Matcher(analyser, len(gallery.users), origin, bundle_id)
