"""`dbt docs generate` on a real warehouse: no warnings, and every model, seed and column described;
and profiles.example.yml builds what `paynorm transform` builds.

The catalog lists the columns the relations really have, so a column added to a model without a
description (or a description left behind for a dropped column) fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from consumer import transform
from tests.dbt_fixtures import REPO, Warehouse, land, landing_row, load_fixtures, make_warehouse

ENUM_DOCS = ["status", "event_type", "decline_category", "payment_method", "card_network"]


@pytest.fixture(scope="module")
def docs(dbt_tmp: Path) -> Iterator[dict[str, Any]]:
    """manifest.json, catalog.json and the warnings of one `dbt docs generate` after a build."""
    gen = make_warehouse(dbt_tmp, "docs")
    w: Warehouse = next(gen)
    try:
        with w.connect() as conn:
            land(conn, [landing_row(k, v) for k, v in load_fixtures().items()])
        # Seeds and models only: the docs need the relations, not the data tests' verdicts.
        res = transform.transform(w.dsn, home=w.home, exclude=["resource_type:test"])
        assert res.success, res.summary()
        log_file = w.home / "dbt" / "logs" / "dbt.log"
        log_file.unlink(missing_ok=True)  # keep only this invocation's events
        target = w.home / "docs-target"
        res = transform.run_dbt(w.dsn, ["docs", "generate", "--log-format-file", "json"], home=w.home,
                                target_path=target)
        assert res.success, res.summary()
        events = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
        warnings = [f"{e['info']['name']}: {e['info']['msg']}" for e in events
                    if e.get("info", {}).get("level") in ("warn", "error")]
        yield {"manifest": json.loads((target / "manifest.json").read_text()),
               "catalog": json.loads((target / "catalog.json").read_text()), "warnings": warnings}
    finally:
        gen.close()


def _own_nodes(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {uid: n for uid, n in manifest["nodes"].items()
            if n["resource_type"] in ("model", "seed") and n["package_name"] == "paynorm"}


def test_docs_generate_warns_about_nothing(docs: dict[str, Any]) -> None:
    assert docs["warnings"] == []


def test_every_model_and_seed_is_described(docs: dict[str, Any]) -> None:
    nodes = _own_nodes(docs["manifest"])
    assert {n["resource_type"] for n in nodes.values()} == {"model", "seed"}
    undescribed = sorted(uid for uid, n in nodes.items() if not (n.get("description") or "").strip())
    assert not undescribed, "without a description: " + ", ".join(undescribed)


def test_every_column_in_the_warehouse_is_described(docs: dict[str, Any]) -> None:
    nodes = _own_nodes(docs["manifest"])
    catalog = docs["catalog"]["nodes"]
    assert set(catalog) == set(nodes), "a model or seed has no relation in the warehouse"
    missing, stale = [], []
    for uid, entry in catalog.items():
        described = {name.lower(): (c.get("description") or "").strip() for name, c in nodes[uid]["columns"].items()}
        for name in entry["columns"]:
            if not described.get(name.lower()):
                missing.append(f"{uid}.{name}")
        real = {name.lower() for name in entry["columns"]}
        stale += [f"{uid}.{name}" for name in described if name not in real]
    assert not missing, "columns without a description:\n" + "\n".join(missing)
    assert not stale, "descriptions of columns the relation does not have:\n" + "\n".join(stale)


def test_source_columns_are_described(docs: dict[str, Any]) -> None:
    sources = docs["manifest"]["sources"]
    catalog = docs["catalog"]["sources"]
    missing = []
    for uid, entry in catalog.items():
        if not sources[uid]["package_name"] == "paynorm":
            continue
        described = {n.lower() for n, c in sources[uid]["columns"].items() if (c.get("description") or "").strip()}
        missing += [f"{uid}.{name}" for name in entry["columns"] if name.lower() not in described]
    assert not missing, "source columns without a description:\n" + "\n".join(missing)


def test_enum_columns_share_one_doc_block(docs: dict[str, Any]) -> None:
    manifest = docs["manifest"]
    for name in ENUM_DOCS:
        assert f"doc.paynorm.{name}" in manifest["docs"], f"models/docs.md lost the {name} docs block"
    users = {name: [] for name in ENUM_DOCS}
    for uid, node in _own_nodes(manifest).items():
        for col, c in node["columns"].items():
            for block in c.get("doc_blocks") or []:
                key = block.removeprefix("doc.paynorm.")
                if key in users:
                    users[key].append(f"{uid}.{col}")
    assert all(users.values()), f"docs blocks no column uses: {[k for k, v in users.items() if not v]}"
    # the event mart states each canonical enum through its docs block
    events = manifest["nodes"]["model.paynorm.normalized_payment_events"]["columns"]
    assert {name: events[name].get("doc_blocks") for name in ENUM_DOCS} == {
        name: [f"doc.paynorm.{name}"] for name in ENUM_DOCS}


def _parsed_nodes(target: Path) -> dict[str, tuple[str, list[str]]]:
    manifest = json.loads((target / "manifest.json").read_text())
    return {uid: (n["schema"], [h["sql"] for h in n["config"].get("pre-hook", [])])
            for uid, n in manifest["nodes"].items() if n["resource_type"] in ("model", "seed")}


def test_the_example_profile_builds_what_the_cli_builds(tmp_path: Path) -> None:
    """profiles.example.yml (a direct `dbt build`) and `paynorm transform`'s generated profile put
    every model and seed in the same schema, read the same password variable, and both sessions
    get jit off (a model pre-hook, since dbt-postgres profiles cannot set session options)."""
    example = (REPO / "profiles.example.yml").read_text()
    assert f"env_var('{transform.PASSWORD_ENV}'" in example
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYNORM_DB_", "PAYNORM_DBT_"))}
    env.update({"PAYNORM_DB_USER": "warehouse", "PAYNORM_DB_NAME": "warehouse", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    dbt = Path(sys.executable).parent / "dbt"
    res = subprocess.run([str(dbt), "parse", "--project-dir", str(REPO), "--profiles-dir", str(profiles),
                          "--target-path", str(tmp_path / "direct"), "--log-path", str(tmp_path / "logs")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    cli = transform.run_dbt("postgresql://warehouse@127.0.0.1:1/warehouse", ["parse"], home=tmp_path / "home",
                            target_path=tmp_path / "cli", quiet=True)
    assert cli.success, cli.summary()
    direct, generated = _parsed_nodes(tmp_path / "direct"), _parsed_nodes(tmp_path / "cli")
    assert direct == generated
    schemas = {schema for schema, _ in direct.values()}
    assert schemas == {"paynorm_staging", "paynorm_intermediate", "paynorm_marts", "paynorm_reference"}
    assert all("set jit = off" in hooks for uid, (_, hooks) in direct.items() if uid.startswith("model."))
