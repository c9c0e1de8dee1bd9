"""A seeded, time-bounded fuzz pass over what a hostile or unlucky user can hand the door: config
files, bundles, the drop folder and images.

Every case must end in a result or in the one exception tree's own error (ConfigError,
BundleError, DataError) with a message; any other exception is a failure that names the seed and
case. The drop folder pass also checks that nothing outside the state and drop folders changes and
that the installed bundle only ever moves forward; the image pass ends with the real daemon
replaying the fuzzed pictures with no unlock.

``TWINLOCK_FUZZ_SEED`` (default 15) and ``TWINLOCK_FUZZ_SECONDS`` (per target, default 6) make a
run reproducible and bound its time; each target also runs a minimum number of cases.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle import store
from twinlock.daemon.bundle.intake import pick_up_incoming
from twinlock.daemon.config.loader import load_action_config, parse_config
from twinlock.daemon.errors import BundleError, ConfigError, DataError
from twinlock.daemon.faces.images import MAX_IMAGE_PIXELS, decode_image
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.daemon.storage.audit import AuditLog
from twinlock.trainer.household import signing

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("TWINLOCK_FUZZ_SEED", "15"))
SECONDS = float(os.environ.get("TWINLOCK_FUZZ_SECONDS", "6"))


def cases(name: str, minimum: int) -> Iterator[tuple[random.Random, int]]:
    """(generator, index) for each case until the time budget is spent (and at least
    ``minimum`` cases); each case has its own generator, so one failing case can be rerun."""
    deadline = time.monotonic() + SECONDS
    index = 0
    while index < minimum or time.monotonic() < deadline:
        yield random.Random(f"{SEED}:{name}:{index}"), index
        index += 1
    print(f"fuzz {name}: {index} cases, seed {SEED}, none raised outside the error tree")


def mutate(rng: random.Random, data: bytes, max_ops: int = 4) -> bytes:
    """Byte flips, insertions, deletions, truncation, duplication and splices of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(7)
        at = rng.randrange(len(out) + 1) if out else 0
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2 and out:
            del out[at:at + rng.randint(1, 64)]
        elif op == 3:
            del out[rng.randrange(len(out) + 1):]
        elif op == 4 and out:
            piece = out[at:at + rng.randint(1, 512)]
            out[at:at] = piece * rng.randint(1, 4)
        elif op == 5 and out:
            out[min(at, len(out) - 1)] = rng.choice([0, 7, 0x0A, 0x22, 0x26, 0x2A, 0x3A, 0xFF])
        elif op == 6 and len(out) >= 4:  # a plausible little/big-endian number, often huge
            value = rng.choice([0, 1, 2**16 - 1, 2**31 - 1, 2**32 - 1, rng.randrange(2**32)])
            out[at:at + 4] = value.to_bytes(4, rng.choice(["little", "big"]))
    return bytes(out)


def expect(allowed: type[Exception] | tuple[type[Exception], ...], name: str, index: int,
           work: Callable[[], object]) -> object:
    """Run one case: its result, or None for an allowed error that says something."""
    try:
        return work()
    except allowed as exc:
        assert str(exc).strip(), f"fuzz {name} case {index} (seed {SEED}): an empty message"
        return None
    except Exception as exc:  # noqa: BLE001 - the point: anything else is the failure
        pytest.fail(f"fuzz {name} case {index} (seed {SEED}): {type(exc).__name__}: {exc}")


# ---- config -----------------------------------------------------------------------------------

WORDS = ["camera", "type", "replay", "opencv", "picamera2", "action", "gpio", "pin", "log",
         "command", "argv", "lockout", "enabled", "max_failures", "model", "source", "bundle",
         "verification", "threshold", "audit", "db", "service", "max_fps", "liveness", "mode"]
SCALARS = ["true", "false", "yes", "off", "0", "17", "-3", "1e400", ".nan", ".inf", "''", "~",
           "'17'", "[]", "{}", "!!binary aGk=", "0x11", "2026-12-01", "*a", "&a x"]


def random_yaml(rng: random.Random, depth: int = 0) -> str:
    lines = []
    for _ in range(rng.randint(1, 5)):
        key, indent = rng.choice(WORDS), "  " * depth
        if depth < 3 and rng.random() < 0.4:
            lines.append(f"{indent}{key}:\n{random_yaml(rng, depth + 1)}")
        else:
            lines.append(f"{indent}{key}: {rng.choice(SCALARS)}")
    return "\n".join(lines)


def test_fuzz_config_loader(tmp_path: Path) -> None:
    shipped = (REPO / "config.yaml").read_bytes()
    path = tmp_path / "config.yaml"
    for rng, index in cases("config", 300):
        if rng.random() < 0.5:
            data = mutate(rng, shipped)
        else:
            data = random_yaml(rng).encode() if rng.random() < 0.8 else mutate(
                rng, random_yaml(rng).encode())
        text = data.decode("utf-8", errors="replace")
        expect(ConfigError, "config", index,
               lambda text=text: parse_config(text, "fuzz.yaml", tmp_path))
        path.write_bytes(data)
        expect(ConfigError, "config/action", index, lambda: load_action_config(path))


# ---- bundles and the drop folder --------------------------------------------------------------


class Home:
    """A signing key, the shipped model and a small gallery: bundles to mutate."""

    def __init__(self, root: Path) -> None:
        model = REPO / "models" / "default"
        meta = read_metadata(model)
        gallery = Gallery(meta.model_id)
        gallery.add("alice", np.random.default_rng(0).normal(size=(2, meta.embedding_dim)))
        gallery.save(root / "gallery.json")
        self.key, self.pub = root / "home.key", root / "home.pub"
        signing.generate_keypair(self.key, self.pub)
        self.good = root / "good.twinlock"
        signing.write_bundle(model, root / "gallery.json", self.key, self.good)
        self.data = self.good.read_bytes()
        self.model, self.gallery = model, root / "gallery.json"


def test_fuzz_bundle_reader(tmp_path: Path) -> None:
    home = Home(tmp_path)
    data, path = home.data, tmp_path / "case.twinlock"
    tail = len(data) - 16 * 1024  # the small members, their headers and the archive's end
    for rng, index in cases("bundle", 200):
        where = rng.random()
        if where < 0.6:  # the first headers, the manifest and its signature
            case = mutate(rng, data[:4096]) + data[4096:]
        elif where < 0.9:
            case = data[:tail] + mutate(rng, data[tail:])
        else:
            case = mutate(rng, data)
        path.write_bytes(case)
        before = sorted(p.name for p in tmp_path.iterdir())
        verified = expect(BundleError, "bundle", index, lambda: store.verify_bundle(path, home.pub))
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "verify wrote a file"
        if verified is not None:  # accepted: then it is the good bundle, byte for byte in use
            assert isinstance(verified, fmt.VerifiedBundle)
            assert verified.digest == store.verify_bundle(home.good, home.pub).digest


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (not following links): type and content hash or target."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(root))] = "dir" if path.is_dir() else "other"
    return out


def test_fuzz_drop_folder(tmp_path: Path) -> None:
    home = Home(tmp_path)
    outside = tmp_path / "outside"  # what links in the drop folder point at: must not change
    outside.mkdir()
    (outside / "secret.txt").write_text("not the door's")
    (outside / "x.twinlock").write_bytes(home.data)
    state, spool = tmp_path / "state", tmp_path / "spool"
    store.install_bundle(home.good, home.pub, state)
    cfg = parse_config(f"state_dir: {state}\nmodel:\n  incoming: {spool}\n  public_key: "
                       f"{home.pub}\n")
    newer = tmp_path / "newer.twinlock"
    signing.write_bundle(home.model, home.gallery, home.key, newer)
    guarded = tree(outside)
    for rng, index in cases("drop-folder", 60):
        spool.mkdir(exist_ok=True)
        for n in range(rng.randint(1, 4)):
            name = rng.choice([f"f{n}.twinlock", "current.twinlock", "rejected", ".hidden",
                               f"u{n}.part", "previous.twinlock"])
            target = spool / name
            if target.exists() or target.is_symlink():
                continue
            kind = rng.randrange(7)
            if kind == 0:
                target.write_bytes(mutate(rng, home.data[:4096]) + home.data[4096:])
            elif kind == 1:
                target.symlink_to(rng.choice([outside / "secret.txt", outside / "x.twinlock",
                                              outside, store.bundles_dir(state), tmp_path / "gone"]))
            elif kind == 2:
                os.mkfifo(target)
            elif kind == 3:
                target.mkdir()
            elif kind == 4:
                target.write_bytes(newer.read_bytes())
            elif kind == 5:
                target.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))))
            else:
                target.write_bytes(home.data)
        before = store.verify_bundle(store.current_bundle(state), home.pub).sequence
        with AuditLog(state / "audit.db") as audit:
            expect((), "drop-folder", index, lambda: pick_up_incoming(cfg, audit))
        after = store.verify_bundle(store.current_bundle(state), home.pub)
        assert after.sequence >= before, f"case {index}: the door went back"
        assert tree(outside) == guarded, f"case {index}: something outside changed"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["outside", "state", "spool", "home.key", "home.pub", "good.twinlock",
             "gallery.json", "newer.twinlock"]), f"case {index}: a file appeared outside"
        if rng.random() < 0.3:  # start again from an empty drop folder now and then
            for path in sorted(spool.rglob("*"), key=lambda p: -len(p.parts)):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


# ---- images -----------------------------------------------------------------------------------

FORMATS = [".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm", ".pgm"]


def seed_images() -> list[bytes]:
    rng = np.random.default_rng(SEED)
    out = []
    for suffix in FORMATS:
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        picture = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
        out.append(cv2.imencode(suffix, picture if suffix != ".pgm" else picture[:, :, 0])[1]
                   .tobytes())
    out.append(b"GIF89a\x15\x00\x0d\x00" + bytes(40))
    return out


def test_fuzz_image_decoding() -> None:
    seeds = seed_images()
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # decoders' complaints
    try:
        for rng, index in cases("images", 400):
            data = mutate(rng, rng.choice(seeds), max_ops=3)
            image = expect(DataError, "images", index,
                           lambda data=data: decode_image(data, "fuzz"))
            if image is not None:
                assert isinstance(image, np.ndarray) and image.dtype == np.uint8
                assert image.ndim == 3 and image.shape[2] == 3
                assert image.shape[0] * image.shape[1] <= MAX_IMAGE_PIXELS
    finally:
        cv2.utils.logging.setLogLevel(level)


@pytest.mark.data
@pytest.mark.slow
def test_fuzzed_pictures_of_strangers_through_the_daemon_open_nothing(
        tmp_path: Path, door_model: Path, examples_dir: Path, lfw_dir: Path) -> None:
    """Mutated and hostile pictures (strangers' faces, broken headers, huge claimed sizes)
    replayed through the real daemon: it plays them all, never unlocks, and stops normally."""
    from daemon_helpers import enrol_miranda, liveness_off, write_config

    from twinlock.daemon.door.service import Daemon

    frames = tmp_path / "frames"
    frames.mkdir()
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[:40]
    written = 80
    for index in range(written):  # a fixed number: each picture costs a detection and more
        rng = random.Random(f"{SEED}:daemon-images:{index}")
        source = min(people[index % len(people)].glob("*.jpg")).read_bytes()
        data = mutate(rng, source, max_ops=2) if rng.random() < 0.5 else source
        (frames / f"{index:04d}{rng.choice(['.jpg', '.png', '.bmp'])}").write_bytes(data)
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                          tmp_path / "gallery.json", str(frames), camera={"realtime": False},
                          action={"type": "log"}, **liveness_off())
    daemon = Daemon(config)
    assert daemon.run() == 0, "the daemon played every picture and stopped normally"
    assert daemon.camera.stats["frames"] <= written
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        assert not audit.query(event="unlock")
        assert [r.event for r in audit.query()][-1] == "stop"
