"""``drivers/`` never imports ``gated/``: the daemon depends on the drivers, not back.

The drivers' config models live in their modules and the types they share in
``drivers/common/options.py`` for this reason; ``gated.config`` imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

DRIVERS = Path(__file__).resolve().parent.parent / "drivers"


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names += [a.value for a in node.args if isinstance(a, ast.Constant)]
    return names


def test_no_driver_module_imports_gated():
    files = sorted(DRIVERS.rglob("*.py"))
    assert len(files) > 10
    offenders = [
        f"{path.relative_to(DRIVERS.parent)}: {name}"
        for path in files
        for name in imported_modules(path)
        if name == "gated" or name.startswith("gated.")
    ]
    assert offenders == []


def test_every_registered_driver_names_its_config_model():
    from drivers import DRIVERS as REGISTRY
    from drivers import driver_class
    from gated.config import DRIVER_MODELS

    for section, name in REGISTRY:
        model = driver_class(section, name).config_model
        assert model in DRIVER_MODELS, (section, name)
        assert model.model_fields["driver"].default == name, (section, name)
