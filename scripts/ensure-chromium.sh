#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (never a browser a tool downloads itself), with a CJK font
# so screenshots of the Chinese UI are legible.
set -euo pipefail
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || packages+=(fonts-wqy-microhei)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing from Debian: ${packages[*]}…"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
/usr/bin/chromium --version
