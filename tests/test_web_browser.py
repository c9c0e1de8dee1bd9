"""The household page in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (both named by path: Selenium Manager, which would download a browser or a
driver, is never asked), against ``twinlock web`` on 127.0.0.1.

The whole loop of the page, on real faces: log in; add residents from LFW photos by upload, one
photo refused with its reason shown; deploy a signed bundle to a door over a real sshd on
127.0.0.1 from the Doors page; the real daemon replays the real clip with its performer not
enrolled; the page's scheduled sync fetches the door's records; name his group on the Visitors
page; Update the door from the Doors page; the door now opens for him, in his frames only.
And the main pages on a phone-sized screen (390 x 844, Chromium's mobile emulation)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from daemon_helpers import CLIP, MIRANDA_FRAMES, liveness_off, scaled, write_config
from gpiozero.pins.mock import MockFactory
from test_deploy_ssh import Door, door  # noqa: F401  (the sshd fixture)
from test_review_door import (
    PIANIST_FRAMES,
    RESIDENTS,
    audit_records,
    clip_part,
    read_review,
    relay_pulses,
    run_door,
    set_camera,
)
from test_web import PASSWORD, Server, home, server, set_password  # noqa: F401  (fixtures)

from twinlock.daemon.faces import quality as q
from twinlock.daemon.recognition.model import read_metadata
from twinlock.trainer.cli import main as twinlock
from twinlock.trainer.household.enroll import describe

pytestmark = [pytest.mark.data, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOOR = "front"
#: the page's sync schedule in the loop (twinlock web --sync-every, minutes): every 3 s
SYNC_EVERY_MIN = 0.05
PHONE = {"width": 390, "height": 844, "pixelRatio": 1, "touch": True}
#: a browser left running past this (reference-machine seconds, scaled) is killed, whatever the
#: test is doing: a hung Chromium never outlives its test
BROWSER_LIMIT_S = 600.0


def _require_browser() -> None:
    """Skip without Debian's chromium and chromium-driver; under CI a missing one is a failure
    (scripts/setup.sh installs both), as missing data is."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        message = (f"no browser to test the page in ({', '.join(missing)} missing); "
                   "run scripts/setup.sh (apt: chromium chromium-driver)")
        if os.environ.get("TWINLOCK_REQUIRE_DATA") == "1" or os.environ.get("CI") == "true":
            pytest.fail(message + " (CI)")
        pytest.skip(message)


class Browser:
    """One headless Chromium, its chromedriver in a process group of its own: killed at
    ``close`` and, if the test hangs, by a timer at the deadline."""

    def __init__(self, phone: bool = False) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.selenium_manager import SeleniumManager

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900"):
            options.add_argument(arg)
        if phone:
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE})
        service = Service(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
        with pytest.MonkeyPatch.context() as mp:
            # nothing downloaded at run time: Selenium Manager (which fetches browsers and
            # drivers) is offline, and asking it at all fails the test
            mp.setenv("SE_OFFLINE", "true")
            mp.setattr(SeleniumManager, "binary_paths", _no_selenium_manager)
            self.driver = webdriver.Chrome(service=service, options=options)
        self.service = service
        self.driver.set_page_load_timeout(scaled(120))
        self.timer = threading.Timer(scaled(BROWSER_LIMIT_S), self.kill)
        self.timer.daemon = True
        self.timer.start()

    def kill(self) -> None:
        proc = self.service.process
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        self.timer.cancel()
        try:
            self.driver.quit()
        finally:
            self.kill()

    # -- what the tests do with it --------------------------------------------------------------

    def wait(self, until: Callable[[Any], Any], what: str, limit_s: float = 60.0) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, scaled(limit_s), poll_frequency=0.1).until(until)
        except TimeoutException:
            pytest.fail(f"the page never showed {what} within {scaled(limit_s):.0f} s; it "
                        f"shows:\n{self.text()[:2000]}")

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str, within: Any = None) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list((within or self.driver).find_elements(By.CSS_SELECTOR, selector))

    def text(self) -> str:
        return str(self.driver.execute_script("return document.body.innerText"))

    def login(self, url: str) -> None:
        self.driver.get(url + "/login")
        self.css("input[name=password]").send_keys(PASSWORD)
        self.css("main form button").click()
        self.wait(lambda d: d.current_url == url + "/" and self.all("nav a"), "the activity page")

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete",
                  f"{url} loaded")

    def images_loaded(self, selector: str) -> list[str]:
        """The ``src`` of every image matching ``selector`` that really decoded."""
        return [str(img.get_attribute("src")) for img in self.all(selector)
                if self.driver.execute_script("return arguments[0].complete && "
                                              "arguments[0].naturalWidth > 0", img)]


def _no_selenium_manager(*_: object, **__: object) -> Any:
    raise AssertionError("Selenium Manager was asked for a browser or driver (it downloads "
                         "them): the tests name Debian's chromium and chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_browser()
    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def phone() -> Iterator[Browser]:
    _require_browser()
    b = Browser(phone=True)
    try:
        yield b
    finally:
        b.close()


# -- the loop --------------------------------------------------------------------------------------

class Household:
    """The household machine's folder and the door's folders on "the Pi" (a real sshd on
    127.0.0.1), listed as door ``front``: reviews fetched from its review folder, bundles
    deployed to its drop folder."""

    def __init__(self, root: Path, door: Door) -> None:  # noqa: F811
        self.enrol_db, self.activity_db = root / "home" / "enrolment.db", root / "home" / "act.db"
        set_password(self.enrol_db)
        assert twinlock(["keygen", "--out", str(root / "home" / "signing")]) == 0
        self.key, self.pub = root / "home" / "signing.key", root / "home" / "signing.pub"
        self.state, self.review, self.spool = root / "pi" / "state", root / "pi" / "review", \
            root / "pi" / "spool"
        self.spool.mkdir(parents=True)
        # the daemon is not running between the test's runs (it installs the drop folder's
        # newest bundle at start): the door's reload is a no-op
        assert twinlock(["doors", "add", DOOR, "--to", door.url(self.review), "-i",
                         str(door.key), f"--ssh-option={' '.join(door.options)}",
                         "--deploy-to", door.url(f"{self.spool}/"), "--reload-command", "true",
                         "--activity-db", str(self.activity_db)]) == 0


def update_on_the_page(b: Browser, url: str, spool: Path) -> str:
    """The Doors page's Update for the door: a signed bundle of the residents, copied over ssh
    into the door's drop folder; its progress shows on the page (which reloads itself)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support import expected_conditions as ec

    before = set(spool.glob("*.twinlock"))
    b.open(url + "/doors")
    button = b.css(f"#update-{DOOR}")
    button.click()
    b.wait(ec.staleness_of(button), "the Doors page after Update")  # not the last one's status

    def finished(_: Any) -> str | None:
        try:
            text = str(b.css(f"#update-status-{DOOR}").text)
        except StaleElementReferenceException:  # the page reloaded under us
            return None
        return text if text.startswith(("done", "failed")) else None

    status = str(b.wait(finished, "the update's end", limit_s=180))
    assert status.startswith("done"), status
    arrived = set(spool.glob("*.twinlock")) - before
    assert len(arrived) == 1, sorted(spool.iterdir())
    return status


def upload(b: Browser, url: str, name: str, photos: list[Path]) -> str:
    """Add ``photos`` to ``name`` through the Residents page's form; the report it shows."""
    b.open(url + "/residents")
    b.css("form[action='/residents/upload'] input[name=name]").send_keys(name)
    b.css("form[action='/residents/upload'] input[type=file]").send_keys(
        "\n".join(str(p) for p in photos))
    b.css("form[action='/residents/upload'] button").click()
    report = b.wait(lambda d: b.all("[role=status]"), f"the upload's report for {name}",
                    limit_s=120)
    return str(report[0].text)


def test_the_loop_in_a_browser_a_visitor_named_on_the_page_is_let_in(
        browser: Browser, door: Door, tmp_path: Path, door_model: Path,  # noqa: F811
        examples_dir: Path, lfw_dir: Path, mock_pins: MockFactory) -> None:
    house = Household(tmp_path, door)
    srv = Server({"enrol_db": house.enrol_db, "db": house.activity_db}, door_model,
                 "--signing-key", str(house.key), "--sync-every", str(SYNC_EVERY_MIN))
    try:
        _loop(browser, srv.url, house, tmp_path, door_model, examples_dir, lfw_dir, mock_pins)
    finally:
        srv.stop()


def _loop(b: Browser, url: str, house: Household, tmp_path: Path, model: Path,
          examples_dir: Path, lfw_dir: Path, mock_pins: MockFactory) -> None:
    b.login(url)

    # 1. residents from several real photos by upload; a photo of a wall is refused, and why
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((300, 300, 3), 128, np.uint8))
    for n, (name, person) in enumerate(RESIDENTS.items()):
        photos = sorted((lfw_dir / person).glob("*.jpg"))[:4]
        report = upload(b, url, name, photos + ([wall] if n == 0 else []))
        assert f"{name}: kept " in report and all(p.name in report for p in photos), report
        if n == 0:
            assert f"Refused wall.png: {describe(q.NO_FACE)}" in report, report
        assert name in [h.text for h in b.all("main .card h2")], "no card for " + name
        assert len(b.images_loaded("img[src^='/thumb/']")) >= (n + 1) * 3

    # 2. the first bundle goes to the door over ssh, from the Doors page
    update_on_the_page(b, url, house.spool)

    # 3. the door: the shipped decision, from signed bundles in its drop folder, review on; the
    # clip's pianist knocks, then its performer (lin, nobody's resident): the door stays shut
    shipped = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    config = write_config(tmp_path / "config.yaml", house.state, model,
                          tmp_path / "unused.json", str(examples_dir / CLIP),
                          camera={"realtime": False}, verification=shipped["verification"],
                          review={"enabled": True, "dir": str(house.review), "door": DOOR},
                          **liveness_off())
    cfg = yaml.safe_load(config.read_text())
    cfg["model"] = {"source": "bundle", "public_key": str(house.pub),
                    "incoming": str(house.spool)}
    config.write_text(yaml.safe_dump(cfg))
    pianist_last = 0
    for who, frames in (("pianist", PIANIST_FRAMES), ("performer", MIRANDA_FRAMES)):
        set_camera(config, clip_part(examples_dir, frames, tmp_path / who))
        daemon = run_door(config)
        assert daemon.matcher is not None and daemon.matcher.users == len(RESIDENTS)
        if who == "pianist":
            pianist_last = max(r.id for r in audit_records(house.state))
    first = audit_records(house.state)
    assert first and not [r for r in first if r.event == "unlock"]
    assert relay_pulses(mock_pins) == 0
    records = {r.id: r for r in read_review(house.review, read_metadata(model).embedding_dim)}
    his = {i for i, r in records.items() if r.audit_id is not None and r.audit_id > pianist_last}
    assert his and len(records) > len(his), "the clip's two knocks left no records"

    # 4. the page's own sync (its schedule, over ssh) fetches them: the attempts show, with faces
    def fetched(_: Any) -> set[str] | None:
        b.open(url + "/")
        shown = {s.rsplit("/", 1)[1] for s in b.images_loaded("img[src^='/crop/']")}
        return shown if shown >= set(records) else None

    assert b.wait(fetched, "every attempt of the two knocks", limit_s=120) == set(records)
    b.open(url + "/doors")
    row = [r.text for r in b.all("table tr") if r.text.startswith(DOOR)]
    assert row and "never" not in row[0], row

    # 5. the Visitors page: his group, found by his faces, named "lin"
    b.open(url + "/visitors")
    cards = []
    for card in b.all("main .card"):
        faces = {str(i.get_attribute("src")).rsplit("/", 1)[1]
                 for i in b.all("img[src^='/crop/']", card)}
        cards.append((faces, card))
    mine = [(faces, card) for faces, card in cards if faces & his]
    assert len(mine) == 1 and mine[0][0] <= his, [faces for faces, _ in cards]
    assert len(cards) >= 2, "the pianist is a visitor of his own"
    card = mine[0][1]
    card.find_element("css selector", "form[action='/visitors/name'] input[name=name]"
                      ).send_keys("lin")
    card.find_element("css selector", "form[action='/visitors/name'] button").click()
    b.wait(lambda d: "Added to lin's photos" in b.text(), "lin's group enrolled", limit_s=120)

    # 6. the door runs an older bundle than the household's residents say: marked, and updated
    b.open(url + "/doors")
    assert b.all(f"#outdated-{DOOR}"), b.text()
    update_on_the_page(b, url, house.spool)
    b.open(url + "/doors")
    assert not b.all(f"#outdated-{DOOR}"), b.text()

    # 7. the whole clip again: the door opens for lin, and only in his frames
    set_camera(config, str(examples_dir / CLIP))
    daemon = run_door(config)
    assert daemon.matcher is not None and daemon.matcher.users == len(RESIDENTS) + 1
    second = [r for r in audit_records(house.state) if r.id > max(r.id for r in first)]
    unlocks = [r for r in second if r.event == "unlock"]
    assert unlocks, "the door did not open for the visitor named on the page"
    assert all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks), unlocks
    assert relay_pulses(mock_pins) == len(unlocks) and mock_pins.pin(17).state is False

    # 8. and the page shows it, with his face, after the next scheduled sync
    def shown_unlock(_: Any) -> bool:
        b.open(url + "/?decision=unlock")
        return "unlock as lin" in b.text()

    b.wait(shown_unlock, "lin's unlock", limit_s=120)
    assert b.images_loaded("img[src^='/crop/']")


# -- a phone ---------------------------------------------------------------------------------------

def _no_sideways_scroll(b: Browser) -> None:
    """The page fits the phone's width. A page wider than the screen either scrolls sideways
    or (in Chromium's mobile emulation, as on a phone) is zoomed out to fit: both fail here."""
    width, inner, widest = b.driver.execute_script(
        "const w = [...document.querySelectorAll('main *')].map(e => "
        "[e.getBoundingClientRect().right, e.tagName + (e.id ? '#' + e.id : '')]);"
        "w.sort((a, b) => b[0] - a[0]);"
        "return [document.body.scrollWidth, window.innerWidth, w[0]];")
    where = f"{b.driver.current_url}: widest element {widest[1]} ends at {widest[0]:.0f} px"
    assert inner == PHONE["width"], f"{where}; the page was zoomed out to {inner} px"
    assert width <= inner, f"{where}; the page is {width} px wide on a {inner} px screen"


def test_the_pages_on_a_phone_sized_screen(phone: Browser, server: Server,  # noqa: F811
                                           home: dict[str, object]) -> None:  # noqa: F811
    phone.login(server.url)
    _no_sideways_scroll(phone)
    crops = phone.images_loaded("img[src^='/crop/']")
    assert len(crops) >= 4, crops  # the household's two LFW visitors, two knocks each
    width = phone.driver.execute_script(
        "return document.querySelector('.card').getBoundingClientRect().width")
    assert width > PHONE["width"] * 0.8, width  # one column of cards
    phone.open(server.url + "/residents")
    photos = phone.css("input[type=file]")
    assert photos.get_attribute("accept") == "image/*"
    assert photos.get_attribute("capture") == "user"
    assert photos.get_attribute("multiple") is not None
    _no_sideways_scroll(phone)
    phone.open(server.url + "/visitors")
    _no_sideways_scroll(phone)
    assert phone.images_loaded("img[src^='/crop/']"), phone.text()  # the visitors' faces
    phone.open(server.url + "/doors")
    _no_sideways_scroll(phone)
    assert "front" in phone.text()


def test_the_browser_is_debians_and_nothing_is_downloaded() -> None:
    """Debian's chromedriver and chromium, found by path: Selenium Manager (which would download
    a driver or a browser) is never run, since a session starts with it replaced by a failure."""
    _require_browser()
    b = Browser()
    try:
        version = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.split()[1]
        assert b.driver.capabilities["browserVersion"] == version
        driver = b.driver.capabilities["chrome"]["chromedriverVersion"].split()[0]
        assert driver == version, (driver, version)
    finally:
        b.close()
