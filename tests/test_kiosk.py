"""The booth kiosk of docs/install.md: with its Chromium flags, an alarm sounds untouched.

Nobody taps the booth screen after a power cut. The guide's ``ExecStart`` is read out
of docs/install.md and its flags are given to Debian's Chromium (headless, driven by
Playwright) against a gate running in this process; the page is never clicked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.screen import CHROMIUM, need_browser
from tests.support.status_gate import Gate

try:
    from playwright import sync_api as playwright
except ImportError:  # pragma: no cover - the dev extra is not installed
    playwright = None

INSTALL = Path(__file__).resolve().parent.parent / "docs" / "install.md"
# Records each AudioContext the page makes, and its states, before the page's own script.
WATCH_AUDIO = """
window.audioStates = [];
const Native = window.AudioContext;
window.AudioContext = class extends Native {
  constructor(...args) {
    super(...args);
    window.audioStates.push(this.state);
    this.addEventListener("statechange", () => window.audioStates.push(this.state));
  }
};
"""
HEADLESS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(autouse=True)
def _browser_present() -> None:
    """Skip without Playwright or Chromium; under CI=true or GATED_REQUIRE_BROWSER=1, fail."""
    need_browser()


def kiosk_flags() -> list[str]:
    """The Chromium flags of the guide's gated-kiosk.service, but for ``--kiosk``."""
    unit = re.search(
        r"gated-kiosk\.service >/dev/null <<'EOF'\n(.*?)\nEOF\n", INSTALL.read_text(), re.S
    )
    assert unit
    line = unit.group(1).replace("\\\n", " ").split("ExecStart=")[1].splitlines()[0]
    words = line.split()
    flags = words[words.index("/usr/bin/chromium") + 1 :]
    return [f for f in flags if f.startswith("--") and f != "--kiosk"]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.stop()


def test_an_alarm_sounds_on_a_page_nobody_touched(gate: Gate) -> None:
    flags = kiosk_flags()
    assert "--autoplay-policy=no-user-gesture-required" in flags
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=HEADLESS + flags)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(20_000)
            page.add_init_script(WATCH_AUDIO)
            page.goto(gate.base + "/")
            page.wait_for_selector("body[data-link=up]")
            gate.put("passage")  # nobody was granted: a tailgate alarm
            page.wait_for_selector("#alarmbar:not([hidden])")
            page.wait_for_function("(window.gatedBeeps || 0) > 0")
            assert page.evaluate("window.audioStates").pop() == "running"
            assert page.inner_text("#sound").startswith("♪")
            assert not errors, errors
        finally:
            browser.close()


def test_without_the_flag_the_same_page_stays_silent(gate: Gate) -> None:
    # The control: what the flag changes (Chromium's default needs a gesture).
    flags = [f for f in kiosk_flags() if not f.startswith("--autoplay-policy")]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=HEADLESS + flags)
        try:
            page = browser.new_page()
            page.add_init_script(WATCH_AUDIO)
            page.goto(gate.base + "/")
            page.wait_for_selector("body[data-link=up]")
            gate.put("passage")
            page.wait_for_selector("#alarmbar:not([hidden])")
            # The page made its audio at load; without a gesture it stays suspended,
            # so beep() plays nothing and the sound button says it is off.
            states = page.evaluate("window.audioStates")
            assert states and set(states) == {"suspended"}, states
            assert not page.inner_text("#sound").startswith("♪")
            assert page.evaluate("window.gatedBeeps || 0") == 0
        finally:
            browser.close()
