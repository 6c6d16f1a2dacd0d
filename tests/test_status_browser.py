"""The status screen in a real browser: Debian's Chromium, headless, driven by Playwright.

The gate runs in this process on sim drivers (see ``tests/test_status_api.py``);
readings go into its controller's queue as a driver's ``emit`` puts them. Screenshots
are kept in ``test-artifacts/``; ``GATED_SCREENSHOT=1`` also writes the README's
``docs/screenshot.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_status_api import PIN_G01, Gate, wait_until

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
WAIT_MS = 20_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/setup.sh)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Screen:
    """One browser tab on the gate's screen, failing the test on any script error."""

    def __init__(self, browser: Any, gate: Gate, width: int = 1024, height: int = 600):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(gate.base + "/")
        self.page.wait_for_selector("body[data-link=up]")

    def verdict(self, decision: str) -> Any:
        return self.page.wait_for_selector(f"#verdict[data-decision={decision}]")

    def login(self, guard: str = "G01", pin: str = PIN_G01) -> None:
        self.page.click("#loginbtn")
        self.page.fill("#guard", guard)
        self.page.fill("#pin", pin)
        self.page.click("#loginok")
        self.page.wait_for_selector("#guardbox:not([hidden])")

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.stop()


def test_the_verdict_banner_follows_the_arrivals(browser: Any, gate: Gate) -> None:
    screen = Screen(browser, gate)
    page = screen.page
    assert page.inner_text("#v-word") == "等待下一位"  # zh-CN by default
    gate.arrive(36.5, "0A1B2C3D4E")
    screen.verdict("granted")
    assert page.inner_text("#v-word") == "通行"
    assert "Z**** W**" in page.inner_text("#v-name")
    assert page.inner_text("#v-temp") == "36.5\xa0°C"
    screen.shot("verdict-granted-zh")
    gate.put("passage")
    gate.arrive(38.4, None)
    gate.put("temp", 38.3)
    gate.put("card", "0A1B2C3D4E")
    screen.verdict("denied")
    assert "体温异常（发热）" in page.inner_text("#v-reasons")
    color = page.eval_on_selector("#verdict", "e => getComputedStyle(e).backgroundColor")
    assert color == "rgb(211, 47, 47)"
    page.click("#lang")
    page.wait_for_function("document.documentElement.lang === 'en'")
    assert page.inner_text("#v-word") == "DENIED"
    assert "Fever" in page.inner_text("#v-reasons")
    page.wait_for_function("document.querySelector('[data-counter=fever] b').textContent === '1'")
    assert page.inner_text("[data-counter=in] b") == "1"
    assert page.locator("#events li").count() >= 4
    # No personal data beyond the masked name reaches the page.
    content = page.content()
    assert "Zhang Wei" not in content and "320623199001011234" not in content
    screen.shot("verdict-denied-en")
    screen.close()


def test_a_guard_approves_a_pending_verdict_with_a_click(browser: Any, gate: Gate) -> None:
    screen = Screen(browser, gate)
    page = screen.page
    screen.login()
    gate.wait_event(lambda e: e["kind"] == "guard_on" and e["guard"] == "G01", "guard_on")
    page.wait_for_selector("#duty:has-text('G01')")
    gate.arrive(36.7, "1122334455")
    screen.verdict("needs_guard")
    card = page.wait_for_selector(".pend")
    event_id = card.get_attribute("data-event")
    screen.shot("pending-decision")
    page.click(f".pend[data-event='{event_id}'] .approve")
    done = gate.wait_event(lambda e: e.get("decision") == "guard_granted", "the guard's grant")
    assert done["ref"] == event_id and done["guard"] == "G01"
    screen.verdict("guard_granted")
    page.wait_for_selector("#pending .empty")
    page.wait_for_selector("#events li.guard_granted")
    # The guard changes the mode and logs out: both are ledger events with the guard's id.
    page.click("#modes [data-mode=guard_only]")
    gate.wait_event(lambda e: e["kind"] == "mode" and e["by"] == "G01", "the mode change")
    page.wait_for_selector("#mode.guard_only")
    page.click("#loginbtn")
    gate.wait_event(lambda e: e["kind"] == "guard_off" and e["guard"] == "G01", "guard_off")
    page.wait_for_selector("#guardbox[hidden]", state="attached")
    screen.close()


def test_a_wrong_pin_is_told_and_a_temperature_needs_a_clinical_reading(
    browser: Any, gate: Gate
) -> None:
    screen = Screen(browser, gate, width=390, height=844)  # a phone
    page = screen.page
    page.click("#loginbtn")
    page.fill("#guard", "G01")
    page.fill("#pin", "0000")
    page.click("#loginok")
    page.wait_for_selector("#loginerr:has-text('密码错误')")
    page.fill("#pin", PIN_G01)
    page.click("#loginok")
    page.wait_for_selector("#guardbox:not([hidden])")
    page.click("#modes [data-mode=guard_only]")
    gate.wait_event(lambda e: e["kind"] == "mode", "the mode change")
    gate.put("card", "0A1B2C3D4E")  # no temperature: after the timeout, the guard decides
    page.wait_for_selector(".pend .confirm")
    page.fill(".pend .confirm", "36.9")
    screen.shot("phone-confirm-temperature")
    page.click(".pend .approve")
    done = gate.wait_event(lambda e: e.get("decision") == "guard_granted", "the grant")
    assert done["confirm_temp_c"] == 36.9
    screen.close()


def test_an_alarm_blinks_and_sounds_until_acknowledged(browser: Any, gate: Gate) -> None:
    booth = Screen(browser, gate)
    phone = Screen(browser, gate, width=390, height=844)
    booth.login()
    gate.put("passage")  # nobody was granted: tailgating
    bar = booth.page.wait_for_selector("#alarmbar:not([hidden])")
    assert "Tailgating" in bar.inner_text() or "尾随通过" in bar.inner_text()
    animation = booth.page.eval_on_selector("#alarmbar", "e => getComputedStyle(e).animationName")
    assert animation == "blink"
    booth.page.wait_for_function("(window.gatedBeeps || 0) > 0")
    phone.page.wait_for_selector("#alarmbar:not([hidden])")
    booth.shot("alarm-blinking")
    booth.page.click("#ack")
    booth.page.wait_for_selector("#alarmbar", state="hidden")
    phone.page.wait_for_selector("#alarmbar", state="hidden")  # every screen hears of it
    beeps = booth.page.evaluate("window.gatedBeeps")
    booth.page.wait_for_timeout(2500)
    assert booth.page.evaluate("window.gatedBeeps") == beeps  # silent once acknowledged
    booth.close()
    phone.close()


def test_the_page_recovers_after_a_daemon_restart(browser: Any, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    screen = Screen(browser, gate)
    page = screen.page
    gate.arrive(36.4, "0A1B2C3D4E")
    screen.verdict("granted")
    gate.stop()
    page.wait_for_selector("#linkbar:not([hidden])")
    assert page.get_attribute("body", "data-link") == "down"
    screen.shot("link-lost")
    gate = Gate(tmp_path, port=gate.port)
    try:
        page.wait_for_selector("body[data-link=up]")
        page.wait_for_selector("#linkbar", state="hidden")
        gate.arrive(36.6, "1122334455")
        screen.verdict("needs_guard")
        assert page.locator("#events li").count() >= 2  # the ledger from before the restart
        screen.close()
    finally:
        gate.stop()


def test_a_night_shift_screenshot(browser: Any, gate: Gate) -> None:
    """The README's picture: a guard on duty, a day's traffic, a decision waiting."""
    for temp, card in ((36.5, "0A1B2C3D4E"), (36.8, "0A1B2C3D4E"), (36.3, "FF00FF00FF")):
        gate.arrive(temp, card)
        gate.put("passage")
    wait_until(lambda: gate.state()["today"]["in"] >= 2, what="the first arrivals")
    screen = Screen(browser, gate)
    page = screen.page
    page.evaluate("localStorage.setItem('gated.lang', 'en')")
    page.reload()
    page.wait_for_selector("body[data-link=up]")
    screen.login()
    gate.arrive(38.1, None)
    gate.put("temp", 38.0)
    gate.put("card", "1122334455")
    screen.verdict("denied")
    gate.arrive(36.6, "1122334455")
    screen.verdict("needs_guard")
    page.wait_for_selector("#alarmbar:not([hidden])")
    page.wait_for_selector(".pend")
    path = screen.shot("status-shift-en")
    page.click("#lang")
    page.wait_for_function("document.documentElement.lang === 'zh-CN'")
    screen.shot("status-shift-zh")
    if os.environ.get("GATED_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(path, REPO / "docs" / "screenshot.png")
    screen.close()
