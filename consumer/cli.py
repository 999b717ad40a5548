"""The `paynorm` command line: parses options, configures logging, calls the library."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from .settings import DEFAULTS, LOG_FORMATS, LOG_LEVELS, TRANSPORTS, Settings, load_dotenv


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT ask the running job to finish the batch in flight, commit and exit 0."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("paynorm").info("%s received: finishing the batch in flight",
                                          signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


class _ErrorLine(click.ClickException):
    """A paynorm error as the CLI shows it: one line on stderr, its own exit code, no traceback."""

    def __init__(self, error: Exception, exit_code: int) -> None:
        super().__init__(str(error))
        self.exit_code = exit_code

    def format_message(self) -> str:
        return self.message


class _Group(click.Group):
    """Maps paynorm's errors (consumer/errors.py) to exit codes in one place, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import PaynormError

        try:
            return super().invoke(ctx)
        except PaynormError as e:
            raise _ErrorLine(e, e.exit_code) from e


# -- options read from the environment ------------------------------------------------------------


class _EnvOption(click.Option):
    """An option that also reads an environment variable. A bad value from the variable is a
    configuration error (exit 4, naming the variable), like a bad setting, not a usage error (exit 2)."""

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as e:
            if ctx.get_parameter_source(self.name or "") is not ParameterSource.ENVIRONMENT:
                raise
            from .errors import EXIT_CONFIG, ConfigError

            raise _ErrorLine(ConfigError(f"{self.envvar}: {e.message}"), EXIT_CONFIG) from e


def env_option(*decls: str, envvar: str, **kwargs: Any) -> Any:
    """A click option backed by ``envvar``, so `--help` shows the variable and the default from the
    option itself. The default is the one Settings uses (settings.DEFAULTS) unless given here."""
    if "default" not in kwargs and envvar in DEFAULTS:
        kwargs["default"] = DEFAULTS[envvar]
    if kwargs.get("default") not in (None, "") and not kwargs.get("is_flag"):
        kwargs.setdefault("show_default", True)
    return click.option(*decls, cls=_EnvOption, envvar=envvar, show_envvar=True, **kwargs)


def once_option(help: str) -> Any:  # noqa: A002 - click's own name
    return env_option("--once", envvar="RUN_ONCE", is_flag=True, default=False, help=help)


def interval_option(help: str) -> Any:  # noqa: A002
    return env_option("--interval", envvar="POLL_INTERVAL_SECONDS", type=click.FloatRange(min=0), help=help)


def slot_option(help: str = "Replication slot on the lake; one slot per lake table.") -> Any:  # noqa: A002
    return env_option("--slot", envvar="PAYNORM_SLOT", help=help)


def table_option(help: str = "Schema-qualified lake table.") -> Any:  # noqa: A002
    return env_option("--table", envvar="PAYNORM_LAKE_TABLE", help=help)


def batch_size_option(help: str) -> Any:  # noqa: A002
    return env_option("--batch-size", envvar="PAYNORM_BATCH_SIZE", type=click.IntRange(min=1), help=help)


def payload_column_option(fn: Any) -> Any:
    return env_option("--payload-column", envvar="PAYNORM_PAYLOAD_COLUMN", default="",
                      help="Lake column holding the payload (default: the first of data, transaction_data, "
                           "payload).")(fn)


def retry_option(fn: Any) -> Any:
    """--retry-for, shared by every command that reads a source (one retry policy: consumer/retry.py)."""
    return env_option(
        "--retry-for", envvar="PAYNORM_RETRY_FOR", type=click.FloatRange(min=0), default=None,
        help="Seconds a lake/warehouse outage is retried before exit 1 (0 = forever). "
             "Default: forever, 60 with --once. Permanent errors (DSN, password, privilege) exit 4 at once.")(fn)


# -- the command group ----------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="paynorm")
@env_option("--log-format", envvar="PAYNORM_LOG_FORMAT", type=click.Choice(LOG_FORMATS),
            help="Log format: human lines, or one JSON object per line (UTC timestamps with milliseconds).")
@env_option("--log-level", envvar="PAYNORM_LOG_LEVEL", type=click.Choice(LOG_LEVELS, case_sensitive=False),
            help="Least severe level logged.")
@click.option("--env-file", default=None,
              help="KEY=VALUE file read first (never overriding the environment); default: ./.env if it exists. "
                   "A file named here must exist.")
@click.pass_context
def cli(ctx: click.Context, log_format: str, log_level: str, env_file: str | None) -> None:
    """paynorm: land a PostgreSQL payment lake in a warehouse exactly once, and normalize it.

    \b
    Example:
        paynorm dev up && source .paynorm/env
        paynorm replicate --once
        paynorm status
    """
    from .ops import logs, progress

    load_dotenv(env_file or ".env", required=env_file is not None)
    settings = Settings()  # a setting that does not parse is a ConfigError naming its variable (exit 4)
    # these two options are read before the env file: left at their default, they yield to it
    if ctx.get_parameter_source("log_format") is ParameterSource.DEFAULT:
        log_format = settings.log_format
    if ctx.get_parameter_source("log_level") is ParameterSource.DEFAULT:
        log_level = settings.log_level
    logs.configure(log_format, log_level)
    progress.configure(settings.progress_seconds)
    ctx.obj = settings


# -- dev cluster ----------------------------------------------------------------------------------


@cli.group()
def dev() -> None:
    """A local PostgreSQL cluster owned by the project (lake + warehouse databases).

    \b
    Example:
        paynorm dev up      # initdb + start under .paynorm/, writes .paynorm/env
        source .paynorm/env
    """


@dev.command("up")
@click.pass_obj
def dev_up(settings: Settings) -> None:
    """Create (once) and start the local cluster; print the DSNs and write them to .paynorm/env.

    \b
    Example:
        paynorm dev up && source .paynorm/env
    """
    from . import devdb

    try:
        env = devdb.dev_up(settings.home)
    except devdb.DevDBError as e:
        raise click.ClickException(str(e)) from e
    for key, value in env.items():
        click.echo(f"export {key}={value}")


@dev.command("down")
@click.option("--destroy", is_flag=True, help="Also delete the cluster's files.")
@click.pass_obj
def dev_down(settings: Settings, destroy: bool) -> None:
    """Stop the local cluster (and with --destroy, delete it).

    \b
    Example:
        paynorm dev down --destroy
    """
    from . import devdb

    devdb.dev_down(settings.home, destroy=destroy)
    click.echo("stopped" + (" and destroyed" if destroy else ""))


@dev.command("status")
@click.pass_obj
def dev_status(settings: Settings) -> None:
    """Say whether the local cluster exists and runs, and where.

    \b
    Example:
        paynorm dev status
    """
    from . import devdb

    click.echo(devdb.dev_status(settings.home))


@dev.command("seed")
@click.option("--count", default=0, show_default=True, help="Extra generated records besides the fixed sample records.")
@click.pass_obj
def dev_seed(settings: Settings, count: int) -> None:
    """Insert the fixed sample records (and optionally COUNT generated ones) into the local lake.

    \b
    Example:
        paynorm dev seed --count 1000
    """
    from . import devdb

    n = devdb.seed_lake(settings.home, extra=count)
    click.echo(f"inserted {n} records into the lake")


# -- warehouse and consumer -----------------------------------------------------------------------


def _need(settings: Settings, *which: str) -> None:
    from .errors import ConfigError

    missing = [name for name, attr in (("DATALAKE_DATABASE_URL", "lake_dsn"), ("DATABASE_URL", "warehouse_dsn"))
               if attr in which and not getattr(settings, attr)]
    if missing:
        raise ConfigError(f"set {' and '.join(missing)} (or run `paynorm dev up` and source .paynorm/env)")


@cli.command()
@click.option("--analyst-role", metavar="NAME", default=None,
              help="Also create (if missing) the NOLOGIN group role NAME with read access to paynorm_marts "
                   "only (tables dbt creates later included); grant it to analysts' login roles.")
@click.pass_obj
def init(settings: Settings, analyst_role: str | None = None) -> None:
    """Create the warehouse schemas (paynorm, raw) and the landing table; idempotent.

    \b
    Example:
        paynorm init
        paynorm init --analyst-role paynorm_analyst   # then: grant paynorm_analyst to alice
    """
    import psycopg

    from . import rules
    from .landing import init_warehouse

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        init_warehouse(conn)
        rules.ensure_schema(conn)
        if analyst_role:
            from .landing.analyst import ensure_analyst_role

            created = ensure_analyst_role(conn, analyst_role)
    click.echo("warehouse ready: schemas paynorm, raw; tables raw.lake_transactions, paynorm.mappings")
    if analyst_role:
        click.echo(f"analyst role {analyst_role} {'created' if created else 'updated'}: select on paynorm_marts "
                   f"only; grant it to a login role with `grant {analyst_role} to <user>`")


@cli.command()
@once_option("Drain to the lake's current position, then exit 0.")
@env_option("--transport", envvar="PAYNORM_TRANSPORT", type=click.Choice(TRANSPORTS),
            help="stream: the replication protocol; sql: peek + advance (for proxies without it).")
@batch_size_option("Changes per warehouse commit (a huge lake transaction is applied in chunks of this size).")
@interval_option("Seconds between polls of the slot.")
@slot_option()
@table_option()
@payload_column_option
@click.option("--resnapshot", is_flag=True, help="Drop and recreate the slot, then copy the table again.")
@retry_option
@click.pass_obj
def replicate(settings: Settings, once: bool, transport: str, batch_size: int, interval: float, slot: str,
              table: str, payload_column: str, resnapshot: bool, retry_for: float | None = None) -> None:
    """Tail the lake table by logical replication (wal2json) into raw.lake_transactions, exactly once.

    The first run creates the slot and snapshots the existing rows; later runs resume from the
    position stored in the warehouse. SIGTERM/SIGINT finish the batch in flight and exit 0.
    Exit codes: 0 ok, 2 slot lost (use --resnapshot), 3 another consumer holds the slot, 4 configuration.

    \b
    Example:
        paynorm replicate --once                   # cron: drain and exit
        paynorm replicate --transport sql --interval 2
    """
    if retry_for is not None:
        settings.retry_for = retry_for
    from .sources.postgres.replicate import replicate as run

    for attr, value in (("transport", transport), ("batch_size", batch_size), ("interval", interval),
                        ("slot", slot), ("table", table), ("payload_column", payload_column)):
        if value is not None:
            setattr(settings, attr, value)
    _need(settings, "lake_dsn", "warehouse_dsn")
    result = run(settings, once=settings.run_once if once is None else once, resnapshot=resnapshot,
                 stop=_stop_on_signals())
    if result.exit_code:
        click.echo(f"error: {result.message}", err=True)
        sys.exit(result.exit_code)


@cli.command()
@slot_option("Replication slot to check.")
@table_option("Lake table to check.")
@click.pass_obj
def doctor(settings: Settings, slot: str, table: str) -> None:
    """Check every prerequisite and print one actionable line per problem (exit 1 if any).

    \b
    Example:
        paynorm doctor
    """
    from .doctor import run_checks

    settings.slot = slot or settings.slot
    settings.table = table or settings.table
    problems = 0
    for check in run_checks(settings):
        mark = "ok  " if check.ok else ("warn" if check.warning else "FAIL")
        click.echo(f"[{mark}] {check.name}: {check.message}")
        problems += 0 if (check.ok or check.warning) else 1
    sys.exit(1 if problems else 0)


@cli.command()
@click.option("--slot", default=None, help="Show only this replication slot (default: every slot).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(settings: Settings, slot: str | None, as_json: bool) -> None:
    """Slot lag (bytes and seconds), WAL retained, rows landed, last commit seen, snapshot progress.

    \b
    Example:
        paynorm status
    """
    from .ops.status import collect, render

    import psycopg

    from .errors import classify

    _need(settings, "warehouse_dsn")
    try:
        info = collect(settings)
    except psycopg.Error as e:
        raise classify(e, secrets=(settings.warehouse_dsn, settings.lake_dsn)) from None
    if slot:
        info["cdc"] = [s for s in info.get("cdc") or [] if s["slot_name"] == slot]
    click.echo(json.dumps(info, indent=2, default=str) if as_json else render(info))


@cli.command()
@once_option("One full pass, then exit.")
@interval_option("Seconds between polls.")
@table_option()
@payload_column_option
@batch_size_option("Rows per page and warehouse commit.")
@click.option("--safety-lag", type=float, default=300.0, show_default=True,
              help="Seconds re-read behind the watermark, so rows that commit late are not skipped.")
@click.option("--mark-processed", is_flag=True,
              help="The processed-flag protocol: read NOT processed rows and set processed = true in the lake after "
                   "the warehouse commit. The only mode that writes to the lake.")
@retry_option
@click.pass_obj
def poll(settings: Settings, once: bool, interval: float, table: str, payload_column: str, batch_size: int,
         safety_lag: float, mark_processed: bool, retry_for: float | None = None) -> None:
    """Keyset-poll the lake table into raw.lake_transactions (for lakes without logical replication).

    \b
    Example:
        paynorm poll --once                       # cron, e.g. twice a day
        paynorm poll --once --mark-processed      # also flag the landed rows in the lake
    """
    if retry_for is not None:
        settings.retry_for = retry_for
    from .sources.postgres.poll import poll as run_poll

    for attr, value in (("interval", interval), ("table", table), ("payload_column", payload_column),
                        ("batch_size", batch_size)):
        if value is not None:
            setattr(settings, attr, value)
    _need(settings, "lake_dsn", "warehouse_dsn")
    from .errors import EXIT_FAILED

    once = settings.run_once if once is None else once
    # a permanent problem raises ConfigError (exit 4), an outage past the deadline TransientError (exit 1)
    result = run_poll(settings, once=once, mark_processed=mark_processed, safety_lag=safety_lag,
                      stop=_stop_on_signals())
    click.echo(f"polled: {result.rows_read} rows read, {result.rows_written} landed or changed"
               + (f", {result.rows_marked} marked processed" if mark_processed else "")
               + ("; interrupted before the pass ended" if result.stopped else ""))
    if once and result.stopped:  # cron must see that the pass did not finish
        sys.exit(EXIT_FAILED)


# -- the whole job --------------------------------------------------------------------------------


@cli.command()
@once_option("One cycle, then exit; non-zero if a stage failed.")
@env_option("--interval", envvar="PAYNORM_CYCLE_INTERVAL_SECONDS", type=click.FloatRange(min=0),
            help="Seconds between continuous cycles; the CDC consumer streams in between (its own poll "
                 "interval: POLL_INTERVAL_SECONDS).")
@click.option("--source", type=click.Choice(["cdc", "poll", "files"]), default="cdc", show_default=True,
              help="Where rows come from: logical replication, keyset polling, or files.")
@env_option("--path", "files_uri", envvar="PAYNORM_FILES_PATH", default=None,
            help="Folder or s3://bucket/prefix for --source files.")
@click.option("--attempts", type=int, default=3, show_default=True,
              help="Tries per failing dbt or LLM stage (with back-off); the land stage's source retries on its own "
                   "until --retry-for.")
@env_option("--metrics-port", envvar="PAYNORM_METRICS_PORT", type=click.IntRange(0, 65535), default=None,
            help="Serve Prometheus /metrics, /healthz and /readyz on this port (default: no server).")
@env_option("--metrics-addr", envvar="PAYNORM_METRICS_ADDR", default="0.0.0.0",
            help="Address the metrics server listens on.")
@retry_option
@click.pass_obj
def run(settings: Settings, once: bool | None, interval: float | None, source: str, files_uri: str | None,
        attempts: int, metrics_port: int | None, metrics_addr: str, retry_for: float | None = None) -> None:
    """The whole job: land (cdc | poll | files) -> dbt staging+intermediate -> LLM step -> dbt marts.

    Each cycle is recorded in paynorm.runs. With --once (cron, Kubernetes CronJob) the exit code is
    1 when a stage failed after its retries; landed data is never lost. Without it cycles repeat and
    the CDC consumer streams between them. SIGTERM/SIGINT end after the stage in flight.

    \b
    Example:
        paynorm run --once                              # cron: 0 0,12 * * *
        paynorm run --interval 300 --metrics-port 9108  # continuous, scraped by Prometheus
        paynorm run --once --source files --path s3://lake/payments/
    """
    if retry_for is not None:
        settings.retry_for = retry_for
    from .pipeline import Pipeline

    _need(settings, "warehouse_dsn", *(("lake_dsn",) if source != "files" else ()))
    if interval is not None:
        settings.cycle_interval = interval
    if metrics_port is not None:
        from .ops import metrics

        metrics.serve(settings, metrics_port, metrics_addr)
    pipeline = Pipeline(settings, source=source, files_uri=files_uri, stop=_stop_on_signals(), attempts=attempts)
    sys.exit(pipeline.run(once=settings.run_once if once is None else once, interval=settings.cycle_interval))


@cli.command()
@click.option("--generate", "count", type=int, required=True, help="Records to generate.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed (same seed, same records).")
@click.option("--days", type=int, default=30, show_default=True, help="Spread the records over this many days before a fixed anchor date.")
@click.option("--dsn", default=None, help="Lake DSN allowed to INSERT (default: the `paynorm dev` cluster's lake).")
@click.option("--jsonl", "jsonl", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the records to this JSON Lines file instead of the lake.")
@click.pass_obj
def demo(settings: Settings, count: int, seed: int, days: int, dsn: str | None, jsonl: str | None) -> None:
    """Generate a realistic lake: every built-in shape, realistic outcomes, unknown shapes, broken payloads.

    \b
    Example:
        paynorm demo --generate 20000
        paynorm demo --generate 1000 --jsonl /tmp/lake.jsonl
    """
    import psycopg

    from . import devdb
    from .demo import generate_records, insert_records, write_jsonl

    records = generate_records(count, seed=seed, days=days)
    if jsonl:
        with open(jsonl, "w") as out:
            n = write_jsonl(records, out)
        click.echo(f"wrote {n:,} records to {jsonl}")
        return
    target = dsn or devdb.Cluster(settings.home / "pg").dsn("lake")
    with psycopg.connect(target, autocommit=True) as conn:
        n = insert_records(conn, records)
    click.echo(f"inserted {n:,} records into the lake")


# -- normalization --------------------------------------------------------------------------------


@cli.group("mappings")
def mappings_group() -> None:
    """Mapping rules: YAML files in mappings/, loaded into paynorm.mappings, compiled to SQL by dbt.

    \b
    Example:
        paynorm mappings validate && paynorm mappings sync && paynorm mappings list
    """


@mappings_group.command("validate")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Folder of rule files (default: the repo's mappings/).")
@click.option("--offline", is_flag=True, help="Schema checks only; do not compile paths in PostgreSQL.")
@click.pass_obj
def mappings_validate(settings: Settings, directory: str | None, offline: bool) -> None:
    """Check every rule file against the schema and compile its paths in PostgreSQL (exit 1 on errors).

    \b
    Example:
        paynorm mappings validate
    """
    import psycopg

    from . import rules

    directory = directory or str(rules.DEFAULT_DIR)
    if offline or not settings.warehouse_dsn:
        problems = rules.validate_files(directory)
    else:
        with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
            problems = rules.validate_files(directory, conn=conn)
    bad = {f: errs for f, errs in problems.items() if errs}
    for f, errs in bad.items():
        for err in errs:
            click.echo(f"{f}: {err}")
    click.echo(f"{len(bad)} invalid rule file(s)" if bad else "all rule files valid")
    sys.exit(1 if bad else 0)


@mappings_group.command("test")
@click.argument("rule_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--sample", type=int, default=10, show_default=True, help="Rows shown, every status first.")
@click.pass_obj
def mappings_test(settings: Settings, rule_file: str, sample: int) -> None:
    """What a rule would capture in the warehouse now: rows, collisions with active rules, statuses,
    a sample of amounts (compiled by the build's own macros; run `paynorm transform` first).

    Exit 1 when the rule is invalid or collides with an active rule.

    \b
    Example:
        paynorm mappings test mappings/acmepay_payment.yml
    """
    from . import rules
    from .transform import TransformError

    _need(settings, "warehouse_dsn")
    try:
        rule = rules.parse_rule(Path(rule_file).read_text(), name=rule_file)
        report = rules.authoring.test_rule(settings.warehouse_dsn, rule, home=settings.home, sample=sample,
                                     project_dir=settings.dbt_project_dir or None)
    except (rules.MappingError, TransformError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(report.render())
    sys.exit(0 if report.ok else 1)


@mappings_group.command("scaffold")
@click.argument("rule_id")
@click.argument("payload_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--case", required=True, help="Fixture name suffix: <rule_id>__<case>.json.")
@click.option("--description", required=True, help="What the case shows, and where the payload comes from.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Folder of rule files (default: the built-in mappings/).")
@click.option("--overwrite", is_flag=True, help="Replace an existing fixture of that name.")
@click.pass_obj
def mappings_scaffold(settings: Settings, rule_id: str, payload_file: str, case: str, description: str,
                      directory: str | None, overwrite: bool) -> None:
    """Write a fixture for RULE_ID whose expected values are what the build makes of PAYLOAD_FILE
    (on a scratch cluster), for you to review: the expected block is a claim, correct the rule
    until every value is right.

    PAYLOAD_FILE holds the payload as the lake stores it: a JSON document, or any other text (XML,
    name=value...) which is stored as a string.

    \b
    Example:
        paynorm mappings scaffold stripe_charge charge.json --case refunded --description "Stripe docs: a refunded charge"
    """
    from . import rules
    from .jsonutil import loads_exact

    text = Path(payload_file).read_text()
    try:
        raw = loads_exact(text)  # numbers stay exact (Decimal), never floats
    except ValueError:
        raw = text
    try:
        path, fixture = rules.authoring.scaffold_fixture(rule_id, raw, case=case, description=description,
                                                   directory=directory or rules.DEFAULT_DIR, settings=settings,
                                                   overwrite=overwrite)
    except rules.MappingError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {path}; review every expected value:")
    click.echo(json.dumps(fixture["expected"], indent=2, ensure_ascii=False))


@mappings_group.command("sync")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Folder of rule files (default: the repo's mappings/).")
@click.option("--prune", is_flag=True, help="Reject built-in rules whose file is gone.")
@click.pass_obj
def mappings_sync(settings: Settings, directory: str | None, prune: bool) -> None:
    """Load mappings/*.yml into paynorm.mappings, refusing invalid rules with the reason.

    \b
    Example:
        paynorm mappings sync
    """
    import psycopg

    from . import rules

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        rules.ensure_schema(conn)
        result = rules.sync(conn, directory or rules.DEFAULT_DIR, prune=prune)
    for rid, errs in sorted(result.refused.items()):
        click.echo(f"refused {rid}: {'; '.join(errs)}")
    click.echo(result.summary())
    sys.exit(0 if result.ok else 1)


@mappings_group.command("list")
@click.option("--status", type=click.Choice(["active", "proposed", "rejected"]), default=None)
@click.option("--origin", type=click.Choice(["builtin", "llm", "user"]), default=None)
@click.pass_obj
def mappings_list(settings: Settings, status: str | None, origin: str | None) -> None:
    """List rules in match order (priority, then id).

    \b
    Example:
        paynorm mappings list --status active
    """
    import psycopg

    from . import rules

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        rules.ensure_schema(conn)
        listed = rules.list_rules(conn, status=status, origin=origin)
    click.echo(f"{'id':<40} {'provider':<16} {'prio':>4} {'status':<9} {'origin':<8} formats")
    for r in listed:
        click.echo(f"{r['id']:<40} {str(r['provider'] or '-'):<16} {r['priority']:>4} {r['status']:<9} "
                   f"{r['origin']:<8} {','.join(r['formats'] or [])}")
    click.echo(f"{len(listed)} rule(s)")


@mappings_group.command("show")
@click.argument("rule_id")
@click.pass_obj
def mappings_show(settings: Settings, rule_id: str) -> None:
    """Print one rule as YAML, with its status and origin.

    \b
    Example:
        paynorm mappings show stripe_charge
    """
    import psycopg

    from . import rules

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        rules.ensure_schema(conn)
        row = rules.get_rule(conn, rule_id)
    if row is None:
        raise click.ClickException(f"no rule {rule_id!r} (run `paynorm mappings sync`)")
    click.echo(f"# status: {row['status']}, origin: {row['origin']}, hash: {row['rule_hash']}")
    click.echo(rules.rule_to_yaml(row["rule"]))


@cli.command()
@click.option("--select", "select", multiple=True, help="dbt selector (repeatable), e.g. marts.")
@click.option("--full-refresh", is_flag=True, help="Rebuild incremental models from scratch.")
@click.option("--no-sync", is_flag=True, help="Do not sync mappings/*.yml before building.")
@click.option("--unit-tests", is_flag=True,
              help="Run the dbt unit tests too (fixture inputs, not data: for development and CI).")
@click.pass_obj
def transform(settings: Settings, select: tuple[str, ...], full_refresh: bool, no_sync: bool,
              unit_tests: bool) -> None:
    """Sync the mapping rules and run `dbt build` in-process (profile built from DATABASE_URL).

    \b
    Example:
        paynorm transform
        paynorm transform --select marts --full-refresh
    """
    from . import transform as tf

    _need(settings, "warehouse_dsn")
    try:
        result = tf.transform(settings.warehouse_dsn, home=settings.home, select=list(select) or None,
                              full_refresh=full_refresh, sync_rules=not no_sync, unit_tests=unit_tests)
    except tf.TransformError as e:
        raise click.ClickException(str(e)) from e
    click.echo(result.summary())
    sys.exit(0 if result.success else 1)


@cli.command()
@click.pass_obj
def summary(settings: Settings) -> None:
    """A short report of the marts: outcomes, approval rate per provider, volume per currency, quarantine reasons.

    \b
    Example:
        paynorm summary
    """
    from .report import render_summary

    _need(settings, "warehouse_dsn")
    click.echo(render_summary(settings.warehouse_dsn))


@cli.command()
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Write the report to this file: one self-contained HTML page (inline CSS and SVG, opens offline).")
@click.pass_obj
def report(settings: Settings, html_path: str) -> None:
    """Charts and tables of the marts: approval rate, decline reasons, volume per currency, latency, coverage.

    Reads the marts in DATABASE_URL; run `paynorm run --once` (or `paynorm transform`) first.

    \b
    Example:
        paynorm report --html .paynorm/report.html
    """
    from .report_html import write_html

    _need(settings, "warehouse_dsn")
    click.echo(f"wrote {write_html(settings.warehouse_dsn, html_path)}")


@cli.command("eval")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--with-llm", is_flag=True, help="Also run the LLM step (OPENAI_API_KEY, OPENAI_BASE_URL).")
@env_option("--mappings-dir", envvar="PAYNORM_MAPPINGS_DIR", type=click.Path(file_okay=False), default=None,
            help="Score these rule files instead of the built-in ones.")
@click.option("--min-coverage", type=float, default=0.0, show_default=True,
              help="Exit 1 when fewer records than this percentage are normalized.")
@click.option("--min-status", type=float, default=0.0, show_default=True,
              help="Exit 1 when fewer normalized statuses than this percentage are correct.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--quiet", is_flag=True, help="Only the figures, not every wrong or unnormalized row.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Run the scratch cluster in this folder and keep it (for inspection).")
@click.pass_obj
def eval_cmd(settings: Settings, corpus: str, with_llm: bool, mappings_dir: str | None, min_coverage: float,
             min_status: float, as_json: bool, quiet: bool, keep: str | None) -> None:
    """Score the normalization against a labelled JSONL corpus, on scratch databases.

    Exit 1 below --min-coverage / --min-status, on any wrong amount or currency, or on a lost row.

    \b
    Example:
        paynorm eval ../shared/corpus/real_payloads.jsonl --min-coverage 95 --min-status 99
    """
    from . import evaluation

    try:
        report = evaluation.evaluate(corpus, with_llm=with_llm, mappings_dir=mappings_dir, work_dir=keep,
                                     keep=keep is not None, settings=settings)
    except evaluation.EvalError as e:
        raise click.ClickException(str(e)) from e
    failures = report.failures(min_coverage=min_coverage, min_status=min_status)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "failures": failures}, indent=2, default=str))
    else:
        click.echo(report.render(details=not quiet))
        for f in failures:
            click.echo(f"FAIL: {f}")
    sys.exit(1 if failures else 0)


# -- files source --------------------------------------------------------------------------------


@cli.command()
@click.argument("path_or_uri", required=False)
@once_option("One pass over the files, then exit.")
@interval_option("Seconds between passes in continuous mode.")
@env_option("--prefix", envvar="PAYNORM_FILES_PREFIX", default="",
            help="Only paths (relative to PATH_OR_URI) starting with this, e.g. 2024/06/.")
@env_option("--glob", "pattern", envvar="PAYNORM_FILES_GLOB", default="",
            help="fnmatch pattern on the relative path, '*' crosses folders, e.g. '*.jsonl' (default: every file).")
@env_option("--format", "fmt", envvar="PAYNORM_FILES_FORMAT",
            type=click.Choice(["auto", "json", "jsonl", "csv", "parquet"]),
            help="File format; auto picks it by extension and ignores other files.")
@env_option("--endpoint-url", envvar="PAYNORM_S3_ENDPOINT_URL", default="",
            help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 for MinIO (boto3 also reads "
                 "AWS_ENDPOINT_URL_S3; default: AWS).")
@env_option("--files-are-lake-export", "lake_export", envvar="PAYNORM_FILES_ARE_LAKE_EXPORT", is_flag=True,
            default=False,
            help="The files are the lake's own export: a record may rewrite, revive or tombstone a row that CDC "
                 "or poll landed with the same id (default: it never does).")
@retry_option
@click.pass_obj
def load(settings: Settings, path_or_uri: str | None, once: bool, interval: float, prefix: str, pattern: str,
         fmt: str, endpoint_url: str, lake_export: bool, retry_for: float | None = None) -> None:
    """Load JSON / JSONL / CSV / Parquet files from a folder or s3://bucket/prefix into raw.lake_transactions.

    Each file is tracked in paynorm.processed_files and loaded once per content version, in one
    warehouse transaction with its tracking row; unchanged files are skipped without being read, a
    changed file replaces its records. Bad files are recorded as failed and the others go on.
    PATH_OR_URI defaults to PAYNORM_FILES_PATH.
    S3 needs `pip install 'paynorm[s3]'` (credentials and region from the AWS_* variables), Parquet
    `pip install 'paynorm[parquet]'`. Exit codes: 0 ok, 1 a file failed in this pass, 4 configuration.

    \b
    Example:
        paynorm load ./exports --once                        # a local folder, recursively
        paynorm load s3://payments-lake/raw/ --once --format jsonl
        paynorm load s3://lake/raw --endpoint-url http://127.0.0.1:9000 --interval 43200   # MinIO, twice a day
    """
    if retry_for is not None:
        settings.retry_for = retry_for
    from .sources.files import load as run_load

    if lake_export:
        settings.files_are_lake_export = True
    _need(settings, "warehouse_dsn")
    result = run_load(settings, path_or_uri, once=settings.run_once if once is None else once, interval=interval,
                      prefix=prefix, fmt=fmt, pattern=pattern, endpoint_url=endpoint_url, stop=_stop_on_signals())
    click.echo(result.stats.summary())
    for key, error in result.stats.failures:
        click.echo(f"failed: {key}: {error}", err=True)
    if result.exit_code:
        click.echo(f"error: {result.message}", err=True)
        sys.exit(result.exit_code)


# -- the LLM step ---------------------------------------------------------------------------------


@cli.command("llm")
@click.option("--dry-run", is_flag=True, help="Print, per shape, the row count and the exact request; call nothing.")
@env_option("--max-calls", envvar="PAYNORM_LLM_MAX_CALLS", type=click.IntRange(min=0),
            help="Most HTTP requests this run, retries and repairs included.")
@env_option("--max-tokens", envvar="PAYNORM_LLM_MAX_TOKENS", type=click.IntRange(min=0),
            help="Most tokens (prompt + completion) this run.")
@click.option("--retry-unmappable", is_flag=True, help="Ask again about shapes marked unmappable or rejected.")
@click.pass_obj
def llm_cmd(settings: Settings, dry_run: bool, max_calls: int, max_tokens: int,
            retry_unmappable: bool) -> None:
    """Ask an OpenAI-compatible model for ONE mapping rule per payload shape no rule matches.

    Rows are grouped by shape; each shape not tried yet costs one request (plus one repair round
    if the rule fails validation). Accepted rules are active at once (or proposed when
    PAYNORM_LLM_AUTO_ACTIVATE=false); run `paynorm transform` afterwards to normalize the rows.
    Without OPENAI_API_KEY it prints how many rows and shapes wait and exits 0.

    \b
    Example:
        paynorm llm --dry-run                 # what would be sent, per shape
        OPENAI_BASE_URL=http://127.0.0.1:11434/v1 paynorm llm --max-calls 10
        paynorm llm && paynorm transform
    """
    from . import llm

    _need(settings, "warehouse_dsn")
    try:
        result = llm.run_llm_step(settings.warehouse_dsn, settings, dry_run=dry_run, max_calls=max_calls,
                                  max_tokens=max_tokens, retry_unmappable=retry_unmappable)
    except llm.LlmError as e:
        raise click.ClickException(str(e)) from e
    for item in result.requests:
        click.echo(f"# shape {item['shape_key']} ({item['payload_format']}): {item['rows']} row(s); request:")
        click.echo(json.dumps(item["request"], indent=2, ensure_ascii=False))
    for s in result.shapes:
        if s.outcome in ("unmappable", "waiting") and s.errors:
            click.echo(f"shape {s.shape_key}: {s.outcome}: {'; '.join(s.errors)[:500]}", err=True)
    click.echo(result.summary())


@mappings_group.command("review")
@click.option("--samples", default=3, show_default=True, help="Sample rows shown per rule.")
@click.pass_obj
def mappings_review(settings: Settings, samples: int) -> None:
    """List the proposed rules with sample rows before (redacted payload) and after (canonical values).

    \b
    Example:
        PAYNORM_LLM_AUTO_ACTIVATE=false paynorm llm
        paynorm mappings review
    """
    import psycopg

    from . import llm

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        click.echo(llm.render_review(llm.review(conn, settings, limit=samples)))


def _rule_action(settings: Settings, rule_id: str, action: str) -> None:
    import psycopg

    from . import llm, rules

    _need(settings, "warehouse_dsn")
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        rules.ensure_schema(conn)
        try:
            if action == "export":
                click.echo(llm.export_yaml(conn, rule_id), nl=False)
                return
            (llm.approve if action == "approve" else llm.reject)(conn, rule_id)
        except rules.MappingError as e:
            raise click.ClickException(str(e)) from e
    click.echo(f"{rule_id}: {'active' if action == 'approve' else 'rejected'}; run `paynorm transform` to apply")


@mappings_group.command("approve")
@click.argument("rule_id")
@click.pass_obj
def mappings_approve(settings: Settings, rule_id: str) -> None:
    """Activate a proposed rule; the next `paynorm transform` normalizes its rows.

    \b
    Example:
        paynorm mappings approve llm_acmepay_3f2a9c1d0b7e4a56
    """
    _rule_action(settings, rule_id, "approve")


@mappings_group.command("reject")
@click.argument("rule_id")
@click.pass_obj
def mappings_reject(settings: Settings, rule_id: str) -> None:
    """Reject a rule; its shape is not asked about again unless `paynorm llm --retry-unmappable`.

    \b
    Example:
        paynorm mappings reject llm_acmepay_3f2a9c1d0b7e4a56
    """
    _rule_action(settings, rule_id, "reject")


@mappings_group.command("export")
@click.argument("rule_id")
@click.pass_obj
def mappings_export(settings: Settings, rule_id: str) -> None:
    """Print a rule as YAML, ready to commit as mappings/<id>.yml.

    \b
    Example:
        paynorm mappings export llm_acmepay_3f2a9c1d0b7e4a56 > mappings/llm_acmepay_3f2a9c1d0b7e4a56.yml
    """
    _rule_action(settings, rule_id, "export")


def main() -> None:
    cli(prog_name="paynorm")


if __name__ == "__main__":
    main()
