#!/usr/bin/env bash
# Sets everything up, then runs the linters, the type checker and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k policy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
# setup.sh installed chromium: a browser test that cannot start it fails, never skips.
export GATED_REQUIRE_BROWSER=1
exec .venv/bin/pytest -q "$@"
