"""A throw-away lake and warehouse on a PostgreSQL cluster of their own, never the user's data.

`paynorm eval` and `paynorm mappings scaffold` land records into the scratch lake, run one real
``paynorm run --once`` cycle (CDC snapshot, dbt, optionally the LLM step, marts) and read the marts.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["ScratchError", "Scratch", "scratch"]


class ScratchError(RuntimeError):
    """The scratch cluster could not be set up or its run failed; the message says why."""


@dataclass
class Scratch:
    lake_dsn: str  # the read-only replication role, as the consumer uses it
    lake_admin_dsn: str
    warehouse_dsn: str
    home: Path

    def insert(self, records: Iterable[dict[str, Any]]) -> None:
        """Lake rows {id, data, merchant, transactional_id, created_at?} (values kept exact)."""
        import psycopg
        from psycopg.types.json import Jsonb

        from .jsonutil import dumps_exact

        def js(v: Any) -> Any:
            return None if v is None else Jsonb(v, dumps=dumps_exact)

        with psycopg.connect(self.lake_admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "insert into public.raw_transactions (id, data, merchant, transactional_id, created_at)"
                " values (%s, %s, %s, %s, coalesce(%s::timestamptz, now()))",
                [(r["id"], js(r.get("data")), js(r.get("merchant")), r.get("transactional_id"), r.get("created_at"))
                 for r in records],
            )

    def run(self, settings: Any = None, *, mappings_dir: str | Path | None = None, with_llm: bool = False) -> Any:
        """One `paynorm run --once` cycle over the scratch lake; the cycle result (ScratchError if it failed)."""
        from .pipeline import Pipeline
        from .settings import Settings

        s = Settings() if settings is None else settings
        s.lake_dsn, s.warehouse_dsn, s.slot, s.home = self.lake_dsn, self.warehouse_dsn, "paynorm_scratch", self.home
        s.table, s.payload_column = "public.raw_transactions", ""
        if mappings_dir is not None:
            s.mappings_dir = str(mappings_dir)
        if not with_llm:
            s.openai_api_key = ""
        result = Pipeline(s, source="cdc", attempts=1).cycle()
        if result.outcome != "ok":
            errors = "; ".join(f"{st.name}: {st.error}" for st in result.stages if st.error)
            raise ScratchError(f"the scratch run failed: {errors or result.outcome}")
        return result


@contextmanager
def scratch(work_dir: str | Path | None = None, *, keep: bool = False) -> Iterator[Scratch]:
    """A started scratch cluster with a lake and a warehouse database; stopped (and deleted unless
    ``keep``) on exit."""
    from . import devdb

    base = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="paynorm-scratch-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # the postgres system user runs the server when we are root
    cluster = devdb.Cluster(base / "pg")
    try:
        if not devdb.wal2json_installed(cluster.bindir):
            raise ScratchError(f"wal2json is missing: apt-get install -y postgresql-{cluster.major}-wal2json")
        try:
            cluster.init()
            cluster.start()
        except devdb.DevDBError as e:
            raise ScratchError(str(e)) from e
        lake_dsn = devdb.setup_lake(cluster, "scratch_lake")
        wh_dsn = devdb.setup_warehouse(cluster, "scratch_warehouse", owner="scratch_warehouse")
        yield Scratch(lake_dsn, cluster.dsn("scratch_lake"), wh_dsn, base / "home")
    finally:
        cluster.stop("immediate")
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
