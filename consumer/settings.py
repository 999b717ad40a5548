"""Every setting paynorm reads from the environment, in one place.

Each setting has a default and a comment saying what it is for. CLI flags override them;
``load_dotenv`` reads an optional ``.env`` file first (never overriding the real environment).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


# Defaults of the variables the CLI also takes as options: `paynorm --help` shows these very values.
DEFAULTS: dict[str, str] = {
    "POLL_INTERVAL_SECONDS": "5",
    "PAYNORM_SLOT": "paynorm",
    "PAYNORM_LAKE_TABLE": "public.raw_transactions",
    "PAYNORM_BATCH_SIZE": "10000",
    "PAYNORM_TRANSPORT": "stream",
    "PAYNORM_LOG_FORMAT": "human",
    "PAYNORM_LOG_LEVEL": "INFO",
    "PAYNORM_LLM_MAX_CALLS": "50",
    "PAYNORM_LLM_MAX_TOKENS": "300000",
    "PAYNORM_FILES_FORMAT": "auto",
    "PAYNORM_CYCLE_INTERVAL_SECONDS": "300",
    "PAYNORM_PROGRESS_SECONDS": "30",
}
LOG_FORMATS = ("human", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = ("stream", "sql")


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _number(variable: str, default: str, kind: type[int] | type[float]) -> Any:
    """A numeric setting; a value that is not a number is a ConfigError naming the variable (exit 4)."""
    text = os.environ.get(variable, default)
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ConfigError(f"{variable} must be a {'whole ' if kind is int else ''}number of 0 or more, not {text!r}")
    return value


def _choice(variable: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    """A setting with a fixed set of values; another value is a ConfigError naming the variable (exit 4)."""
    text = os.environ.get(variable) or DEFAULTS[variable]
    value = text.upper() if upper else text
    if value not in choices:
        raise ConfigError(f"{variable} must be one of {', '.join(choices)}, not {text!r}")
    return value


def load_dotenv(path: str | os.PathLike[str] = ".env", *, required: bool = False) -> None:
    """Read KEY=VALUE lines (optionally prefixed by ``export``; ``#`` starts a comment outside quotes)
    into os.environ, without overriding. A missing file is skipped unless ``required``."""
    p = Path(path)
    if not p.is_file():
        if required:
            raise ConfigError(f"env file {str(p)!r} not found")
        return
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^export\s+", "", line)
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if value[:1] in ("'", '"') and value[0] in value[1:]:
            value = value[1:value.index(value[0], 1)]  # quoted: taken as written, up to the closing quote
        else:
            value = re.sub(r"\s+#.*$", "", value)  # an unquoted value ends where a comment starts
        os.environ.setdefault(key.strip(), value)


@dataclass
class Settings:
    # DSN of the lake (source) database. Read-only access is enough: SELECT on the table and REPLICATION.
    lake_dsn: str = field(default_factory=lambda: os.environ.get("DATALAKE_DATABASE_URL", ""))
    # DSN of the warehouse database where raw.lake_transactions and the dbt models live.
    warehouse_dsn: str = field(default_factory=lambda: os.environ.get("DATABASE_URL", ""))
    # Seconds between polls of the slot in continuous mode (the name of the original specification).
    interval: float = field(default_factory=lambda: _number("POLL_INTERVAL_SECONDS", DEFAULTS["POLL_INTERVAL_SECONDS"], float))
    # Drain once and exit (cron / Kubernetes CronJob), the name of the original specification.
    run_once: bool = field(default_factory=lambda: _bool(os.environ.get("RUN_ONCE"), False))
    # Logical replication slot on the lake; one slot per lake table.
    slot: str = field(default_factory=lambda: os.environ.get("PAYNORM_SLOT") or DEFAULTS["PAYNORM_SLOT"])
    # Schema-qualified lake table to replicate.
    table: str = field(default_factory=lambda: os.environ.get("PAYNORM_LAKE_TABLE") or DEFAULTS["PAYNORM_LAKE_TABLE"])
    # Lake column holding the heterogeneous payload; empty = first of data, transaction_data, payload.
    payload_column: str = field(default_factory=lambda: os.environ.get("PAYNORM_PAYLOAD_COLUMN", ""))
    # Changes per warehouse transaction (a huge lake transaction is applied in chunks of this size).
    batch_size: int = field(default_factory=lambda: _number("PAYNORM_BATCH_SIZE", DEFAULTS["PAYNORM_BATCH_SIZE"], int))
    # CDC transport: 'stream' (replication protocol) or 'sql' (peek + advance, for proxies).
    transport: str = field(default_factory=lambda: _choice("PAYNORM_TRANSPORT", TRANSPORTS))
    # Rows per keyset chunk of the initial snapshot.
    snapshot_chunk: int = field(default_factory=lambda: _number("PAYNORM_SNAPSHOT_CHUNK", "20000", int))
    # Payloads larger than this many bytes are landed undecoded, with a decode_error.
    max_payload_bytes: int = field(
        default_factory=lambda: _number("PAYNORM_MAX_PAYLOAD_BYTES", str(1024 * 1024), int)
    )
    # Decode the CDC stream's payloads in a child process, on another core than the stream's parsing.
    # Default: on when the machine has more than one core. (The snapshot decodes in its own thread:
    # measured on 2 cores, a decode process made it no faster.)
    decode_process: bool = field(
        default_factory=lambda: _bool(os.environ.get("PAYNORM_DECODE_PROCESS"), (os.cpu_count() or 1) > 1))
    # Seconds between standby status updates sent to the lake on the stream transport.
    status_interval: float = field(default_factory=lambda: _number("PAYNORM_STATUS_INTERVAL", "10", float))
    # Seconds between refreshes of the database-derived metrics (served from that cache, never at scrape time).
    metrics_refresh: float = field(default_factory=lambda: _number("PAYNORM_METRICS_REFRESH_SECONDS", "15", float))
    # Longest back-off between reconnect attempts when the lake or the warehouse is down.
    max_backoff: float = field(default_factory=lambda: _number("PAYNORM_MAX_BACKOFF", "30", float))
    # Seconds a transient problem (lake or warehouse unreachable) is retried before the command fails
    # (exit 1); 0 = forever. Unset: forever in continuous mode, 60 s with --once (cron must see it end).
    retry_for: float | None = field(
        default_factory=lambda: _number("PAYNORM_RETRY_FOR", "", float) if os.environ.get("PAYNORM_RETRY_FOR") else None)
    # Log format: 'human' or 'json'.
    log_format: str = field(default_factory=lambda: _choice("PAYNORM_LOG_FORMAT", LOG_FORMATS))
    # Log level name.
    log_level: str = field(default_factory=lambda: _choice("PAYNORM_LOG_LEVEL", LOG_LEVELS, upper=True))
    # Seconds between progress log lines of a snapshot or a file load when stderr is not a terminal.
    progress_seconds: float = field(
        default_factory=lambda: _number("PAYNORM_PROGRESS_SECONDS", DEFAULTS["PAYNORM_PROGRESS_SECONDS"], float))
    # Where `paynorm dev` keeps its local cluster and env file.
    home: Path = field(default_factory=lambda: Path(os.environ.get("PAYNORM_HOME", ".paynorm")))
    # -- the LLM step (`paynorm llm`, consumer/llm/) --
    # API key of the OpenAI-compatible endpoint; empty = the step only reports what waits. Never logged.
    openai_api_key: str = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY", ""), repr=False)
    # Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:11434/v1); empty = api.openai.com.
    openai_base_url: str = field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL", ""))
    # Chat model asked for mapping rules (must support strict JSON-schema structured outputs).
    llm_model: str = field(default_factory=lambda: os.environ.get("PAYNORM_LLM_MODEL", "gpt-4o-mini"))
    # true: rules that pass validation are active at once; false: left 'proposed' for `paynorm mappings review`.
    llm_auto_activate: bool = field(default_factory=lambda: _bool(os.environ.get("PAYNORM_LLM_AUTO_ACTIVATE"), True))
    # Seconds before one LLM HTTP request is abandoned (then retried like a 5xx).
    llm_timeout: float = field(default_factory=lambda: _number("PAYNORM_LLM_TIMEOUT", "60", float))
    # Retries of one request after a 429, a 5xx, a timeout or a connection error (then the shape waits).
    llm_max_retries: int = field(default_factory=lambda: _number("PAYNORM_LLM_MAX_RETRIES", "3", int))
    # First back-off in seconds between retries; doubled each time (a Retry-After header wins, capped at 60 s).
    llm_backoff: float = field(default_factory=lambda: _number("PAYNORM_LLM_BACKOFF", "1", float))
    # Most HTTP requests one run of the step may make (retries and repair rounds included).
    llm_max_calls: int = field(default_factory=lambda: _number("PAYNORM_LLM_MAX_CALLS", DEFAULTS["PAYNORM_LLM_MAX_CALLS"], int))
    # Most tokens (prompt + completion) one run of the step may spend.
    llm_max_tokens: int = field(default_factory=lambda: _number("PAYNORM_LLM_MAX_TOKENS", DEFAULTS["PAYNORM_LLM_MAX_TOKENS"], int))
    # Completion tokens allowed per request (max_completion_tokens).
    llm_max_output_tokens: int = field(
        default_factory=lambda: _number("PAYNORM_LLM_MAX_OUTPUT_TOKENS", "4096", int)
    )
    # Redacted sample rows sent per shape (distinct raw status values first).
    llm_samples: int = field(default_factory=lambda: _number("PAYNORM_LLM_SAMPLES", "5", int))
    # Share of a shape's rows a proposed rule must turn into a canonical status (and valid amounts, currencies).
    llm_min_coverage: float = field(default_factory=lambda: _number("PAYNORM_LLM_MIN_COVERAGE", "0.95", float))
    # -- the files source (`paynorm load`, consumer/sources/files.py) --
    # Folder or s3://bucket/prefix loaded when none is given on the command line (`paynorm run --source files`).
    files_path: str = field(default_factory=lambda: os.environ.get("PAYNORM_FILES_PATH", ""))
    # Only files whose path relative to the folder / S3 prefix starts with this (e.g. 2024/06/).
    files_prefix: str = field(default_factory=lambda: os.environ.get("PAYNORM_FILES_PREFIX", ""))
    # fnmatch pattern on that relative path ('*' crosses folders, e.g. *.jsonl); empty = every file.
    files_glob: str = field(default_factory=lambda: os.environ.get("PAYNORM_FILES_GLOB", ""))
    # File format: auto (by extension: .json, .jsonl/.ndjson, .csv, .parquet/.pq), json, jsonl, csv or parquet.
    files_format: str = field(default_factory=lambda: os.environ.get("PAYNORM_FILES_FORMAT") or DEFAULTS["PAYNORM_FILES_FORMAT"])
    # Larger files are not downloaded and fail with a clear error (a file commits in one warehouse transaction).
    files_max_bytes: int = field(
        default_factory=lambda: _number("PAYNORM_FILES_MAX_BYTES", str(512 * 1024 * 1024), int)
    )
    # Records decoded and staged per chunk while a file streams in (memory), before its single commit.
    files_chunk: int = field(default_factory=lambda: _number("PAYNORM_FILES_CHUNK", "5000", int))
    # true: the files ARE the lake's own export, so a file record may rewrite, revive or tombstone a row
    # CDC or poll landed; false (default): a record with the id of another source's row leaves it alone.
    files_are_lake_export: bool = field(
        default_factory=lambda: _bool(os.environ.get("PAYNORM_FILES_ARE_LAKE_EXPORT"), False))
    # S3-compatible endpoint (MinIO...); empty = AWS (boto3 also reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
    s3_endpoint_url: str = field(default_factory=lambda: os.environ.get("PAYNORM_S3_ENDPOINT_URL", ""))
    # -- the pipeline (`paynorm run`, consumer/pipeline.py) --
    # Seconds between continuous `paynorm run` cycles (dbt, LLM step, marts); the CDC consumer streams
    # in between, and POLL_INTERVAL_SECONDS stays the consumer's own poll interval.
    cycle_interval: float = field(default_factory=lambda: _number("PAYNORM_CYCLE_INTERVAL_SECONDS", DEFAULTS["PAYNORM_CYCLE_INTERVAL_SECONDS"], float))
    # dbt project to build; empty = the one shipped in this repository (your own fork of the models works too).
    dbt_project_dir: str = field(default_factory=lambda: os.environ.get("PAYNORM_DBT_PROJECT_DIR", ""))
    # Folder of mapping rule files synced before each build; empty = the built-in rules.
    mappings_dir: str = field(default_factory=lambda: os.environ.get("PAYNORM_MAPPINGS_DIR", ""))

    @property
    def source_tag(self) -> str:
        return f"cdc:{self.slot}"
