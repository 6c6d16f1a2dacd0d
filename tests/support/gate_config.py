"""Config files for a gate the tests start as a ``gated run`` process, and its scenario.

The base is a gate whose card reader, thermometer, turnstile and prompter are the sim
drivers, playing ``scenario.jsonl`` (``[sim]``), with no status screen and its ledger in
``gated.db``; a test merges the sections it needs over it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``sections`` as TOML: one table each, a nested mapping as its sub-table.

    Values are strings, numbers, booleans or lists of them, which JSON writes as TOML does.
    """
    out: list[str] = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, Mapping)]
        out.append("")
        subs = {f"{name}.{k}": v for k, v in table.items() if isinstance(v, Mapping)}
        if subs:
            out.append(toml_text(subs))
    return "\n".join(out)


def write_scenario(path: Path, lines: Sequence[Mapping[str, Any]]) -> Path:
    """The sim drivers' scenario: one JSON object a line, ``t`` in seconds from the start."""
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_sim_gate(
    tmp_path: Path, lines: Sequence[Mapping[str, Any]] = (), **sections: Any
) -> Path:
    """Write ``tmp_path/scenario.jsonl`` with ``lines`` and ``tmp_path/gated.toml``, the sim
    gate that plays it with ``sections`` merged over it; the config's path."""
    scenario = write_scenario(tmp_path / "scenario.jsonl", lines)
    base: dict[str, Any] = {
        "gate": {"id": "g1", "site": "s1"},
        "storage": {"path": str(tmp_path / "gated.db")},
        "status": {"listen": ""},
        "card": {"driver": "sim"},
        "thermometer": {"driver": "sim"},
        "turnstile": {"driver": "sim"},
        "prompter": {"driver": "sim"},
        "sim": {"scenario": str(scenario)},
    }
    config = tmp_path / "gated.toml"
    config.write_text(toml_text(deep_merge(base, sections)))
    return config
