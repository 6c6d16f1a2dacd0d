"""A stand-in for ``aplay`` that logs what it was asked to play (the prompter's tests)."""

from __future__ import annotations

FAKE_APLAY = """#!/bin/sh
# A stand-in for aplay: logs start/end/killed with its arguments, plays for
# $FAKE_APLAY_S seconds, fails when the file is named in $FAKE_APLAY_FAIL,
# pauses $FAKE_APLAY_PAUSE_S seconds right after logging "start".
log="$FAKE_APLAY_LOG"
for last; do :; done
name=$(basename "$last" .wav)
# The TERM trap is set before "start" is logged: a test that sees "start" may
# have the prompter send SIGTERM at once, and a TERM that came before the trap
# ended the shell unlogged (no "killed" line: the flaky order test). $! is the
# sleep once it runs, empty (nothing to kill) before.
trap 'kill $! 2>/dev/null; echo "killed $name" >> "$log"; exit 143' TERM
echo "start $name $*" >> "$log"
sleep "${FAKE_APLAY_PAUSE_S:-0}"
case " $FAKE_APLAY_FAIL " in *" $name "*)
    echo "aplay: main:831: audio open error: Device or resource busy" >&2; exit 1;;
esac
sleep "${FAKE_APLAY_S:-0.05}" &
wait $!
echo "end $name" >> "$log"
"""
