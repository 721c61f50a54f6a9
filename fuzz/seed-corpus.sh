#!/usr/bin/env bash
# Seeds fuzz/corpus/<target> with valid inputs. Usage: fuzz/seed-corpus.sh [target...]
# (all three targets by default). See fuzz/README.md.
#
# frame_decoder: the valid frames in fuzz/seeds/ and the checked-in malformed frames in
# comm/tests/frames/, each of those once as a raw stream (control byte 0x00: read in chunks
# of 1 byte) and once in "authentic" mode (control byte 0x01: the bytes between prefix and
# tag, which the target re-seals).
#
# payload_decoder, checkpoint_manifest: the targets write their own seeds, made with the
# real encoders, when MERIDIAN_FUZZ_WRITE_SEEDS names a folder (then they exit without
# fuzzing). They link LibTorch: source scripts/env.sh first; LD_LIBRARY_PATH is set here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decoder payload_decoder checkpoint_manifest)

for target in "${targets[@]}"; do
    out="$here/corpus/$target"
    mkdir -p "$out"
    case "$target" in
    frame_decoder)
        cp "$here"/seeds/* "$out"/
        for f in "$here"/../comm/tests/frames/*.bin; do
            name="$(basename "$f" .bin)"
            { printf '\x00'; cat "$f"; } >"$out/raw-$name"
            size=$(stat -c %s "$f")
            if [ "$size" -ge 20 ]; then
                { printf '\x01'; tail -c +5 "$f" | head -c $((size - 4 - 16)); } >"$out/auth-$name"
            fi
        done
        ;;
    payload_decoder | checkpoint_manifest)
        torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
        (cd "$here" && LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            MERIDIAN_FUZZ_WRITE_SEEDS="$out" \
            cargo +nightly fuzz run --features torch "$target" "$out" -- -runs=0)
        ;;
    *)
        echo "unknown target $target" >&2
        exit 2
        ;;
    esac
    echo "seeded $(ls "$out" | wc -l) inputs into $out"
done
