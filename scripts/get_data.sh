#!/usr/bin/env bash
# Prints the path of a training corpus, finding one in this order:
#   1. the path given as the first argument;
#   2. ../shared/data/tinyshakespeare.txt beside the repository;
#   3. data/cache/tinyshakespeare.txt (an earlier download);
#   4. a download of tinyshakespeare, kept only if its sha256 matches;
#   5. an English corpus from Debian's fortunes package (installed if needed), saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
readonly sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
readonly url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
readonly cache="data/cache/tinyshakespeare.txt"

if [ $# -ge 1 ] && [ -n "$1" ]; then
  [ -r "$1" ] || { echo "get_data: cannot read corpus '$1'" >&2; exit 1; }
  echo "$1"; exit 0
fi
for candidate in ../shared/data/tinyshakespeare.txt "$cache"; do
  if [ -r "$candidate" ]; then echo "$candidate"; exit 0; fi
done
mkdir -p data/cache
if command -v curl > /dev/null && curl -fsSL --max-time 30 "$url" -o "$cache.part" 2> /dev/null; then
  if echo "$sha256  $cache.part" | sha256sum --check --status; then
    mv "$cache.part" "$cache"; echo "$cache"; exit 0
  fi
  echo "get_data: downloaded tinyshakespeare has the wrong checksum; not using it" >&2
fi
rm -f "$cache.part"
echo "get_data: tinyshakespeare is not available offline; using Debian's fortunes corpus instead" >&2
if [ ! -d /usr/share/games/fortunes ]; then
  sudo_cmd=(); [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq fortunes >&2
fi
find -L /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' -exec cat {} + | grep -v '^%$' > data/cache/fortunes.txt
echo data/cache/fortunes.txt
