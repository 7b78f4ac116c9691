#!/bin/sh
# Regenerate fsguard's own recording notice, fsguard/sounds/consent-en.wav: the default
# recording.consent_prompt ("fsguard:consent-en.wav"), so that out of the box a call that must
# hear a notice hears one and is recorded. 8 kHz, mono, 16-bit PCM: the rate of a G.711 call,
# so FreeSWITCH plays it without resampling.
#
# Needs Debian's espeak-ng (the voice) and sox (to 8 kHz mono): apt-get install espeak-ng sox
# Run from the repository's root: sh scripts/make-consent-prompt.sh
set -eu
TEXT="This call may be recorded."
OUT=fsguard/sounds/consent-en.wav
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 150 -w "$tmp/voice.wav" "$TEXT"
# a short lead-in so the first word is not clipped when media starts, and a short tail
sox "$tmp/voice.wav" -r 8000 -c 1 -b 16 -e signed-integer "$OUT" pad 0.2 0.3 norm -3
echo "$OUT: $(soxi -D "$OUT") s, $(soxi -r "$OUT") Hz, $(soxi -c "$OUT") channel(s)"
