#!/usr/bin/env bash
# Make sure PostgreSQL server binaries and the matching wal2json are installed. Idempotent.
# As root it installs what is missing with apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

find_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else
    echo "paynorm needs: sudo $*" >&2; exit 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then echo "paynorm needs: sudo apt-get install -y $*" >&2; exit 1; fi
  if [ $apt_updated -eq 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

bindir=$(find_bindir)
if [ -z "$bindir" ] || [ ! -x "$bindir/postgres" ]; then
  echo "installing PostgreSQL server (none found under /usr/lib/postgresql)" >&2
  apt_install postgresql postgresql-contrib
  bindir=$(find_bindir)
fi
major=$(basename "$(dirname "$bindir")")
if [ ! -e "/usr/lib/postgresql/$major/lib/wal2json.so" ]; then
  echo "installing wal2json for PostgreSQL $major" >&2
  if ! apt_install "postgresql-$major-wal2json"; then
    # No wal2json build for this major: fall back to the distribution's PostgreSQL and its wal2json.
    echo "postgresql-$major-wal2json unavailable; installing the distribution's PostgreSQL with wal2json" >&2
    apt_install postgresql
    dist=$(find_bindir); dmajor=$(basename "$(dirname "$dist")")
    apt_install "postgresql-$dmajor-wal2json"
    echo "note: set PAYNORM_PG_BINDIR=/usr/lib/postgresql/$dmajor/bin if $major stays the newest" >&2
  fi
fi
echo "PostgreSQL $major with wal2json: $bindir"
