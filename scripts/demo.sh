#!/usr/bin/env bash
# Sets everything up, then runs the gate on simulated hardware with the built-in
# scenario (no broker, no hardware, no config). Extra arguments go to `gated demo`
# (e.g. --exit-when-done, --speed 4; --hub: a broker, two gates and a hub).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gated demo "$@"
