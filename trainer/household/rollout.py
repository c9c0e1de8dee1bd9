"""Which bundle each door runs, what changed since, and updating a door: bundle, sign, deploy.

The host keeps, in the activity store beside the doors list, a summary of every bundle it makes
or deploys (residents with a hash of each anchor and where it came from, their own strictness,
the model and its thresholds) and, per door, the bundle it runs: the one ``twinlock deploy --to
NAME`` sent, or the one its newest review record was decided under (``twinlock doors sync``;
the door's installed bundle itself is readable by its service user only, and the door opens no
port, so its records are how it tells). Comparing that summary with the household's enrolment
now says what the next bundle would change, and whether a door is outdated.

An anchor is named by the sha256 of its numbers as the gallery writes them (rounded to 6
decimals, ``Gallery.to_json``), so the same anchor has the same name in a bundle and in the
enrolment store. An anchor whose source is an attempt's crop (``<record id>.jpg``, as
``activity label`` enrols it) came from a label.

The CLI (``twinlock bundle``, ``deploy --to NAME``, ``doors list``, ``doors update [NAME...]``)
and the household page's Update and "Update every door" buttons call these same functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.errors import BundleError, TwinLockError, UsageError
from twinlock.daemon.faces.assets import file_sha256
from twinlock.daemon.recognition.model import METADATA_FILE, TOWER_FILE, read_metadata

from .activity import ActivityStore, DoorBundle, DoorEntry
from .deploy import DEFAULT_RELOAD_COMMAND, DeployReport, deploy
from .enroll_store import EnrolmentStore, is_label_source

logger = logging.getLogger(__name__)

#: a step of an update as a person sees it: build bundle, sign, copy, reload
Progress = Callable[[str], None]
ANCHOR_HASH_CHARS = 16


def _quiet(step: str) -> None:
    pass


# -- summaries ----------------------------------------------------------------------------------


def anchor_hash(numbers: Sequence[float]) -> str:
    """An anchor's name: the sha256 of its numbers as the gallery's JSON holds them."""
    text = json.dumps(list(numbers), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ANCHOR_HASH_CHARS]


def _residents(gallery_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in gallery_json.get("users", []):
        anchors = entry.get("anchors", [])
        sources = [str(s) for s in entry.get("sources", [])]
        sources += [""] * (len(anchors) - len(sources))
        out[str(entry["name"])] = {
            "anchors": {anchor_hash(a): s for a, s in zip(anchors, sources, strict=False)},
            "strict_far": entry.get("strict_far"),
        }
    return out


@dataclass(frozen=True)
class BundleInfo:
    """A bundle file's id, order and summary (what ``bundles`` in the activity store keeps)."""

    bundle_id: str
    sequence: int
    created: str
    model_id: str
    summary: dict[str, Any]


def summarize_bundle(path: Path) -> BundleInfo:
    """Read a bundle written here (the door verifies it; this only reads what it says)."""
    wanted = {fmt.MANIFEST_NAME: fmt.MAX_MANIFEST_SIZE, fmt.GALLERY_MEMBER: fmt.MAX_MEMBER_SIZE,
              fmt.METADATA_MEMBER: fmt.MAX_MANIFEST_SIZE}
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if member.name in wanted and member.isfile() and member.size <= wanted[
                        member.name]:
                    handle = archive.extractfile(member)
                    parts[member.name] = handle.read() if handle else b""
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{path}: not a readable bundle ({exc})") from None
    missing = sorted(set(wanted) - set(parts))
    if missing:
        raise BundleError(f"{path}: not a TwinLock bundle (no {', '.join(missing)})")
    try:
        manifest = json.loads(parts[fmt.MANIFEST_NAME])
        gallery = json.loads(parts[fmt.GALLERY_MEMBER])
        model = json.loads(parts[fmt.METADATA_MEMBER])
        model_id = str(manifest["model_id"])
        files = manifest["files"]
        summary = {
            "model_id": model_id,
            "model_sha256": files[fmt.METADATA_MEMBER]["sha256"],
            "tower_sha256": files[fmt.TOWER_MEMBER]["sha256"],
            "thresholds": {str(k): float(v) for k, v in model.get("thresholds", {}).items()},
            "residents": _residents(gallery),
        }
        sequence = fmt.manifest_sequence(manifest)
        created = str(manifest["created"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{path}: its manifest or gallery is not as twinlock bundle writes "
                          f"them ({exc})") from None
    digest = hashlib.sha256(parts[fmt.MANIFEST_NAME]).hexdigest()
    return BundleInfo(f"{model_id}-{digest[:12]}", sequence, created, model_id, summary)


def record_bundle(activity: ActivityStore, path: Path) -> BundleInfo:
    """Summarize the bundle at ``path`` and keep the summary by its id."""
    info = summarize_bundle(path)
    activity.record_bundle(info.bundle_id, info.sequence, info.created, info.model_id,
                           info.summary)
    return info


def household_summary(enrolment: EnrolmentStore, model_id: str,
                      model_dir: Path | None = None) -> dict[str, Any]:
    """What a bundle made now for ``model_id`` would hold, read from the enrolment store without
    re-embedding: photos with no anchor for the model yet count as ``pending``. With
    ``model_dir`` (that model's folder, or a newer one) the model and thresholds too."""
    summary: dict[str, Any] = {"residents": _residents(enrolment.gallery(model_id).to_json())}
    for user in enrolment.users(model_id):
        entry = summary["residents"].get(user.name)
        pending = user.samples - user.anchors_for_model
        if entry is None:
            if pending <= 0:
                continue  # no photo at all: left out of a bundle too
            entry = summary["residents"][user.name] = {"anchors": {}}
        entry["strict_far"] = user.strict_far
        if pending > 0:
            entry["pending"] = pending
    if model_dir is not None:
        meta = read_metadata(model_dir)
        summary.update(model_id=meta.model_id,
                       model_sha256=file_sha256(Path(model_dir) / METADATA_FILE),
                       tower_sha256=file_sha256(Path(model_dir) / TOWER_FILE),
                       thresholds={k: float(v) for k, v in meta.thresholds.items()})
    return summary


# -- what changed -------------------------------------------------------------------------------


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _added_anchors(sources: list[str]) -> str:
    labelled = sum(map(is_label_source, sources))  # as the gallery counts them
    text = f"+{_count(len(sources), 'anchor')}"
    if labelled == len(sources):
        return text + " from labels"
    if labelled:
        return text + f" ({labelled} from labels)"
    return text


def _strict(far: object) -> str:
    return "off" if far is None else f"{float(far):g}"  # type: ignore[arg-type]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What ``new`` changes from ``old`` (two summaries), one short phrase each; [] when the
    same. The model and thresholds are compared only when ``new`` names them."""
    out: list[str] = []
    if "model_id" in new:
        if new["model_id"] != old.get("model_id"):
            out.append(f"model {old.get('model_id')} -> {new['model_id']}")
        elif (new.get("model_sha256"), new.get("tower_sha256")) != (
                old.get("model_sha256"), old.get("tower_sha256")):
            out.append(f"model {new['model_id']}: its files changed")
        before, after = old.get("thresholds", {}), new.get("thresholds", {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                out.append(f"threshold {name}: {before.get(name)} -> {after.get(name)}")
    old_res, new_res = old.get("residents", {}), new.get("residents", {})
    added = [n for n in new_res if n not in old_res]
    removed = sorted(n for n in old_res if n not in new_res)
    if added:
        shown = "; ".join(f"{n}, {_count(len(new_res[n]['anchors']), 'anchor')}"
                          + (f" + {new_res[n]['pending']} photos to embed"
                             if new_res[n].get("pending") else "") for n in sorted(added))
        out.append(f"+{_count(len(added), 'resident')} ({shown})")
    if removed:
        out.append(f"-{_count(len(removed), 'resident')} ({', '.join(removed)})")
    for name in sorted(n for n in new_res if n in old_res):
        before, after = old_res[name], new_res[name]
        plus = [s for h, s in after["anchors"].items() if h not in before["anchors"]]
        minus = [h for h in before["anchors"] if h not in after["anchors"]]
        parts = []
        if plus:
            parts.append(_added_anchors(plus))
        if minus:
            parts.append(f"-{_count(len(minus), 'anchor')}")
        if after.get("pending"):
            parts.append(f"+{_count(after['pending'], 'photo')} to embed")
        if before.get("strict_far") != after.get("strict_far"):
            parts.append(f"strict {_strict(before.get('strict_far'))} -> "
                         f"{_strict(after.get('strict_far'))}")
        if parts:
            out.append(f"{name}: {', '.join(parts)}")
    return out


# -- each door ----------------------------------------------------------------------------------


@dataclass
class DoorStatus:
    """One door as the list and the page show it."""

    entry: DoorEntry
    bundle: DoorBundle
    summary: dict[str, Any] | None  # of the bundle it runs (None: unknown here)
    changes: list[str] = field(default_factory=list)  # household now vs that bundle
    last_unlock: str | None = None
    compared: bool = True  # False: no enrolment store here to compare with

    @property
    def residents(self) -> list[str]:
        return sorted(self.summary.get("residents", {})) if self.summary else []

    @property
    def outdated(self) -> bool | None:
        """True: the household's residents say otherwise; None: its bundle is unknown here
        (or there is no enrolment to compare with)."""
        return None if self.summary is None or not self.compared else bool(self.changes)

    @property
    def state(self) -> str:
        """``outdated``, ``up to date`` or why it cannot be told."""
        if self.bundle.bundle_id is None:
            return "bundle unknown (never deployed from here, no records yet)"
        if self.summary is None:
            return "bundle unknown here (not made or deployed from this host)"
        if not self.compared:
            return "not compared (no enrolment store here)"
        return "OUTDATED" if self.changes else "up to date"

    def as_json(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle.bundle_id, "bundle_source": self.bundle.source,
                "bundle_since": self.bundle.since, "deployed": self.bundle.deployed,
                "deployed_at": self.bundle.deployed_at,
                "deploy_error": self.bundle.deploy_error, "residents": self.residents,
                "outdated": self.outdated, "changes": self.changes,
                "last_unlock": self.last_unlock}


def door_statuses(activity: ActivityStore, enrolment: EnrolmentStore | None,
                  model_dir: Path | None = None) -> list[DoorStatus]:
    """Every door with its bundle and what the household would change in it now (nothing
    compared without an enrolment store)."""
    unlocks = activity.last_unlocks()
    out = []
    for entry in activity.doors():
        bundle = activity.door_bundle(entry.name)
        summary = activity.bundle_summary(bundle.bundle_id) if bundle.bundle_id else None
        status = DoorStatus(entry, bundle, summary, last_unlock=unlocks.get(entry.name),
                            compared=enrolment is not None)
        if summary is not None and enrolment is not None:
            status.changes = changes(summary, household_summary(
                enrolment, summary["model_id"], model_dir))
        out.append(status)
    return out


def changes_per_door(activity: ActivityStore, new: BundleInfo) -> list[str]:
    """``NAME: what changed`` for each door whose bundle is known, against bundle ``new``."""
    lines = []
    for entry in activity.doors():
        bundle = activity.door_bundle(entry.name)
        old = activity.bundle_summary(bundle.bundle_id) if bundle.bundle_id else None
        if old is None:
            lines.append(f"{entry.name}: its current bundle is unknown here")
        elif bundle.bundle_id == new.bundle_id:
            lines.append(f"{entry.name}: runs this bundle")
        else:
            found = changes(old, new.summary)
            lines.append(f"{entry.name}: " + ("; ".join(found) if found else "no change"))
    return lines


# -- building and deploying ---------------------------------------------------------------------


def build_bundle(enrolment: EnrolmentStore, model_dir: Path, key: Path, out: Path,
                 users: Sequence[str] | None = None, progress: Progress = _quiet,
                 lock: threading.Lock | None = None) -> dict[str, Any]:
    """``twinlock bundle``: the household's residents (or ``users``) for ``model_dir``, signed
    with ``key`` into ``out``. ``lock`` is held while the enrolment store is written (anchors
    made for a new model)."""
    from .bundles import make_bundle
    from .enroll import export_gallery

    progress("build bundle")
    with tempfile.TemporaryDirectory(prefix="twinlock-bundle-") as tmp:
        gallery_path = Path(tmp) / "gallery.json"
        with lock or nullcontext():
            gallery = export_gallery(enrolment, model_dir, gallery_path)
        if users:
            missing = sorted(set(users) - set(gallery.users))
            if missing:
                raise UsageError(f"bundle: not enrolled for this model: {', '.join(missing)}")
            gallery.users = {n: u for n, u in gallery.users.items() if n in users}
            gallery.save(gallery_path)
        if not gallery.users:
            logger.warning("no residents in this bundle: the door will open for nobody")
        progress("sign")
        return make_bundle(model_dir, gallery_path, key, out, echo=False)


def reload_command_of(activity: ActivityStore, name: str) -> str:
    """The reload a door was added with (``doors add --reload-command``), else the default."""
    stored = activity.door_bundle(name).reload_command
    return DEFAULT_RELOAD_COMMAND if stored is None else stored


def deploy_to_door(activity: ActivityStore, name: str, bundle: Path,
                   reload_command: str | None = None, extra_ssh_options: Sequence[str] = (),
                   identity: Path | None = None, timeout_s: float = 60,
                   progress: Progress = _quiet, no_reload: bool = False) -> DeployReport:
    """``twinlock deploy BUNDLE --to NAME``: the door's own target, key and ssh options; the
    door's bundle is recorded when the deployment succeeds, its error when it fails."""
    from .doors import deploy_target_of

    entry = activity.door(name)
    target = deploy_target_of(entry)
    info = record_bundle(activity, bundle)
    command = None if no_reload else (reload_command if reload_command is not None
                                      else reload_command_of(activity, name))
    try:
        report = deploy(bundle, target, reload_command=command,
                        ssh_options=[*entry.ssh_options, *extra_ssh_options],
                        identity=identity or (Path(entry.identity) if entry.identity else None),
                        timeout_s=timeout_s, progress=progress)
    except TwinLockError as exc:
        activity.note_deploy(name, info.bundle_id, str(exc).splitlines()[0])
        raise
    activity.note_deploy(name, info.bundle_id, None)
    logger.info("door %s now runs bundle %s", name, info.bundle_id)
    return report


@contextmanager
def _household_bundle(enrolment_db: Path, model_dir: Path, key: Path, workdir: Path, stem: str,
                      progress: Progress, lock: threading.Lock | None
                      ) -> Iterator[tuple[dict[str, Any], Path]]:
    """A signed bundle of the household's residents now, in a private temporary folder under
    ``workdir`` that is deleted on leaving (the bundle is on its way to the doors by then)."""
    from twinlock.daemon.storage.private_db import make_private_dirs

    from ..errors import EnrolmentError

    make_private_dirs(workdir, EnrolmentError)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="update-", dir=workdir) as tmp:
        bundle = Path(tmp) / f"{stem}-{stamp}{fmt.BUNDLE_SUFFIX}"
        with EnrolmentStore(enrolment_db) as enrolment:
            info = build_bundle(enrolment, model_dir, key, bundle, progress=progress, lock=lock)
        yield info, bundle


def update_door(activity_db: Path, enrolment_db: Path, name: str, model_dir: Path, key: Path,
                workdir: Path, progress: Progress = _quiet,
                lock: threading.Lock | None = None) -> tuple[dict[str, Any], DeployReport]:
    """Build a signed bundle of the household's residents now and deploy it to door ``name``
    (the page's Update; ``update_doors`` for several). The bundle is written in a private
    temporary folder under ``workdir`` and deleted once it is on its way."""
    from .doors import deploy_target_of

    with ActivityStore(activity_db) as activity:
        deploy_target_of(activity.door(name))  # a door with nowhere to deploy fails first
        with _household_bundle(enrolment_db, model_dir, key, workdir, name, progress,
                               lock) as (info, bundle):
            report = deploy_to_door(activity, name, bundle, progress=progress)
    return info, report


#: a step of an update of several doors: (door, step); door None for the one bundle's steps
DoorProgress = Callable[[str | None, str], None]


@dataclass
class DoorOutcome:
    """How one door's part of ``update_doors`` ended: its deploy report, or why it failed."""

    door: str
    report: DeployReport | None = None
    error: str | None = None  # one line
    bundle_id: str | None = None  # the bundle it runs now (None: failed)


@dataclass
class DoorsUpdate:
    """``update_doors``: the bundle made (None when no door could take one) and each door."""

    bundle: dict[str, Any] | None
    outcomes: list[DoorOutcome]

    @property
    def failed(self) -> list[DoorOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def summary(self) -> str:
        """``updated 2 of 3 doors; failed: back (why)``."""
        done = len(self.outcomes) - len(self.failed)
        line = f"updated {done} of {_count(len(self.outcomes), 'door')}"
        if self.failed:
            line += "; failed: " + ", ".join(f"{o.door} ({o.error})" for o in self.failed)
        return line


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def update_doors(activity_db: Path, enrolment_db: Path, names: Sequence[str], model_dir: Path,
                 key: Path, workdir: Path, progress: DoorProgress = lambda door, step: None,
                 finished: Callable[[DoorOutcome], None] = lambda outcome: None,
                 lock: threading.Lock | None = None) -> DoorsUpdate:
    """``twinlock doors update [NAME...]`` and the page's "Update every door": one signed
    bundle of the household's residents now (built once), deployed to each door in turn (every
    door in the list when ``names`` is empty). A door that is down or refuses is reported with
    its reason (and its deploy error kept, as ``deploy_to_door`` does) and the others go on;
    ``finished`` hears each door's outcome as it ends. An unknown name, or a bundle that
    cannot be built, stops it before any door is touched."""
    from .doors import deploy_target_of

    with ActivityStore(activity_db) as activity:
        names = list(dict.fromkeys(names)) or [d.name for d in activity.doors()]
        if not names:
            raise UsageError("no doors to update (twinlock doors add NAME --to ...)")
        entries = {name: activity.door(name) for name in names}  # a typo stops it here
        outcomes: dict[str, DoorOutcome] = {}
        for name, entry in entries.items():
            try:
                deploy_target_of(entry)
            except TwinLockError as exc:  # nowhere to deploy: no need to build for it
                outcomes[name] = DoorOutcome(name, error=_one_line(exc))
                finished(outcomes[name])
        ready = [n for n in names if n not in outcomes]
        info = None
        if ready:
            with _household_bundle(enrolment_db, model_dir, key, workdir, "household",
                                   lambda step: progress(None, step), lock) as (info, bundle):
                for name in ready:
                    try:
                        report = deploy_to_door(activity, name, bundle,
                                                progress=functools.partial(progress, name))
                        outcomes[name] = DoorOutcome(name, report=report,
                                                     bundle_id=str(info["bundle_id"]))
                    except (TwinLockError, OSError) as exc:
                        logger.warning("update of door %s failed: %s", name, exc)
                        outcomes[name] = DoorOutcome(name, error=_one_line(exc))
                    finished(outcomes[name])
    return DoorsUpdate(info, [outcomes[n] for n in names])
