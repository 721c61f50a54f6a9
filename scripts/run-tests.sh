#!/usr/bin/env bash
# Runs the workspace's tests and closes with one line totalling every test binary's
# results ("tests: N passed, N failed, N skipped"), since cargo's own last line is the
# last crate's doc-tests, which may be empty.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/)  p += $i;
         if ($(i+1) ~ /^failed/)  f += $i;
         if ($(i+1) ~ /^ignored/) s += $i;
       }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
