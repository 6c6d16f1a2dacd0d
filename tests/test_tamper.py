"""A tamper from end to end: a scenario's ``tamper`` input, the alarm as metrics count it,
and its banner on the status screen of a real daemon in a real browser."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.sim import ScenarioError, SimTurnstile, parse_scenario
from gated.status.metrics import GateMetrics
from tests.support.gate_process import GateProcess
from tests.support.rig import Rig
from tests.support.screen import START, Screen


def test_a_scenario_plays_tamper_on_the_simulated_turnstile():
    (opened, closed) = parse_scenario('{"t": 1, "tamper": true}\n{"t": 2, "tamper": false}\n')
    assert (opened.key, opened.value, closed.value) == ("tamper", True, False)
    assert "tamper" in SimTurnstile.KEYS
    with pytest.raises(ScenarioError, match="tamper: wrong type"):
        parse_scenario('{"t": 1, "tamper": "yes"}')


def test_a_tamper_alarm_is_counted_like_any_alarm(rig: Rig) -> None:
    metrics = GateMetrics(lambda: 0.0, lambda: None)
    rig.controller.observers.append(metrics.event)
    rig.feed("tamper", True)
    text = metrics.render().decode()
    assert 'gated_alarms_total{alarm="tamper"} 1.0' in text
    assert 'gated_events_total{kind="alarm"} 1.0' in text


def test_the_screen_shows_a_tamper_in_the_alarm_banner(browser: Any, gate: GateProcess) -> None:
    gate.play([{"t": START, "tamper": True}, {"t": START + 1, "tamper": False}])
    gate.start()
    screen = Screen(browser, gate)
    page = screen.page
    bar = page.wait_for_selector("#alarmbar:not([hidden])")
    assert "被拆动" in bar.inner_text()  # zh-CN by default
    alarm = gate.wait_event(lambda e: e.get("alarm") == "tamper", "the tamper alarm")
    assert alarm["detail"] == "turnstile enclosure opened"
    clear = gate.wait_event(lambda e: e.get("ref") == alarm["id"], "the tamper's clear")
    assert (clear["kind"], clear["detail"]) == ("device", "tamper cleared")
    page.click("#lang")
    page.wait_for_selector("#alarmbar:has-text('Tamper')")  # open until a guard acknowledges
    # The event list names where the tamper was, and its clear.
    page.wait_for_selector("#events li:has-text('Tamper · Turnstile')")
    page.wait_for_selector("#events li:has-text('Turnstile: ok · tamper cleared')")
    screen.shot("alarm-tamper-en")
    screen.close()
