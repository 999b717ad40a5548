"""The MetricFlow semantic layer (models/marts/_semantic_models.yml) on a real warehouse:
`mf validate-configs` (semantics and the data warehouse checks) passes, and `mf query` answers
approval_rate and approved_volume with the same numbers as the SQL marts."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
from psycopg import sql

from consumer import transform
from tests.dbt_fixtures import REPO, Warehouse, land, landing_row, load_fixtures, make_warehouse, marts_schema

MF = Path(sys.executable).parent / "mf"
MARTS = marts_schema()


@pytest.fixture(scope="module")
def project(dbt_tmp: Path) -> Iterator[tuple[Warehouse, Path, dict[str, str]]]:
    """A built warehouse, a copy of the dbt project (mf reads <project>/target/semantic_manifest.json,
    so it gets a target of its own) and the environment mf runs with."""
    if not MF.exists():
        pytest.fail(f"{MF} missing: dbt-metricflow is in the dev extra (make install)")
    gen = make_warehouse(dbt_tmp, "mf")
    w = next(gen)
    try:
        with w.connect() as conn:
            land(conn, [landing_row(k, v) for k, v in load_fixtures().items()])
        res = transform.transform(w.dsn, home=w.home, exclude=["resource_type:test"])
        assert res.success, res.summary()
        proj = dbt_tmp / "mf-project"
        proj.mkdir()
        for name in ("dbt_project.yml", "models", "macros", "seeds"):
            (proj / name).symlink_to(REPO / name)
        res = transform.run_dbt(w.dsn, ["parse"], home=w.home, project_dir=proj, target_path=proj / "target")
        assert res.success, res.summary()
        assert (proj / "target" / "semantic_manifest.json").exists()
        env = {**os.environ, "DBT_PROFILES_DIR": str(w.home / "dbt"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
               transform.PASSWORD_ENV: "", "PGOPTIONS": "-c jit=off"}
        yield w, proj, env
    finally:
        gen.close()
        shutil.rmtree(dbt_tmp / "mf-project", ignore_errors=True)


def mf(project: tuple[Warehouse, Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    _, proj, env = project
    return subprocess.run([str(MF), *args], cwd=proj, env=env, capture_output=True, text=True, timeout=240)


def test_validate_configs(project: tuple[Warehouse, Path, dict[str, str]]) -> None:
    res = mf(project, "validate-configs", "--show-all")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Successfully validated the semantics of built manifest (ERRORS: 0, FUTURE_ERRORS: 0, WARNINGS: 0)" in out
    assert "Successfully validated metrics against data warehouse (ERRORS: 0" in out, out


def test_approval_rate_matches_the_mart(project: tuple[Warehouse, Path, dict[str, str]], tmp_path: Path) -> None:
    w = project[0]
    out = tmp_path / "rates.csv"
    res = mf(project, "query", "--metrics", "approval_rate,decline_rate,attempts", "--group-by", "kpi__provider",
             "--csv", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    got = {r["kpi__provider"]: r for r in csv.DictReader(out.open())}
    with w.connect() as conn:
        want = conn.execute(sql.SQL(
            "select provider, sum(approved)::numeric / nullif(sum(approved + declined), 0),"
            " sum(declined)::numeric / nullif(sum(approved + declined), 0), sum(attempts)"
            " from {}.payment_kpis_daily group by provider").format(sql.Identifier(MARTS))).fetchall()
    assert want and set(got) == {r[0] for r in want}
    assert any(r[1] is not None for r in want), "the fixtures decided no attempt"
    for provider, approval, decline, attempts in want:
        row = got[provider]
        for value, expected in ((row["approval_rate"], approval), (row["decline_rate"], decline)):
            if expected is None:
                assert value in ("", "None"), (provider, row)
            else:
                assert abs(Decimal(value) - expected) < Decimal("1e-9"), (provider, row, expected)
        assert int(Decimal(row["attempts"])) == attempts, (provider, row)


def test_approved_volume_per_currency(project: tuple[Warehouse, Path, dict[str, str]], tmp_path: Path) -> None:
    w = project[0]
    out = tmp_path / "volume.csv"
    res = mf(project, "query", "--metrics", "approved_volume", "--group-by", "kpi__currency", "--csv", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    got = {r["kpi__currency"] or None: r["approved_volume"] for r in csv.DictReader(out.open())}
    with w.connect() as conn:
        want = dict(conn.execute(sql.SQL("select currency, sum(approved_amount) from {}.payment_kpis_daily"
                                         " group by currency").format(sql.Identifier(MARTS))).fetchall())
    assert len(want) > 1
    assert set(got) == set(want)
    for currency, amount in want.items():
        if amount is None:
            assert got[currency] in ("", "None"), (currency, got[currency])
        else:
            assert Decimal(got[currency]) == amount, currency
