#!/usr/bin/env bash
# Installs what gated needs on Debian 12 / Raspberry Pi OS (Bookworm): the system
# packages (as root; otherwise it says exactly what to apt-get) and a virtualenv in
# .venv with gated and its development tools. Safe to run again: it only does
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: the venv; libzbar0: pyzbar's QR decoder; sqlite3: to look into the ledger;
# alsa-utils: aplay for the voice prompts; mosquitto: the broker the MQTT tests start;
# chromium + fonts-wqy-microhei: the status screen's browser tests (zh-CN glyphs);
# systemd: systemd-analyze for the unit tests. (espeak-ng and sox are needed only to
# regenerate the prompt sounds with scripts/make_sounds.sh.)
APT_PACKAGES=(python3 python3-venv libzbar0 sqlite3 alsa-utils mosquitto chromium fonts-wqy-microhei systemd ${GATED_EXTRA_APT:-})

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
fi
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing system packages; run this once, then try again:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.gated-setup
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing gated and its Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    echo "$want" >"$stamp"
fi
