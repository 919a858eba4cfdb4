#!/usr/bin/env bash
# System packages that edge-agent's build, tests and demo need (Debian/Ubuntu).
# Quick when everything is present (dpkg-query only); `apt-get update` only when installing.
# As root: installs what is missing, non-interactively. Otherwise: prints what is missing
# and exits 0 (tests needing those packages will skip or fail on their own).
set -euo pipefail

PACKAGES=(
    ffmpeg
    mosquitto mosquitto-clients
    portaudio19-dev
    fonts-noto-cjk
    pulseaudio libasound2-plugins
    gir1.2-gst-rtsp-server-1.0 python3-gi python3-gst-1.0
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    faketime
    chromium chromium-driver
    systemd
    iproute2
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps: not a Debian system (no dpkg-query); install by hand: ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} system packages present"
    exit 0
fi

echo "install-deps: missing: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: not root; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get update -q
apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
