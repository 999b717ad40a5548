#!/usr/bin/env bash
# make demo: the whole job on the embedded default (a local cluster under .paynorm/). Re-runnable.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
$BIN/paynorm dev up >/dev/null
# shellcheck disable=SC1091
source .paynorm/env
echo "== lake: the brief's sample records (plus generated ones) =="
$BIN/paynorm dev seed --count "${DEMO_RECORDS:-2000}"
echo "== replicate: snapshot + stream into the warehouse, exactly once =="
$BIN/paynorm replicate --once
echo "== status =="
$BIN/paynorm status
echo "== transform: mapping rules compiled to SQL by dbt, marts built =="
$BIN/paynorm transform
echo "== summary =="
$BIN/paynorm summary
echo
echo "Connect: psql \"\$DATABASE_URL\"  (after: source .paynorm/env)"
echo "         select * from paynorm_marts.payment_kpis_daily order by day desc limit 20;"
