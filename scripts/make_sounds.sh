#!/usr/bin/env bash
# Generates the voice prompts with espeak-ng: sounds/zh-CN/*.wav and sounds/en/*.wav,
# one file per prompt (drivers.common.base.Prompter.PROMPTS), 16 kHz mono 16-bit with the
# silence trimmed, so the whole set stays small enough to commit.
# Needs: apt-get install espeak-ng sox.   Usage: scripts/make_sounds.sh [OUT_DIR]
# To record your own, see docs/wiring.md, "Voice prompts".
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-sounds}

for tool in espeak-ng sox; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make_sounds: $tool is missing; run: sudo apt-get install -y espeak-ng sox" >&2
        exit 1
    fi
done

# prompt|zh-CN text|English text, in Prompter.PROMPTS order (the DFPlayer track order).
PROMPTS='welcome|您好，欢迎。|Hello, welcome.
show_pass|请刷卡或出示通行码。|Please show your card or pass.
measure_temp|请测量体温。|Please measure your temperature.
remeasure|请重新测量体温。|Please measure your temperature again.
granted|验证通过，请通行。|Access granted. Please go through.
denied|禁止通行。|Access denied.
fever|体温异常，请联系工作人员。|Your temperature is too high. Please contact the staff.
wait_guard|请稍候，等待值班人员确认。|Please wait for the guard.
not_registered|您尚未登记，请联系物业。|You are not registered. Please contact the management office.'

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { # voice text out.wav
    espeak-ng -v "$1" -s 170 -w "$tmp/raw.wav" "$2"
    # 16 kHz mono 16-bit; trim leading and trailing silence, keep 50 ms of it at the end.
    sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$3" \
        silence 1 0.02 1% reverse silence 1 0.02 1% reverse pad 0 0.05
}

mkdir -p "$out/zh-CN" "$out/en"
while IFS='|' read -r name zh en; do
    say cmn-latn-pinyin "$zh" "$out/zh-CN/$name.wav"
    say en-us "$en" "$out/en/$name.wav"
done <<<"$PROMPTS"

du -sh "$out" >&2
