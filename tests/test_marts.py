"""The analyst marts on a real warehouse: every provider fixture landed, `dbt build`, then the marts
checked against the events they aggregate, `paynorm summary` checked against the marts, and the
analyst role checked against PostgreSQL's own privilege system."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from consumer import report, transform
from consumer.cli import cli
from tests.dbt_fixtures import Warehouse, built_warehouse, land, landing_row, load_fixtures, marts_schema

MARTS = marts_schema()
REF = MARTS.replace("_marts", "_reference")
ATTEMPTS = ("authorization", "sale", "unknown")


@pytest.fixture(scope="module")
def wh(dbt_tmp: Path) -> Iterator[Warehouse]:
    yield from built_warehouse(dbt_tmp, "marts", [landing_row(k, v) for k, v in load_fixtures().items()])


def test_unit_tests_of_the_marts_pass(wh: Warehouse) -> None:
    res = wh.dbt("test", "--select", "test_type:unit")
    assert res.success, res.summary()
    ran = {n.unique_id.rsplit(".", 1)[-1] for n in res.nodes if n.status == "pass"}
    for name in ("kpis_rates_attempts_and_test_exclusion", "kpis_rates_null_without_outcomes",
                 "kpis_volume_per_currency_and_null_bucket", "declines_count_declined_attempts_only",
                 "latency_percentiles_are_observed_values", "coverage_counts_each_row_where_it_ended"):
        assert name in ran, (name, sorted(ran))


def test_production_builds_leave_the_unit_tests_to_ci(wh: Warehouse) -> None:
    """`paynorm transform` skips the unit tests (fixtures, not data) unless asked: they cost seconds a
    build and say the same at every build."""
    plain = transform.transform(wh.dsn, home=wh.home, select=["payment_latency_daily"], sync_rules=False)
    assert plain.success, plain.summary()
    assert any(n.unique_id.startswith("model.") for n in plain.nodes)
    assert not [n.unique_id for n in plain.nodes if n.unique_id.startswith("unit_test.")]
    res = CliRunner().invoke(cli, ["transform", "--no-sync", "--unit-tests", "--select", "payment_latency_daily"],
                             env={"DATABASE_URL": wh.dsn, "PAYNORM_HOME": str(wh.home)})
    assert res.exit_code == 0, res.output
    ran = json.loads((wh.home / "dbt" / "target" / "run_results.json").read_text())["results"]
    assert "unit_test.paynorm.payment_latency_daily.latency_percentiles_are_observed_values" in {
        r["unique_id"] for r in ran if r["status"] == "pass"}


def test_kpis_agree_with_the_events(wh: Warehouse) -> None:
    """The mart's counts and per-currency amounts are the events', computed here independently."""
    with wh.connect() as conn:
        expected = conn.execute(sql.SQL(
            "select provider, currency, count(*) filter (where status = 'approved'),"
            " count(*) filter (where status = 'declined'), count(*),"
            " sum(amount) filter (where status = 'approved')"
            " from {}.normalized_payment_events where not is_test and event_type = any(%s)"
            " group by 1, 2 order by 1, 2 nulls last").format(sql.Identifier(MARTS)), (list(ATTEMPTS),)).fetchall()
        got = conn.execute(sql.SQL(
            "select provider, currency, sum(approved)::bigint, sum(declined)::bigint, sum(attempts)::bigint,"
            " sum(approved_amount) from {}.payment_kpis_daily group by 1, 2 having sum(attempts) > 0"
            " order by 1, 2 nulls last").format(sql.Identifier(MARTS))).fetchall()
        assert expected and len({r[1] for r in expected}) > 3, "fixtures span several currencies"
        for (p, c, ap, de, at, amt), g in zip(expected, got):
            assert g[:5] == (p, c, ap, de, at)
            if c is None:
                assert g[5] is None, "no amount for the currency-NULL bucket"
            else:
                assert g[5] == (amt or Decimal(0)), (p, c)
        assert len(expected) == len(got)
        # declines mart = declined attempts of the kpis mart
        d1 = conn.execute(sql.SQL("select sum(declines) from {}.payment_declines_daily")
                          .format(sql.Identifier(MARTS))).fetchone()[0]
        d2 = conn.execute(sql.SQL("select sum(declined) from {}.payment_kpis_daily")
                          .format(sql.Identifier(MARTS))).fetchone()[0]
        assert d1 == d2 and d1 > 0
        # coverage = the three placement marts
        cov = dict(conn.execute(sql.SQL("select outcome, sum(rows)::bigint from {}.normalization_coverage group by 1")
                                .format(sql.Identifier(MARTS))).fetchall())
        for outcome, mart in (("event", "normalized_payment_events"), ("quarantine", "normalization_quarantine"),
                              ("pending", "normalization_pending")):
            n = conn.execute(sql.SQL("select count(*) from {}.{}").format(
                sql.Identifier(MARTS), sql.Identifier(mart))).fetchone()[0]
            assert cov.get(outcome, 0) == n, outcome


def test_summary_reads_the_marts(wh: Warehouse) -> None:
    """Summary's approval rate per provider is sum(approved) / (sum(approved) + sum(declined)) of the
    mart, and its volume lines are per currency."""
    out = report.render_summary(wh.dsn, MARTS)
    lines = out.splitlines()
    with wh.connect() as conn:
        rates = conn.execute(sql.SQL(
            "select provider, sum(approved)::bigint, sum(declined)::bigint,"
            " round(100 * sum(approved)::numeric / nullif(sum(approved) + sum(declined), 0), 1)"
            " from {}.payment_kpis_daily group by 1 order by 1").format(sql.Identifier(MARTS))).fetchall()
        vols = conn.execute(sql.SQL(
            "select provider, currency, sum(approved_amount) from {}.payment_kpis_daily"
            " where currency is not null group by 1, 2 having sum(approved) > 0").format(
            sql.Identifier(MARTS))).fetchall()
    assert any(r[3] is not None and r[3] not in (0, 100) for r in rates), "fixtures give a non-trivial rate"
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Approval rate"))
    table = lines[start + 3:lines.index("", start)]
    shown = {ln.split()[0]: ln.split()[1:] for ln in table}
    assert len(shown) == len(rates), table
    for provider, approved, declined, pct in rates:
        assert shown[provider][1:] == [str(approved), str(declined), "-" if pct is None else f"{pct}%"], provider
    for provider, currency, amount in vols:
        assert any(re.match(rf"{re.escape(provider)}\s+{currency}\s+\d+\s+{re.escape(str(amount))}\s", ln)
                   for ln in lines), (provider, currency, amount)
    # the same numbers through the CLI
    res = CliRunner().invoke(cli, ["summary"], env={"DATABASE_URL": wh.dsn})
    if MARTS == report.MARTS:
        assert res.exit_code == 0 and res.output.strip() == out.strip(), res.output


def test_card_networks_and_methods_are_canonical(wh: Warehouse) -> None:
    with wh.connect() as conn:
        canonical_networks = {r[0] for r in conn.execute(sql.SQL("select distinct card_network from {}.card_networks")
                                                         .format(sql.Identifier(REF))).fetchall()}
        canonical_methods = {r[0] for r in conn.execute(sql.SQL("select distinct payment_method from {}.payment_methods")
                                                        .format(sql.Identifier(REF))).fetchall()}
        networks = {r[0] for r in conn.execute(sql.SQL(
            "select distinct card_network from {}.normalized_payment_events where card_network is not null")
            .format(sql.Identifier(MARTS))).fetchall()}
        methods = {r[0] for r in conn.execute(sql.SQL(
            "select distinct payment_method from {}.normalized_payment_events where payment_method is not null")
            .format(sql.Identifier(MARTS))).fetchall()}
        kpi_networks = {r[0] for r in conn.execute(sql.SQL(
            "select distinct card_network from {}.payment_kpis_daily where card_network is not null")
            .format(sql.Identifier(MARTS))).fetchall()}
    assert {"visa", "mastercard"} <= networks, networks
    assert networks <= canonical_networks and kpi_networks == networks
    assert not networks & {"vi", "master", "mc", "debmaster", "debvisa"}, networks
    assert "card" in methods and methods <= canonical_methods
    assert not methods & {"credit_card", "creditcard", "cc", "visa"}, methods


@pytest.mark.parametrize("token,network,method", [
    ("VISA", "visa", "card"), ("vi", "visa", "card"), ("Master Card", "mastercard", "card"),
    ("MC", "mastercard", "card"), ("creditcard", None, "card"), ("cc", None, "card"),
    ("credit_card", None, "card"), ("zzz-unknown", "other", "other"),
])
def test_generic_tokens_canonicalize(wh: Warehouse, token: str, network: str | None, method: str) -> None:
    """The seeds' generic rows map the spellings seen in payloads; an unknown token becomes `other`."""
    with wh.connect() as conn:
        key = conn.execute("select nullif(btrim(regexp_replace(lower(btrim(%s)), '[^a-z0-9]+', '_', 'g'), '_'), '')",
                           (token,)).fetchone()[0]
        got_n = conn.execute(sql.SQL("select card_network from {}.card_networks where provider = '*' and token = %s")
                             .format(sql.Identifier(REF)), (key,)).fetchone()
        got_m = conn.execute(sql.SQL("select payment_method from {}.payment_methods where provider = '*' and token = %s")
                             .format(sql.Identifier(REF)), (key,)).fetchone()
    if network is not None:
        assert (got_n[0] if got_n else "other") == network
    assert (got_m[0] if got_m else "other") == method


def test_analyst_role_reads_marts_only(wh: Warehouse) -> None:
    su = wh.cluster
    with su.connect("warehouse") as conn:
        owner = conn.execute("select datdba::regrole::text from pg_database where datname = 'warehouse'").fetchone()[0]
        conn.execute(sql.SQL("alter role {} createrole").format(sql.Identifier(owner)))
    res = CliRunner().invoke(cli, ["init", "--analyst-role", "mart_readers"], env={"DATABASE_URL": wh.dsn})
    assert res.exit_code == 0, res.output
    assert "analyst role mart_readers created" in res.output
    again = CliRunner().invoke(cli, ["init", "--analyst-role", "mart_readers"], env={"DATABASE_URL": wh.dsn})
    assert again.exit_code == 0 and "updated" in again.output, again.output
    with su.connect("warehouse") as conn:
        can_login = conn.execute("select rolcanlogin from pg_roles where rolname = 'mart_readers'").fetchone()[0]
        assert can_login is False
        conn.execute("drop role if exists alice")
        conn.execute("create role alice login in role mart_readers")
    # a build after init replaces the mart tables: default privileges must cover the new ones
    assert wh.build("marts").success
    alice = su.dsn("warehouse", "alice")
    with psycopg.connect(alice, autocommit=True) as conn:
        for mart in ("payment_kpis_daily", "payment_declines_daily", "payment_latency_daily",
                     "normalization_coverage", "normalized_payment_events"):
            conn.execute(sql.SQL("select count(*) from {}.{}").format(sql.Identifier(MARTS), sql.Identifier(mart)))
        for relation in ("raw.lake_transactions", "paynorm.mappings"):
            schema, table = relation.split(".")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("select 1 from {}.{} limit 1").format(sql.Identifier(schema),
                                                                           sql.Identifier(table)))
        inter = conn.execute(
            "select has_schema_privilege('alice', n.nspname, 'usage') from pg_namespace as n where n.nspname = %s",
            (MARTS.replace("_marts", "_intermediate"),)).fetchone()
        assert inter == (False,)
    with su.connect("warehouse") as conn:
        conn.execute("drop owned by alice")
        conn.execute("drop role alice")


def test_exposures_name_the_marts_they_read(wh: Warehouse) -> None:
    manifest = json.loads((wh.home / "dbt" / "target" / "manifest.json").read_text())
    exposures = {e["name"]: e for e in manifest["exposures"].values()}
    assert {"paynorm_summary", "paynorm_html_report"} <= set(exposures)
    summary_deps = set(exposures["paynorm_summary"]["depends_on"]["nodes"])
    assert "model.paynorm.payment_kpis_daily" in summary_deps
    # the summary reads exactly the marts its exposure declares
    src = Path(report.__file__).read_text()
    read = set(re.findall(r'_mart\("([a-z_]+)"', src))
    assert read == {d.rsplit(".", 1)[-1] for d in summary_deps}, read
