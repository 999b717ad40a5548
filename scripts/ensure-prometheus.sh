#!/usr/bin/env bash
# Make sure `prometheus` and `promtool` are installed (the alert-rule tests and the scrape test run
# them). Idempotent. As root it installs Debian's `prometheus` package with apt-get; otherwise it
# prints the exact command and fails. The package's own service is kept from starting during the
# install (and stopped if it started anyway), so no system Prometheus stays on :9090: the tests start
# their own server on a free port.
set -euo pipefail

have() { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; }

if have; then
  echo "Prometheus: $(prometheus --version 2>&1 | head -n 1)"
  exit 0
fi

cmd="apt-get install -y --no-install-recommends prometheus"
if [ "$(id -u)" -ne 0 ]; then
  echo "paynorm needs: sudo $cmd" >&2
  exit 1
fi

# policy-rc.d exit 101 = "do not start services" for invoke-rc.d and deb-systemd-invoke.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ $own_policy -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo "installing prometheus (promtool missing)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: a service the package started anyway is stopped (systemd host or sysv init).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop prometheus.service 2>/dev/null || true
fi
pidfile=/run/prometheus/prometheus.pid
if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || kill "$(cat "$pidfile")" 2>/dev/null || true
fi

have || { echo "prometheus installed but prometheus/promtool not on PATH" >&2; exit 1; }
echo "Prometheus: $(prometheus --version 2>&1 | head -n 1)"
