#!/usr/bin/env bash
# Make sure a virtual X server and the Qt/OpenGL libraries napari needs are present (Debian/Ubuntu).
# Does nothing when they already are; uses sudo when not run as root.
set -euo pipefail
packages=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libfontconfig1 libdbus-1-3)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && command -v xvfb-run >/dev/null && exit 0
if ! command -v apt-get >/dev/null; then
  echo "ensure-xvfb: no apt-get here; install Xvfb and the xcb libraries with your package manager" >&2
  exit 1
fi
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
