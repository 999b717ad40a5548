#!/bin/sh
# The whole job inside the image on a throwaway local cluster (PostgreSQL + wal2json from the image),
# no outside database needed:  docker run --rm paynorm:<version> paynorm-demo [RECORDS]
# The cluster lives under PAYNORM_HOME and is gone with the container.
set -eu
records="${1:-${DEMO_RECORDS:-2000}}"
paynorm dev up >/dev/null
# shellcheck disable=SC1091
. "${PAYNORM_HOME:-.paynorm}/env"
export DATALAKE_DATABASE_URL DATABASE_URL
echo "== lake: the sample records and $records generated ones =="
paynorm dev seed
paynorm demo --generate "$records"
echo "== run --once: replicate -> dbt -> LLM step -> dbt marts =="
paynorm run --once
echo "== summary =="
paynorm summary
paynorm dev down >/dev/null
