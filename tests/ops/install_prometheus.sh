#!/usr/bin/env bash
# Puts Debian's promtool and prometheus under $1 (default .venv/ops) without installing the package: installing
# it would start a system Prometheus service; the tests and drills run their own on free ports.
# Uses promtool/prometheus from PATH when both are already there.
set -euo pipefail
dest="${1:-.venv/ops}"
if [ -x "$dest/usr/bin/promtool" ] && [ -x "$dest/usr/bin/prometheus" ]; then exit 0; fi
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  mkdir -p "$dest/usr/bin"
  ln -sf "$(command -v promtool)" "$dest/usr/bin/promtool"
  ln -sf "$(command -v prometheus)" "$dest/usr/bin/prometheus"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt's sandbox user writes the download here
if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$work" && apt-get download prometheus)
fi
mkdir -p "$dest"
dpkg-deb -x "$work"/prometheus_*.deb "$dest"
"$dest/usr/bin/promtool" --version | head -n 1
