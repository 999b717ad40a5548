#!/usr/bin/env bash
# make demo: the whole job on the embedded default (a local cluster under .paynorm/). Re-runnable.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
$BIN/paynorm dev up >/dev/null
# shellcheck disable=SC1091
source .paynorm/env
echo "== lake: the sample records of the original specification, and a generated lake (every built-in shape, unknown shapes, broken payloads) =="
$BIN/paynorm dev seed
$BIN/paynorm demo --generate "${DEMO_RECORDS:-20000}"
echo "== run --once: replicate (snapshot + stream, exactly once) -> dbt -> LLM step -> dbt marts =="
$BIN/paynorm run --once 2> .paynorm/demo-run.log >/dev/null || { tail -40 .paynorm/demo-run.log; exit 1; }
grep -E " consumer\.(sources\.postgres\.(replicate|snapshot|cdc)|pipeline): " .paynorm/demo-run.log \
  | grep -v "stage .*: starting" | sed -E 's/^[^ ]+ INFO //'
echo "== status =="
$BIN/paynorm status
echo "== summary =="
$BIN/paynorm summary
echo "== report: charts and tables of the marts, one self-contained HTML file =="
$BIN/paynorm report --html .paynorm/report.html >/dev/null
echo "report: $PWD/.paynorm/report.html  (open it in a browser, offline)"
echo
echo "Connect: psql \"\$DATABASE_URL\"  (after: source .paynorm/env)"
echo "         select * from paynorm_marts.payment_kpis_daily order by event_date desc limit 20;"
