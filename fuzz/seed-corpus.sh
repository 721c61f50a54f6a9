#!/usr/bin/env bash
# Seeds fuzz/corpus/frame_decoder from the valid frames in fuzz/seeds/ and from the checked-in
# malformed frames in comm/tests/frames/: each of those once as a raw stream (control byte
# 0x00: read in chunks of 1 byte) and once in "authentic" mode (control byte 0x01: the bytes
# between prefix and tag, which the target re-seals). See fuzz/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/corpus/frame_decoder"
mkdir -p "$out"
cp "$here"/seeds/* "$out"/
for f in "$here"/../comm/tests/frames/*.bin; do
    name="$(basename "$f" .bin)"
    { printf '\x00'; cat "$f"; } >"$out/raw-$name"
    size=$(stat -c %s "$f")
    if [ "$size" -ge 20 ]; then
        { printf '\x01'; tail -c +5 "$f" | head -c $((size - 4 - 16)); } >"$out/auth-$name"
    fi
done
echo "seeded $(ls "$out" | wc -l) inputs into $out"
