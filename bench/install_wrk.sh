#!/usr/bin/env bash
# Puts Debian's wrk (and the LuaJIT library it links) under $1 (default .venv/bench) without root, and a
# launcher at $1/bin/wrk that finds the library. bench/http_pipeline.py looks there when wrk is not on PATH.
# Does nothing when wrk is already on PATH or unpacked.
set -euo pipefail
dest="${1:-.venv/bench}"
if command -v wrk >/dev/null || [ -x "$dest/bin/wrk" ]; then exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt's sandbox user writes the download here
packages=(wrk libluajit-5.1-2 libluajit-5.1-common)
if ! (cd "$work" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$work" && apt-get download "${packages[@]}")
fi
mkdir -p "$dest/root" "$dest/bin"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$dest/root"; done
root="$(cd "$dest/root" && pwd)"
lib="$(dirname "$(find "$root" -name 'libluajit-5.1.so.2' | head -n 1)")"
cat > "$dest/bin/wrk" <<LAUNCHER
#!/bin/sh
LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/usr/bin/wrk" "\$@"
LAUNCHER
chmod +x "$dest/bin/wrk"
"$dest/bin/wrk" --version 2>&1 | head -n 1 || true
