"""Every setting paynorm reads from the environment, in one place.

Each setting has a default and a comment saying what it is for. CLI flags override them;
``load_dotenv`` reads an optional ``.env`` file first (never overriding the real environment).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_dotenv(path: str | os.PathLike[str] = ".env") -> None:
    """Read KEY=VALUE lines (optionally prefixed by ``export``) into os.environ, without overriding."""
    p = Path(path)
    if not p.is_file():
        return
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^export\s+", "", line)
        key, sep, value = line.partition("=")
        if sep:
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))


@dataclass
class Settings:
    # DSN of the lake (source) database. Read-only access is enough: SELECT on the table and REPLICATION.
    lake_dsn: str = field(default_factory=lambda: os.environ.get("DATALAKE_DATABASE_URL", ""))
    # DSN of the warehouse database where raw.lake_transactions and the dbt models live.
    warehouse_dsn: str = field(default_factory=lambda: os.environ.get("DATABASE_URL", ""))
    # Seconds between polls of the slot in continuous mode (the brief's name).
    interval: float = field(default_factory=lambda: float(os.environ.get("POLL_INTERVAL_SECONDS", "5")))
    # Drain once and exit (cron / Kubernetes CronJob), the brief's name.
    run_once: bool = field(default_factory=lambda: _bool(os.environ.get("RUN_ONCE"), False))
    # Logical replication slot on the lake; one slot per lake table.
    slot: str = field(default_factory=lambda: os.environ.get("PAYNORM_SLOT", "paynorm"))
    # Schema-qualified lake table to replicate.
    table: str = field(default_factory=lambda: os.environ.get("PAYNORM_LAKE_TABLE", "public.raw_transactions"))
    # Lake column holding the heterogeneous payload; empty = first of data, transaction_data, payload.
    payload_column: str = field(default_factory=lambda: os.environ.get("PAYNORM_PAYLOAD_COLUMN", ""))
    # Changes per warehouse transaction (a huge lake transaction is applied in chunks of this size).
    batch_size: int = field(default_factory=lambda: int(os.environ.get("PAYNORM_BATCH_SIZE", "10000")))
    # CDC transport: 'stream' (replication protocol) or 'sql' (peek + advance, for proxies).
    transport: str = field(default_factory=lambda: os.environ.get("PAYNORM_TRANSPORT", "stream"))
    # Rows per keyset chunk of the initial snapshot.
    snapshot_chunk: int = field(default_factory=lambda: int(os.environ.get("PAYNORM_SNAPSHOT_CHUNK", "20000")))
    # Payloads larger than this many bytes are landed undecoded, with a decode_error.
    max_payload_bytes: int = field(
        default_factory=lambda: int(os.environ.get("PAYNORM_MAX_PAYLOAD_BYTES", str(1024 * 1024)))
    )
    # Seconds between standby status updates sent to the lake on the stream transport.
    status_interval: float = field(default_factory=lambda: float(os.environ.get("PAYNORM_STATUS_INTERVAL", "10")))
    # Longest back-off between reconnect attempts when the lake or the warehouse is down.
    max_backoff: float = field(default_factory=lambda: float(os.environ.get("PAYNORM_MAX_BACKOFF", "30")))
    # Log format: 'human' or 'json'.
    log_format: str = field(default_factory=lambda: os.environ.get("PAYNORM_LOG_FORMAT", "human"))
    # Log level name.
    log_level: str = field(default_factory=lambda: os.environ.get("PAYNORM_LOG_LEVEL", "INFO"))
    # Where `paynorm dev` keeps its local cluster and env file.
    home: Path = field(default_factory=lambda: Path(os.environ.get("PAYNORM_HOME", ".paynorm")))

    @property
    def table_parts(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return (schema or "public", name)

    @property
    def source_tag(self) -> str:
        return f"cdc:{self.slot}"


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs: the password replaced by ***, whatever the DSN syntax."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.I)
    return dsn
