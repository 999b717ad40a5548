#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium (tests/test_report.py renders
# the HTML report with it: screenshot and DOM). Idempotent. As root it installs the `chromium`
# package with apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "Chromium: $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
  exit 0
fi

cmd="apt-get install -y --no-install-recommends chromium"
if [ "$(id -u)" -ne 0 ]; then
  echo "paynorm needs: sudo $cmd" >&2
  exit 1
fi

echo "installing chromium ($CHROMIUM missing)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null

[ -x "$CHROMIUM" ] || { echo "chromium installed but $CHROMIUM is missing" >&2; exit 1; }
echo "Chromium: $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
