#!/usr/bin/env bash
# Runs the workspace's tests, then the Python package's pytest suite, then a short
# real-process soak (scripts/soak.py), and closes with one line totalling every result
# ("tests: N passed, N failed, N skipped"), since cargo's own last line is the last crate's
# doc-tests, which may be empty. pytest fails a run that collects no tests (its exit
# status 5), so a broken collection cannot pass. The soak counts as one check.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The package as this checkout built it (scripts/setup-python.sh), whatever else the
# shared venv has installed.
PYTHONPATH=$root/python "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$root/python/tests" 2>&1 | tee "$pylog"
pystatus=${PIPESTATUS[0]}
# The soak runs the `meridian` binary the cargo run above built (the dev profile unless it
# was given --release) under the target folder cargo used: a coordinator and four workers
# behind WAN proxies, SIGKILLed and restarted from a fixed seed for 25 s, then checked for
# lost rounds and diverged replicas (about a minute on two cores).
target=${CARGO_TARGET_DIR:-$root/target}
[[ $target == /* ]] || target=$PWD/$target
profile=debug
for arg in "$@"; do [ "$arg" = --release ] && profile=release; done
"$root/.venv/bin/python" "$root/scripts/soak.py" --duration 25 --rounds 24 --seed 14 \
  --bin "$target/$profile/meridian" --out "$root/out/soak" 2>&1
soakstatus=$?
if [ "$soakstatus" -eq 0 ]; then sp=1 sf=0; else sp=0 sf=1; fi
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/)  p += $i;
         if ($(i+1) ~ /^failed/)  f += $i;
         if ($(i+1) ~ /^ignored/) s += $i;
       }
     }
     END { printf "%d %d %d\n", p, f, s }' "$log" >"$log.cargo"
# pytest's last line: "12 passed, 1 skipped in 3.4s" (or "... failed", "... error").
awk 'END {
       for (i = 1; i <= NF; i++) {
         w = $(i+1); gsub(/[^a-z]/, "", w);
         if (w == "passed") p += $i;
         if (w == "failed" || w == "error" || w == "errors") f += $i;
         if (w == "skipped") s += $i;
       }
       printf "%d %d %d\n", p, f, s
     }' "$pylog" >"$pylog.py"
read -r cp cf cs <"$log.cargo"
read -r pp pf ps <"$pylog.py"
rm -f "$log.cargo" "$pylog.py"
echo "tests: $((cp + pp + sp)) passed, $((cf + pf + sf)) failed, $((cs + ps)) skipped (cargo $cp/$cf/$cs, pytest $pp/$pf/$ps, soak $sp/$sf/0)"
[ "$status" -eq 0 ] && [ "$pystatus" -eq 0 ] && [ "$soakstatus" -eq 0 ]
