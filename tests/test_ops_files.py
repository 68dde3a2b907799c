"""Checks of the deployment files: Prometheus, Alertmanager, Grafana, compose, Dockerfile.

promtool and amtool (Debian's prometheus and prometheus-alertmanager packages) validate
and unit-test the monitoring configuration; the rest checks the properties that
docs/deploy.md promises. The compose and scrape-config checks parse YAML with PyYAML and
are skipped, with that reason, where it is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reelfeed.cli import build_parser
from reelfeed.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIGS = ("prometheus.yml", "prometheus.local.yml")
ALERTMANAGER = ROOT / "ops" / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "reelfeed.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

#: Role services of the compose file and the `reelfeed` subcommand each runs.
ROLES = {
    "ingest": "ingest",
    "learn": "learn",
    "server": "serve",
    "sim": "sim",
    "relay": "relay",
}

#: REELFEED_* names the compose file gives to roles whose subcommand is not written yet;
#: they are to be added to Settings with it (docs/deploy.md, "Settings").
#: Settings the compose file may pass before the code reads them (none at the moment).
PLANNED_SETTINGS: set[str] = set()

#: Names a query may use besides the contract: Prometheus' own series.
BUILTIN_SERIES = {"up", "ALERTS"}

SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_?KEY|CREDENTIAL", re.IGNORECASE)
REQUIRED_INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; `make setup` installs it)",
)
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (Debian package prometheus-alertmanager; `make setup`)",
)


def _run(tool: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    assert tool is not None
    return subprocess.run(
        [tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def yaml() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "yaml", reason="PyYAML is not installed: add pyyaml to the dev extras to run this check"
    )
    return module


def _load_yaml(yaml: ModuleType, path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- PromQL helpers --------------------------------------------------------------------

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_NOT_METRICS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (functions, labels and keywords left out).

    >>> sorted(metric_names('sum by (job) (rate(a_total{x="y"}[5m])) / b offset 30m > 0.5'))
    ['a_total', 'b']
    >>> sorted(metric_names('histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m])))'))
    ['h_bucket']
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() not in _NOT_METRICS:
            names.add(match.group())
    return names


def family(series: str) -> str:
    """The metric a series name belongs to: histogram parts map to the histogram."""
    return re.sub(r"_(bucket|sum|count)$", "", series)


def contract_table() -> dict[str, tuple[str, set[str], str]]:
    """The table under "### Metric contract" in docs/deploy.md: name -> type, labels, role."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    section = text.split("### Metric contract", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`reelfeed_\w+`", cells[0]):
            labels = set(re.findall(r"`(\w+)`", cells[2].split(" (")[0]))
            rows[cells[0].strip("`")] = (cells[1], labels, cells[3])
    return rows


def contract_metrics() -> set[str]:
    return set(contract_table())


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]))


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", ALERTS.read_text(encoding="utf-8"), re.MULTILINE)


# --- Prometheus and Alertmanager, with their own tools --------------------------------


@needs_promtool
def test_alert_rules_are_valid() -> None:
    result = _run(PROMTOOL, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@needs_promtool
def test_alert_rule_unit_tests_pass() -> None:
    result = _run(PROMTOOL, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS)
def test_prometheus_config_is_valid(config: str) -> None:
    result = _run(PROMTOOL, "check", "config", str(PROMETHEUS_DIR / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    # Each query becomes a recording rule, which promtool parses; Grafana's own
    # variable gets a concrete range first.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        lines += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines).replace("$__rate_interval", "5m") + "\n")
    result = _run(PROMTOOL, "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
def test_alertmanager_config_is_valid() -> None:
    result = _run(AMTOOL, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert routes somewhere: critical ones to their own receiver.
    for severity, receiver in (("critical", "reelfeed-critical"), ("warning", "reelfeed-default")):
        routed = _run(
            AMTOOL,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"severity={severity}",
            "alertname=ReelfeedTargetDown",
        )
        assert routed.returncode == 0, routed.stdout + routed.stderr
        assert routed.stdout.split() == [receiver]


def test_every_alert_has_a_firing_and_a_quiet_rule_test(yaml: ModuleType) -> None:
    tests = _load_yaml(yaml, ALERTS_TEST)
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(alert_names())
    assert alerts == {
        "ReelfeedTargetDown",
        "RecommendLatencyP99High",
        "RecommendFallbackShareHigh",
        "IngestRejectedShareHigh",
        "IngestConsumerLagGrowing",
        "LearnerHitRateDropped",
        "RelayStalled",
    }
    assert alerts - fires == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


# --- The metric contract --------------------------------------------------------------


def test_docs_list_the_metric_contract() -> None:
    assert contract_metrics() == {
        "reelfeed_server_request_latency_seconds",
        "reelfeed_server_requests_total",
        "reelfeed_server_fallbacks_total",
        "reelfeed_server_connections",
        "reelfeed_server_connections_rebalanced_total",
        "reelfeed_ingest_lines_total",
        "reelfeed_ingest_rejected_total",
        "reelfeed_ingest_events_total",
        "reelfeed_ingest_replayed_total",
        "reelfeed_ingest_consumer_lag",
        "reelfeed_ingest_batch_seconds",
        "reelfeed_learn_prequential_hit_rate",
        "reelfeed_learn_events_total",
        "reelfeed_learn_skipped_total",
        "reelfeed_learn_batch_seconds",
        "reelfeed_learn_checkpoint_seconds",
        "reelfeed_learn_matrix_revision",
        "reelfeed_learn_prequential_tests_total",
        "reelfeed_learn_prequential_hits_total",
        "reelfeed_learn_consumer_lag",
        "reelfeed_ingest_profile_lookups_total",
        "reelfeed_ingest_profile_fetches_total",
        "reelfeed_relay_lines_total",
        "reelfeed_relay_errors_total",
        "reelfeed_relay_source_timestamp_seconds",
    }


def test_stream_code_exports_the_contract_metrics() -> None:
    # The ingest and learn workers' metrics; the server's and the simulator's join later.
    from prometheus_client.metrics import MetricWrapperBase

    import stream.metrics

    exported = {}
    for value in vars(stream.metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            exported[name] = (value._type, set(value._labelnames))
    documented = {
        name: (kind, labels)
        for name, (kind, labels, role) in contract_table().items()
        if role in {"ingest", "learn", "relay"}
    }
    assert len(documented) >= 4
    assert exported == documented


def test_alert_rules_use_only_contract_metrics() -> None:
    used = {family(name) for name in re.findall(r"\breelfeed_\w+", ALERTS.read_text())}
    assert used, "no reelfeed metric in the rules"
    assert used - contract_metrics() == set()


def test_dashboard_uses_only_contract_metrics_and_shows_each() -> None:
    used = {family(name) for expr in dashboard_exprs() for name in metric_names(expr)}
    contract = contract_metrics()
    assert used - contract - BUILTIN_SERIES == set(), "not in docs/deploy.md's contract"
    assert contract - used == set(), "contract metrics without a panel"


def test_dashboard_uses_the_provisioned_datasource(yaml: ModuleType) -> None:
    provisioned = _load_yaml(yaml, GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {datasource["uid"]}
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)), "duplicate panel ids"


# --- Scrape configurations ------------------------------------------------------------


def _scrape_targets(yaml: ModuleType, config: str) -> dict[str, list[str]]:
    targets: dict[str, list[str]] = {}
    for job in _load_yaml(yaml, PROMETHEUS_DIR / config)["scrape_configs"]:
        found = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        found += [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        targets[job["job_name"]] = found
    return targets


def test_scrape_targets_match_the_ports_of_the_roles(yaml: ModuleType) -> None:
    defaults = Settings()
    ports = {
        "server": defaults.server_port,
        "ingest": defaults.ingest_metrics_port,
        "learn": 9202,
        "sim": 8080,
    }
    compose = _scrape_targets(yaml, "prometheus.yml")
    local = _scrape_targets(yaml, "prometheus.local.yml")
    # The local stack scrapes a relay only when one runs (reelfeed.supervise adds it).
    assert set(compose) == set(local) | {"relay"}
    assert compose["relay"] == [f"relay:{defaults.relay_metrics_port}"]
    for job, port in ports.items():
        assert compose[job] == [f"{job}:{port}"]
        assert local[job] == [f"127.0.0.1:{port}"]
    assert all(t.startswith("127.0.0.1:") for targets in local.values() for t in targets)


# --- docker-compose.yml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose(yaml: ModuleType) -> dict[str, Any]:
    loaded: dict[str, Any] = _load_yaml(yaml, COMPOSE)
    return loaded


def _interpolate(value: str) -> str:
    """A compose value as a container sees it with no .env: defaults in, required set."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "set-in-env", value)


def _image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return name, tag


def test_every_published_port_binds_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert published >= 6


def test_roles_share_one_image_and_pick_their_command(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[role]["image"] for role in ROLES}
    assert len(images) == 1
    (image,) = images
    assert "reelfeed" in image
    assert {name for name, s in services.items() if s.get("image") == image} == set(ROLES)
    for role, command in ROLES.items():
        assert services[role]["command"][0] == command
        assert services[role]["build"]["context"] == "."


def test_role_settings_exist_where_the_role_exists(compose: dict[str, Any]) -> None:
    subcommands = next(
        set(action.choices)
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    settings = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert PLANNED_SETTINGS & settings == set(), "now in Settings: drop it from PLANNED_SETTINGS"
    assert "ingest" in subcommands
    for role, command in ROLES.items():
        env = compose["services"][role]["environment"]
        names = {key for key in env if key.startswith(PREFIX)}
        assert names - settings - PLANNED_SETTINGS == set(), f"{role}: unknown settings"
        if command in subcommands:
            # An unknown or malformed REELFEED_* variable stops a process at start.
            assert names - settings == set(), f"{role} runs today: only existing settings"
            resolved = {key: _interpolate(str(env[key])) for key in names}
            assert Settings.from_env(resolved).kafka_bootstrap == "kafka:19092"
    server = compose["services"]["server"]["environment"]
    assert server["REELFEED_SERVER_HOST"] == "0.0.0.0"
    assert Settings().server_host == "127.0.0.1"


def test_kafka_is_the_pinned_39_release_in_kraft_mode(compose: dict[str, Any]) -> None:
    pom = (ROOT / "ops" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    kafka_images = {
        s["image"] for s in compose["services"].values() if "kafka" in s.get("image", "")
    }
    assert kafka_images == {f"apache/kafka:{match.group(1)}"}
    (image,) = kafka_images
    assert re.fullmatch(r"3\.9\.\d+", _image_tag(image)[1])
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert int(env[key]) == 1, key
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:19092" in advertised
    for role in ROLES:
        env = compose["services"][role]["environment"]
        assert env["REELFEED_KAFKA_BOOTSTRAP"] == "kafka:19092"


def test_topics_service_creates_the_topics_of_the_settings(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["topics"]["command"])
    defaults = Settings()
    for topic in (defaults.events_topic, defaults.rejected_topic, defaults.recommendations_topic):
        assert f"{topic}:" in script
    assert "--if-not-exists" in script
    assert compose["services"]["topics"]["environment"]["RAW_TOPIC"] == (
        "${REELFEED_RAW_TOPIC:-" + defaults.raw_topic + "}"
    )


def test_roles_start_after_healthy_infrastructure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for role in ROLES:
        after = services[role]["depends_on"]
        assert after["kafka"]["condition"] == "service_healthy"
        assert after["redis"]["condition"] == "service_healthy"
        assert after["topics"]["condition"] == "service_completed_successfully"
    # The simulator calls the server: it waits until the server answers.
    assert services["sim"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["redis"]["image"].startswith("redis:7")
    # A service_healthy dependency on a service without a health check never starts.
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
    assert "8082/health" in " ".join(services["server"]["healthcheck"]["test"])
    assert all("healthcheck" not in services[r] for r in ROLES if r != "server")


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping, please"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                checked += 1
                assert REQUIRED_INTERPOLATION.match(str(value)), f"{name}: {key} is literal"
        assert "env_file" not in service, f"{name}: env_file would pass .env to the container"
    assert checked >= 2
    # The example env file names the secrets but holds none.
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#") and SECRET_NAME.search(key):
            assert value.strip() == "", f".env.example: {key} has a value"


def test_monitoring_mounts_match_the_configs(compose: dict[str, Any], yaml: ModuleType) -> None:
    services = compose["services"]
    assert "./ops/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "./ops/alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    dashboards = _load_yaml(yaml, GRAFANA / "provisioning" / "dashboards" / "reelfeed.yml")
    (provider,) = dashboards["providers"]
    mount = f"./ops/grafana/dashboards:{provider['options']['path']}:ro"
    assert mount in services["grafana"]["volumes"]
    assert (
        "./ops/grafana/provisioning:/etc/grafana/provisioning:ro"
        in (services["grafana"]["volumes"])
    )


# --- Dockerfile and .dockerignore -----------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_one_non_root_image_from_python_311_slim() -> None:
    instructions = _dockerfile_instructions()
    first_from = next(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    args = dict(
        rest.split("=", 1) for kw, rest in instructions[:first_from] if kw == "ARG" and "=" in rest
    )
    stages = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    for i in stages:
        image = instructions[i][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert image == "python:3.11-slim"
    runtime = instructions[stages[-1] :]
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}
    build_users = [rest for kw, rest in instructions[: stages[-1]] if kw == "USER"]
    assert build_users and build_users[-1] not in {"root", "0"}, "pip runs as root"
    runs = [rest for kw, rest in instructions if kw == "RUN"]
    assert any("pip install -c constraints.txt ." in run for run in runs)
    assert ("ENTRYPOINT", '["reelfeed"]') in runtime
    # One image, four roles: a health check would only fit the server (compose has it).
    assert all(kw != "HEALTHCHECK" for kw, _ in instructions)


def test_dockerignore_admits_exactly_the_packages() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "*", "an allowlist keeps .env, .git and var/ out of the context"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert admitted == packages | {"pyproject.toml", "constraints.txt", "README.md"}
    assert pyproject["project"]["readme"] in admitted
    assert all(path.is_dir() for path in (ROOT / p for p in packages))
