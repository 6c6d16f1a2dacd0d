"""The status screen in a real browser: Debian's Chromium, headless, driven by Playwright.

A :class:`Screen` is one tab on a gate's screen that records every verdict its banner
shows (``RECORD``), checks the page with axe-core (``tests/vendor/``) and keeps
screenshots in ``test-artifacts/``. Where Playwright or Chromium are missing a test is
skipped, except under ``CI=true`` or ``GATED_REQUIRE_BROWSER=1``, where it fails.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.gate_process import GateProcess
from tests.support.status_gate import PIN_G01

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # need_browser says what is missing
    expect = sync_playwright = None

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
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
#: Deque's axe-core from npm (tests/vendor/README.md says which, and where from).
AXE = REPO / "tests" / "vendor" / "axe-core-4.14.1.min.js"
#: The rules of WCAG 2.0 and 2.1, levels A and AA (docs/contracts.md §8).
WCAG21AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WAIT_MS = 20_000
START = 4.0  # scenario seconds before the first arrival: time to open the page

#: Every verdict the banner shows, in order, as [decision, seq] pairs.
RECORD = """
window.gatedVerdicts = [];
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("verdict");
  new MutationObserver(() => {
    const last = window.gatedVerdicts[window.gatedVerdicts.length - 1];
    const now = [box.dataset.decision, box.dataset.seq];
    if (now[0] && (!last || last[1] !== now[1])) window.gatedVerdicts.push(now);
  }).observe(box, { attributes: true, attributeFilter: ["data-decision", "data-seq"] });
});
"""


def browser_required() -> bool:
    """Whether a missing browser is a failure (CI, or asked for) rather than a skip."""
    ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    return ci or os.environ.get("GATED_REQUIRE_BROWSER") == "1"


def need_browser() -> None:
    """Skip the test without Playwright or Chromium (under CI=true or GATED_REQUIRE_BROWSER=1,
    fail it)."""
    problem = None
    if sync_playwright is None:
        problem = "Playwright is not installed (scripts/setup.sh installs the dev extra)"
    elif not Path(CHROMIUM).exists():
        problem = f"Debian's chromium is not at {CHROMIUM} (scripts/setup.sh installs it)"
    if problem is not None:
        if browser_required():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


def accessible(page: Any, what: str) -> None:
    """Fail on any serious or critical WCAG 2.1 A/AA violation axe-core finds on the
    page as it is now, naming each rule, its impact and the elements that break it."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text())  # from the test, past the page's CSP
    result = page.evaluate(
        "tags => axe.run(document, { runOnly: { type: 'tag', values: tags },"
        " resultTypes: ['violations'] })",
        WCAG21AA,
    )
    problems = [
        f"{v['id']} ({v['impact']}, {v['help']}): "
        + ", ".join(" ".join(n["target"]) for n in v["nodes"])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not problems, (
        f"{what} in {page.evaluate('document.documentElement.lang')}:\n" + "\n".join(problems)
    )


class Screen:
    """One browser tab on the gate's screen, failing the test on any script error."""

    def __init__(
        self,
        browser: Any,
        gate: GateProcess,
        width: int = 1024,
        height: int = 600,
        lang: str | None = None,
        timezone: str | None = None,
        wait_link: bool = True,
    ):
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, timezone_id=timezone
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.set_default_timeout(WAIT_MS)
        self.page.add_init_script(RECORD)
        if lang is not None:
            self.page.add_init_script(f"localStorage.setItem('gated.lang', {lang!r})")
        self.page.goto(gate.base + "/")
        if wait_link:
            self.page.wait_for_selector("body[data-link=up]")

    def verdict(self, decision: str) -> Any:
        return self.page.wait_for_selector(f"#verdict[data-decision={decision}]")

    def shown(self) -> list[str]:
        """The verdicts the banner has shown so far, in order."""
        return [d for d, _ in self.page.evaluate("window.gatedVerdicts")]

    def login(self, guard: str = "G01", pin: str = PIN_G01) -> None:
        self.page.click("#loginbtn")
        self.page.fill("#guard", guard)
        self.page.fill("#pin", pin)
        self.page.click("#loginok")
        self.page.wait_for_selector("#guardbox:not([hidden])")

    def in_view(self, selector: str) -> bool:
        """Whether every element ``selector`` matches is inside the viewport, unscrolled."""
        return bool(
            self.page.eval_on_selector_all(
                selector,
                """els => els.length > 0 && els.every(e => {
                    const r = e.getBoundingClientRect();
                    return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight
                        && r.right <= innerWidth && r.height > 0;
                }) && scrollY === 0""",
            )
        )

    def accessible(self, what: str) -> None:
        """Fail on any serious or critical WCAG 2.1 A/AA violation (:func:`accessible`)."""
        accessible(self.page, what)

    def cut_off(self) -> list[str]:
        """The lines of the verdict card that are not wholly inside the card and the viewport."""
        return list(
            self.page.evaluate(
                """(() => {
                    const card = document.getElementById("verdict").getBoundingClientRect();
                    return [...document.querySelectorAll("#verdict > *")].filter(e => {
                        const r = e.getBoundingClientRect();
                        return r.height > 0 && (r.top < card.top - 0.5
                            || r.bottom > card.bottom + 0.5 || r.left < card.left - 0.5
                            || r.right > card.right + 0.5
                            || r.bottom > innerHeight || r.right > innerWidth);
                    }).map(e => e.id || e.className);
                })()"""
            )
        )

    def until(self, expression: str, what: str) -> None:
        """Wait until a script expression holds (the page's CSP forbids the eval that
        ``wait_for_function`` polls with)."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while not self.page.evaluate(expression):
            assert time.monotonic() < deadline, f"{what} did not happen"
            self.page.wait_for_timeout(50)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors
