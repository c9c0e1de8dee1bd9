"""Screenshots of the household page (``twinlock web``) for the documentation: every page at a
desktop width (1280 px) and a phone's (390 px), into docs/img/web/.

The household is made up here, in a temporary folder, from real faces: three residents enrolled
from LFW photos; two doors whose review folders are written by the door's own review writer
(unlocks by the residents from their other photos, refusals of two LFW visitors) and synced;
the front door updated from the Doors page (a signed bundle deployed to its drop folder) and the
back door synced with its Sync now; one
upload with a photo refused, to show the reason. Headless Chromium from Debian's packages
(chromium, chromium-driver) through Selenium, as tests/test_web_browser.py drives it.

Every picture in the page (face crops, resident photos) is pixelated in the published PNGs: the
documentation shows no recognisable face.

Usage::

    .venv/bin/python scripts/web_screenshots.py [--data DIR] [--model DIR] [--out docs/img/web]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import web_activity as bench  # its free port

PASSWORD = "screenshot household password"
CLI = "import sys; from twinlock.trainer.cli import main; sys.exit(main(sys.argv[1:]))"
RESIDENTS = {"amelie": "Angelina_Jolie", "andy": "Andy_Roddick", "colin": "Colin_Powell"}
VISITORS = ("George_W_Bush", "Tony_Blair")
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}
MAX_HEIGHT = 2400  # a long page is cut here
PIXEL_BLOCK = 12  # pixelation: one colour per block of this many pixels


def twinlock(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run([sys.executable, "-c", CLI, *argv], input=stdin, text=True,
                          capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"twinlock {' '.join(argv)}: {done.stderr.strip()}")


def household(root: Path, lfw: Path, model: Path) -> dict[str, Path]:
    """Residents, a signing key, two synced doors with real faces."""
    from twinlock.daemon.faces import quality as q
    from twinlock.daemon.faces.images import load_image
    from twinlock.daemon.recognition.model import FaceEmbedder
    from twinlock.daemon.review.format import ReviewRecord, new_record_id
    from twinlock.daemon.review.store import ReviewWriter, encode_crop
    from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face

    home = root / "home"
    enrol_db, act_db = home / "enrolment.db", home / "activity.db"
    for name, person in RESIDENTS.items():
        photos = sorted((lfw / person).glob("*.jpg"))[:3]
        twinlock("enroll", name, "--images", *map(str, photos), "--model", str(model), "--db",
                 str(enrol_db))
    twinlock("keygen", "--out", str(home / "signing"))
    twinlock("web", "set-password", "--db", str(enrol_db), stdin=PASSWORD + "\n")

    embedder = FaceEmbedder(model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    knocks: list[tuple[str, str | None, Path]] = []  # door, resident, photo
    for name, person in RESIDENTS.items():
        knocks += [("front", name, p) for p in sorted((lfw / person).glob("*.jpg"))[4:6]]
    for person in VISITORS:
        knocks += [(door, None, p) for door, p in
                   zip(("front", "back", "front"), sorted((lfw / person).glob("*.jpg"))[:3])]
    rng = np.random.default_rng(0)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=len(knocks))
    clock = [when]
    for door in ("front", "back"):
        (root / door / "review").mkdir(parents=True)  # made by deploy/install.sh on a Pi
    writers = {d: ReviewWriter(root / d / "review", d, 30, 10**8,
                               clock=lambda: clock[0].timestamp()) for d in ("front", "back")}
    for door, resident, path in [knocks[i] for i in rng.permutation(len(knocks))]:
        found = enrolment_face(load_image(path), analyser)
        if isinstance(found, str):
            continue
        clock[0] += timedelta(minutes=int(rng.integers(20, 70)))
        record = ReviewRecord(
            id=new_record_id(door, clock[0]), door=door, time=clock[0],
            decision="unlock" if resident else "deny", bundle_id=None, model_id=meta.model_id,
            resident=resident, score=float(rng.uniform(0.93, 0.99) if resident
                                           else rng.uniform(0.02, 0.3)),
            embedding=found.embedding)
        writers[door].append(record, encode_crop(found.crop))
    act = ["--activity-db", str(act_db)]
    for door in ("front", "back"):
        (root / door / "spool").mkdir()
        twinlock("doors", "add", door, "--to", str(root / door / "review"), "--deploy-to",
                 str(root / door / "spool"), "--reload-command", "true", *act)
    twinlock("doors", "sync", *act)
    return {"enrol_db": enrol_db, "activity_db": act_db, "key": home / "signing.key"}


class Browser:
    """Headless Debian Chromium at one width; screenshots with every picture pixelated."""

    def __init__(self, width: int, height: int, phone: bool) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads anything
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--hide-scrollbars",
                    f"--window-size={width},{height}"):
            options.add_argument(arg)
        if phone:
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
                "width": width, "height": height, "pixelRatio": 1, "touch": True}})
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"),
                                       options=options)
        self.driver.set_page_load_timeout(120)
        self.width, self.height, self.phone = width, height, phone

    def get(self, url: str) -> None:
        self.driver.get(url)

    def shoot(self, out: Path) -> dict[str, Any]:
        """The whole page (up to MAX_HEIGHT) as a PNG, every <img> pixelated."""
        # the page's own height (not the window's: no empty band under a short page)
        full = int(self.driver.execute_script(
            "return Math.ceil(document.body.getBoundingClientRect().height) + 16"))
        height = min(full, MAX_HEIGHT)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": height, "deviceScaleFactor": 1,
            "mobile": self.phone})
        try:
            time.sleep(0.3)
            rects = self.driver.execute_script(
                "return [...document.images].map(i => { const r = i.getBoundingClientRect();"
                " return [r.left, r.top, r.width, r.height]; })")
            widths = self.driver.execute_script(
                "return [document.body.scrollWidth, window.innerWidth]")
            png = self.driver.get_screenshot_as_png()
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            if self.phone:
                self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": self.width, "height": self.height, "deviceScaleFactor": 1,
                    "mobile": True})
        if widths[0] > widths[1]:
            print(f"warning: {out.name}: the page is {widths[0]} px wide on a {widths[1]} px "
                  "screen (it scrolls sideways)", file=sys.stderr)
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{out.name}: Chromium's screenshot did not decode")
        for left, top, w, h in rects:
            pixelate(image, int(left), int(top), int(w), int(h))
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        return {"file": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
                "size": [image.shape[1], image.shape[0]], "page_height": full,
                "body_scroll_width": widths[0], "inner_width": widths[1]}

    def close(self) -> None:
        self.driver.quit()


def pixelate(image: np.ndarray, left: int, top: int, w: int, h: int) -> None:
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + w, image.shape[1]), min(top + h, image.shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    part = image[y0:y1, x0:x1]
    small = cv2.resize(part, (max(1, (x1 - x0) // PIXEL_BLOCK), max(1, (y1 - y0) // PIXEL_BLOCK)),
                       interpolation=cv2.INTER_AREA)
    image[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0),
                                     interpolation=cv2.INTER_NEAREST)


def login(b: Browser, url: str) -> None:
    from selenium.webdriver.common.by import By

    b.get(url + "/login")
    b.driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    b.driver.find_element(By.CSS_SELECTOR, "main form button").click()
    for _ in range(600):
        if b.driver.current_url == url + "/":
            return
        time.sleep(0.1)
    raise SystemExit("could not log in")


def press(b: Browser, url: str, button: str, status: str) -> None:
    """A Doors page button (a door's Update, Sync now), until its status says how it ended."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    b.get(url + "/doors")
    b.driver.find_element(By.ID, button).click()
    for _ in range(1200):
        try:
            text = b.driver.find_element(By.ID, status).text
            if text.startswith(("done", "failed")):
                print(f"{button}: {text}")
                return
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{button}: did not end")


def upload_with_a_refusal(b: Browser, url: str, lfw: Path, tmp: Path) -> None:
    from selenium.webdriver.common.by import By

    wall = tmp / "wall.png"
    cv2.imwrite(str(wall), np.full((300, 300, 3), 128, np.uint8))
    photos = []  # neutral names: the page shows each photo's file name
    for i, path in enumerate(sorted((lfw / "Serena_Williams").glob("*.jpg"))[:2]):
        photos.append(tmp / f"photo-{i + 1}.jpg")
        photos[-1].write_bytes(path.read_bytes())
    b.get(url + "/residents")
    form = b.driver.find_element(By.CSS_SELECTOR, "form[action='/residents/upload']")
    form.find_element(By.NAME, "name").send_keys("sam")
    form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(
        "\n".join(str(p) for p in [*photos, wall]))
    form.find_element(By.TAG_NAME, "button").click()
    for _ in range(1200):
        if b.driver.find_elements(By.CSS_SELECTOR, "[role=status]"):
            return
        time.sleep(0.1)
    raise SystemExit("the upload did not report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="default: $TWINLOCK_DATA or "
                        "../shared/data")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "web")
    args = parser.parse_args(argv)
    data = args.data or Path(os.environ.get("TWINLOCK_DATA", REPO.parent / "shared" / "data"))
    lfw = data / "lfw" / "lfw-deepfunneled"
    with tempfile.TemporaryDirectory(prefix="twinlock-shots-") as tmp_name:
        tmp = Path(tmp_name)
        home = household(tmp, lfw, args.model)
        port = bench.free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-c", CLI, "web", "--port", str(port), "--db",
             str(home["enrol_db"]), "--activity-db", str(home["activity_db"]), "--model",
             str(args.model), "--signing-key", str(home["key"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/login", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            shots = []
            for kind, (width, height) in WIDTHS.items():
                b = Browser(width, height, phone=kind == "phone")
                try:
                    b.get(url + "/login")
                    shots.append(b.shoot(args.out / f"login-{kind}.png"))
                    login(b, url)
                    if kind == "desktop":
                        press(b, url, "update-front", "update-status-front")
                        press(b, url, "sync-back", "sync-status-back")
                    for page, path in (("activity", "/"), ("visitors", "/visitors"),
                                       ("doors", "/doors"), ("residents", "/residents")):
                        b.get(url + path)
                        shots.append(b.shoot(args.out / f"{page}-{kind}.png"))
                    if kind == "desktop":
                        upload_with_a_refusal(b, url, lfw, tmp)
                        shots.append(b.shoot(args.out / f"residents-upload-{kind}.png"))
                finally:
                    b.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
