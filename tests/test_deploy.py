"""Deployment files: what can be checked without a Docker engine or a Kubernetes cluster."""

from __future__ import annotations

import re
import shlex

import yaml
from click.testing import CliRunner

from consumer.cli import cli

from .conftest import REPO

DEPLOY = REPO / "deploy"


def _valid_invocation(args: list[str]) -> None:
    """The arguments parse as a real paynorm command (options exist, values have the right types)."""
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, f"paynorm {' '.join(args)}: {result.output}"
    with cli.make_context("paynorm", list(args)) as ctx:  # global options parsed, the rest left in ctx.args
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # click 8.2+ keeps the subcommand apart
        name, command, sub_args = cli.resolve_command(ctx, rest)
        assert command is not None, args
        command.make_context(name, sub_args, parent=ctx)  # raises on an unknown option or a bad value


def test_kubernetes_manifests() -> None:
    docs = {}
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert docs.keys() == {"Secret", "Deployment", "CronJob"}
    assert docs["Secret"]["stringData"].keys() == {"DATALAKE_DATABASE_URL", "DATABASE_URL", "OPENAI_API_KEY"}
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    cron = docs["CronJob"]["spec"]
    assert cron["schedule"] == "0 0,12 * * *" and cron["concurrencyPolicy"] == "Forbid"
    for pod in (deployment["template"]["spec"], cron["jobTemplate"]["spec"]["template"]["spec"]):
        container = pod["containers"][0]
        assert container["envFrom"][0]["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
        _valid_invocation(container["args"])
    assert "--once" in cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_systemd_unit_and_crontab_run_real_commands() -> None:
    unit = (DEPLOY / "systemd" / "paynorm.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)  # type: ignore[union-attr]
    _valid_invocation(shlex.split(exec_start)[1:])
    assert "KillSignal=SIGTERM" in unit and "Restart=on-failure" in unit
    line = next(l for l in (DEPLOY / "cron" / "paynorm.crontab").read_text().splitlines()
                if l and not l.startswith("#"))
    assert line.startswith("0 0,12 * * * ")
    command = line.split("bin/paynorm ", 1)[1].split(">>")[0]
    _valid_invocation(shlex.split(command))


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    entry = re.search(r'^CMD \[(.*)\]$', dockerfile, re.M).group(1)  # type: ignore[union-attr]
    _valid_invocation([a.strip().strip('"') for a in entry.split(",")])


def test_a_non_editable_install_finds_its_project_data(tmp_path) -> None:
    """The wheel carries the dbt project, the rules with their fixtures and the prompts, and the
    installed package finds them (importlib.resources), not the source checkout."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("paynorm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("paynorm_project/dbt_project.yml", "paynorm_project/models/marts/normalized_payment_events.sql",
                   "paynorm_project/macros/rules/paynorm_convert.sql", "paynorm_project/seeds/currencies.csv",
                   "paynorm_project/mappings/schema.json", "paynorm_project/mappings/stripe_charge.yml",
                   "paynorm_project/mappings/fixtures/stripe_charge__succeeded.json",
                   "paynorm_project/prompts/mapping_rule_v1.md", "consumer/sql/mappings.sql"):
        assert needed in names, needed
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import consumer.resources as r, consumer.rules as rules; "
             "print(r.project_dir()); print(len(rules.load_rule_files()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(site / "paynorm_project") and int(out[1]) == len(list((REPO / "mappings").glob("*.yml")))
