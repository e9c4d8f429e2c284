#!/usr/bin/env python3
"""Checks docker-compose.yml, docker/*.Dockerfile, deploy/compose/ (agents, gateways-init)
and the Grafana bundle of deploy/grafana/ without a Docker engine.

    scripts/check-compose.py                         spec + consistency checks
    scripts/check-compose.py --binaries target/debug  also run each service's binary with
                                                      --check-config in its compose setup
    scripts/check-compose.py --file /tmp/copy.yml     check a scratch copy instead, as if it
                                                      were the repository's docker-compose.yml

No engine runs here, so the compose file is validated instead of run:

1. The Compose spec. `docker-compose config` (Compose v1 from PyPI: it parses, interpolates
   and validates without an engine) resolves the file with placeholders for the keys
   scripts/compose-env.sh writes to .env and no other variable (so `docker compose up -d`
   needs that .env and nothing else: Compose interpolates every profile's services; the
   real .env is never read), and must refuse to resolve it without them; then, for each
   profile combination (default, demo, client, tools, grafana, all), the
   services that combination starts are validated against the Compose spec schema and
   checked for what only shows per combination: a dependency the combination does not
   start, a health condition on a service without a health check, a host port published
   twice.
2. The code's sources of truth: every topic of protocol::kafka::ALL_TOPICS (parsed from
   protocol/src/kafka.rs) is created by kafka-init with its partition count; every
   service the pipeline needs exists, in its profile, with a health check; ports are the
   defaults of bridge/config/bridge.toml, cloud-ingester/config/cloud-ingester.toml and
   console/config/console.toml; every BRIDGE_* / INGESTER_* / CONSOLE_* / EDGE_AGENT_*
   variable names a key of the example TOML (PREFIX_A__B -> a.b); URLs and brokers point
   at the right services, with the password that service gets; user, database and Redis
   settings match scripts/stack.sh; the console
   waits for the ingester (which migrates the schema) and reads its Redis prefix and
   alerts topic; the five demo agents run the seed devices of migrations/ with the
   simulated-plant.toml definitions; each build's Dockerfile (and every
   docker/*.Dockerfile) exists, builds its crate with --locked and ends as a non-root
   USER, a service's copying its example config; .dockerignore keeps the junk out.
3. The Grafana bundle (deploy/grafana/, the `grafana` profile): the provisioning YAMLs
   parse and have their keys; the data source is the compose postgres service, its
   database and user, with the password from an environment variable the grafana
   service sets from the postgres service (no literal); the dashboard provider's path
   is where compose mounts deploy/grafana/dashboards (read-only, as the provisioning);
   every dashboard parses, uses the provisioned data source, and every query (panels,
   template variables, annotations) names only tables and columns that migrations/*.sql
   create and variables the dashboard defines, with $__timeFilter on a timestamp column
   where it reads the readings or the hourly statistics; Grafana is pinned to a version,
   published on 127.0.0.1 only, health-checked on /api/health, and has no literal or
   default admin password.
4. Secrets: none written in the file. An environment variable, command-line flag or
   VAR=value named like a password, secret, token or requirepass, a URL's password part
   and REDIS_HOSTS' password are each a ${VAR} interpolation without a default (or the
   container's own $${VAR}); the variables compose requires (${VAR:?}) are exactly keys
   scripts/compose-env.sh generates, and a password compose takes from .env is required
   (${VAR:?}: empty would mean none). Redis requires a password and its health check
   authenticates; .env is ignored by git and the Docker build context; PostgreSQL, Redis
   and the `tools` profile are published on 127.0.0.1 only.
5. Gateways (no anonymous MQTT): the embedded bridge has BRIDGE_EMBEDDED__REGISTRY_URL
   (the postgres service's URL) and no allow_anonymous; gateways-init (iotctl image,
   after the migrating ingester) runs its deploy/compose/ script here with a stand-in
   iotctl: the gateways it registers, their devices and secret files, and that a re-run
   keeps the secrets, a missing file is rotated and a registry error fails it. Each demo
   agent's gateway.id (deploy/compose/agents/*.toml) is registered with that agent's
   devices, and the agents and the console log in as registered gateways with the secret
   file gateways-init writes, mounted read-only, after gateways-init completed; no health
   check or command runs an MQTT client against the embedded broker without a login.
6. With --binaries: each bridge, ingester, console and agent service's binary is run with
   the service's environment and command plus --check-config, so the binaries themselves
   confirm they accept the settings (their configs refuse unknown keys); the secrets
   volume is the directory the gateways-init run of 5 wrote, so a password file exists
   (mode 0600) only if gateways-init writes it.

Prints one line per problem and exits 1, or a summary and exits 0. The first run makes a
venv in target/compose-venv and installs docker-compose there (about 20 s); later runs
reuse it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "compose-venv"
# Compose v1 (the last Python one) and exactly what its `config` command imports, pinned
# and installed without dependency resolution, so every run uses the same versions (its
# `docker[ssh]` extra, paramiko and cryptography, is only for ssh:// engines: left out).
REQUIREMENTS = [
    "docker-compose==1.29.2",
    "docker==7.2.0",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "idna==3.20",
    "PyYAML==5.4.1",
    "jsonschema==3.2.0",
    "attrs==26.1.0",
    "pyrsistent==0.20.0",
    "six==1.17.0",
    "dockerpty==0.4.1",
    "docopt==0.6.2",
    "texttable==1.7.2",
    "python-dotenv==0.21.1",
    "distro==1.9.0",
    "websocket-client==0.59.0",
]
# PyYAML 5.4.1 (what compose 1.29.2 allows) builds from source here, and its build
# breaks with Cython 3.
BUILD_CONSTRAINTS = ["cython<3"]
MARKER = VENV / ".check-compose-requirements"


# ------------------------------------------------------------------------- bootstrap


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Creates the venv and installs the requirements once, then re-runs this script in it."""
    wanted = "\n".join(REQUIREMENTS + ["constraints:"] + BUILD_CONSTRAINTS) + "\n"
    python = VENV / "bin" / "python"
    if not (python.exists() and MARKER.exists() and MARKER.read_text() == wanted):
        print(f"check-compose: installing {REQUIREMENTS[0]} into {VENV.relative_to(ROOT)}")
        if not python.exists():
            made = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
            if made.returncode != 0 and os.geteuid() == 0 and shutil.which("apt-get"):
                subprocess.run(["apt-get", "install", "-y", "python3-venv"], check=True,
                               stdout=subprocess.DEVNULL)
                made = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
            if made.returncode != 0:
                sys.exit("check-compose: cannot create a venv (apt-get install python3-venv)")
        constraints = VENV / "build-constraints.txt"
        constraints.write_text("\n".join(BUILD_CONSTRAINTS) + "\n")
        env = dict(os.environ, PIP_CONSTRAINT=str(constraints), PIP_DISABLE_PIP_VERSION_CHECK="1")
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", *REQUIREMENTS],
            env=env)
        if installed.returncode != 0:
            sys.exit("check-compose: pip could not install " + REQUIREMENTS[0])
        MARKER.write_text(wanted)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if not in_venv():
    bootstrap()

# ---------------------------------------------------------------- in the venv from here

import argparse  # noqa: E402
import fnmatch  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import tomllib  # noqa: E402
import urllib.parse  # noqa: E402

import compose.config  # noqa: E402
import jsonschema  # noqa: E402
import yaml  # noqa: E402

COMPOSE_FILE = ROOT / "docker-compose.yml"
# Writes the .env compose reads its secrets from; its KEYS=(...) line names them.
COMPOSE_ENV = ROOT / "scripts" / "compose-env.sh"
# Names that hold a secret: environment keys, command-line flags, VAR=value words.
SECRET_NAME = re.compile(r"password|passwd|secret|token|requirepass|(^|_)auth$", re.I)
# Interpolations, compose's ${VAR...} and the container's escaped $${VAR...}.
INTERPOLATION = re.compile(r"\$?\$\{[^}]*\}")
# A URL's password part (interpolations masked first: they may hold `/`, `@` or spaces).
URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]*)@")
# Addresses a port published for this machine only may bind to.
LOCAL_ADDRESSES = ("127.0.0.1", "::1", "localhost")

# Profile combinations to check: each alone, and all together.
COMBINATIONS = [(), ("demo",), ("client",), ("tools",), ("grafana",),
                ("demo", "client", "tools", "grafana")]

# What each Dockerfile builds and how that binary is configured.
BINARIES = {
    "docker/bridge.Dockerfile": {
        "crate": "bridge",
        "binary": "bridge",
        "prefix": "BRIDGE_",
        "examples": ["bridge/config/bridge.toml"],
        # Read by the command line (clap), not by the configuration layers.
        "extra_env": {"BRIDGE_CONFIG", "RUST_LOG"},
    },
    "docker/cloud-ingester.Dockerfile": {
        "crate": "cloud-ingester",
        "binary": "cloud-ingester",
        "prefix": "INGESTER_",
        "examples": ["cloud-ingester/config/cloud-ingester.toml"],
        # DATABASE_URL, REDIS_URL and KAFKA_BROKERS: read directly (config.rs).
        "extra_env": {"INGESTER_CONFIG", "DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "RUST_LOG"},
    },
    "docker/console.Dockerfile": {
        "crate": "console",
        "binary": "console",
        "prefix": "CONSOLE_",
        "examples": ["console/config/console.toml"],
        # DATABASE_URL, REDIS_URL and KAFKA_BROKERS: read directly (config.rs).
        "extra_env": {"CONSOLE_CONFIG", "DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "RUST_LOG"},
    },
    "docker/edge-agent.Dockerfile": {
        "crate": "edge-agent",
        "binary": "edge-agent",
        "prefix": "EDGE_AGENT_",
        "examples": ["edge-agent/config/simulated-plant.toml", "edge-agent/config/pi.toml"],
        "extra_env": {"EDGE_AGENT_CONFIG", "RUST_LOG"},
    },
    # A command-line tool, not a service: no example configuration, port, HEALTHCHECK or
    # --check-config; its options read these variables (clap `env`, iotctl/src/global.rs).
    "docker/iotctl.Dockerfile": {
        "crate": "iotctl",
        "binary": "iotctl",
        "tool": True,
        "prefix": None,
        "examples": [],
        "extra_env": {"DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "IOTCTL_MQTT",
                      "IOTCTL_MQTT_USER", "IOTCTL_MQTT_PASSWORD_FILE"},
    },
}

# Services the pipeline needs: name -> (profiles, one-shot). The agents are added from
# the seed devices in migrations/.
EXPECTED = {
    "postgres": ((), False),
    "redis": ((), False),
    "kafka": ((), False),
    "kafka-init": ((), True),
    "gateways-init": ((), True),
    "bridge": ((), False),
    "ingester": ((), False),
    "console": ((), False),
    "mosquitto": (("client",), False),
    "bridge-client": (("client",), False),
    "kafka-ui": (("tools",), False),
    "redis-commander": (("tools",), False),
    "grafana": (("grafana",), False),
}

problems: list[str] = []
notes: list[str] = []


def problem(message: str) -> None:
    problems.append(message)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- sources of truth


def kafka_topics() -> dict[str, int]:
    """protocol::kafka::ALL_TOPICS as {name: partitions}, parsed from the Rust source."""
    source = (ROOT / "protocol/src/kafka.rs").read_text()
    constants = {
        m["const"]: (m["name"], int(m["partitions"]))
        for m in re.finditer(
            r'pub const (?P<const>\w+): KafkaTopic = KafkaTopic \{\s*name: "(?P<name>[^"]+)",'
            r"\s*partitions: (?P<partitions>\d+),?\s*\}",
            source,
        )
    }
    listed = re.search(r"pub const ALL_TOPICS: \[KafkaTopic; (\d+)\] =\s*\[([^\]]*)\]", source)
    if not listed:
        problem("protocol/src/kafka.rs: ALL_TOPICS not found (has its form changed?)")
        return {}
    names = [n.strip() for n in listed[2].split(",") if n.strip()]
    if len(names) != int(listed[1]) or any(n not in constants for n in names):
        problem("protocol/src/kafka.rs: could not read every topic of ALL_TOPICS")
    return dict(constants[n] for n in names if n in constants)


def seed_devices() -> list[str]:
    """Device ids seeded by migrations/*_seed_devices.sql."""
    files = sorted(ROOT.glob("migrations/*seed_devices.sql"))
    if not files:
        problem("migrations/: no *seed_devices.sql")
        return []
    text = files[0].read_text()
    block = text.split("INSERT INTO devices", 1)[1].split(";", 1)[0]
    return re.findall(r"^\s*\('([A-Za-z0-9._-]+)',", block, re.M)


def stack_settings() -> dict[str, str]:
    """User, database and Redis settings scripts/stack.sh gives its services (its
    password is a development default; compose's comes from .env)."""
    text = (ROOT / "scripts/stack.sh").read_text()
    settings = dict(re.findall(r"^(PG\w+)=\$\{\1:-([^}]*)\}", text, re.M))
    redis_conf = re.search(r"redis_write_config\(\).*?<<EOF\n(.*?)\nEOF", text, re.S)
    if redis_conf:
        for line in redis_conf[1].splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in (
                "maxmemory", "maxmemory-policy", "appendonly", "appendfsync"):
                settings["redis." + parts[0]] = parts[1].strip()
    for key in ("PGUSER", "PGDATABASE", "redis.maxmemory",
                "redis.maxmemory-policy", "redis.appendonly"):
        if key not in settings:
            problem(f"scripts/stack.sh: could not read {key} (has its form changed?)")
    return settings


def toml_keys(path: Path) -> tuple[set[str], set[str]]:
    """Dotted keys an example TOML file shows, set or commented out (`# key = ...`), and
    the tables that are free-form maps (commented out or empty: any key below them)."""
    data = tomllib.loads(path.read_text())
    keys: set[str] = set()
    maps: set[str] = set()

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            if not value and prefix:
                maps.add(prefix)
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            keys.add(prefix)  # an array of tables ([[devices]]): settable only whole
        else:
            keys.add(prefix)

    walk("", data)
    section = ""
    for line in path.read_text().splitlines():
        header = re.match(r"^\s*(#\s*)?\[\[?([A-Za-z0-9_.-]+)\]\]?", line)
        if header:
            section = header[2]
            if header[1]:
                maps.add(section)
            continue
        commented = re.match(r'^\s*#\s*"?([A-Za-z0-9_.-]+)"?\s*=\s*\S', line)
        if commented:
            keys.add(f"{section}.{commented[1]}" if section else commented[1])
    return keys, maps


def example_values(path: Path, dotted: str):
    """The value of a dotted key in a TOML file; None when it is not there."""
    value = tomllib.loads(path.read_text())
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def port_of(value) -> int | None:
    """The port of `host:port`, `:port` or `port`; None when it is not one."""
    text = str(value).rsplit(":", 1)[-1]
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    return None


# ------------------------------------------------------------------------ compose model


def unescape(value):
    """`docker-compose config` writes a literal `$` as `$$`; undo that."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    return value


def compose_env_keys() -> list[str]:
    """The keys scripts/compose-env.sh writes to .env (its KEYS=(...) line)."""
    if not COMPOSE_ENV.exists():
        problem(f"{rel(COMPOSE_ENV)} is missing: nothing writes the .env with the secrets "
                "docker-compose.yml reads")
        return []
    if not os.access(COMPOSE_ENV, os.X_OK):
        problem(f"{rel(COMPOSE_ENV)} is not executable")
    found = re.search(r"^KEYS=\(([^)]*)\)", COMPOSE_ENV.read_text(), re.M)
    if not found or not found[1].split():
        problem(f"{rel(COMPOSE_ENV)}: could not read KEYS=(...) (has its form changed?)")
        return []
    return found[1].split()


def placeholder(key: str) -> str:
    """What a .env key resolves to here: distinct per key, URL-safe, never a real secret."""
    return "check-compose-" + key.lower().replace("_", "-")


def docker_compose_config(env_lines: list[str]) -> subprocess.CompletedProcess:
    """`docker-compose config` with exactly these .env lines (never the real .env) and no
    variable from this shell."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    with tempfile.TemporaryDirectory(prefix="check-compose-") as directory:
        env_file = Path(directory) / "env"
        env_file.write_text("".join(line + "\n" for line in env_lines))
        return subprocess.run(
            [str(VENV / "bin" / "docker-compose"), "--project-directory", str(ROOT),
             "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
            capture_output=True, text=True, env=env, cwd=ROOT)


def resolve(keys: list[str]) -> dict | None:
    """Runs `docker-compose config`: spec validation, interpolation, anchors, paths, with
    placeholders for the .env keys scripts/compose-env.sh writes."""
    if keys and docker_compose_config([]).returncode == 0:
        problem("docker-compose config: resolves without .env, so a password it should "
                "hold would be empty; require it: ${VAR:?run scripts/compose-env.sh}")
    run = docker_compose_config([f"{key}={placeholder(key)}" for key in keys])
    if run.returncode != 0:
        output = run.stderr or run.stdout
        for line in output.strip().splitlines():
            problem(f"docker-compose config: {line}")
        if "Missing mandatory value" in output:
            problem("docker-compose config: Compose interpolates every service, whatever the "
                    "profiles, so a ${VAR:?} for a variable scripts/compose-env.sh does not "
                    f"write ({', '.join(keys)}) stops a plain `docker compose up` too; have "
                    "the script generate it, or require it inside the container")
        return None
    return yaml.safe_load(run.stdout)


def env_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def words(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def published(service: dict) -> list[tuple[int | None, int]]:
    """(host port, container port) of each published port (v1 normalises them to text)."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host, target = entry.get("published"), entry.get("target")
        else:
            text = str(entry).split("/")[0]
            parts = text.split(":")
            target = parts[-1]
            host = parts[-2] if len(parts) >= 2 else None
        ports.append((int(host) if host else None, int(target)))
    return ports


def host_address(entry) -> str | None:
    """The host address a `ports` entry binds to; None: every interface."""
    if isinstance(entry, dict):
        return entry.get("host_ip")
    text = str(entry).split("/")[0]
    return text.rsplit(":", 2)[0].strip("[]") if text.count(":") >= 2 else None


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, is_bind) of each volume entry."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = entry.get("source", ""), entry["target"]
            bind = entry.get("type") == "bind"
        else:
            parts = str(entry).split(":")
            source, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", parts[0])
            bind = source.startswith(("/", "."))
        result.append((source, target, bind))
    return result


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(test[1:]) if test and test[0] in ("CMD", "CMD-SHELL") else " ".join(test)
    return test or ""


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return bool(test) and not check.get("disable") and test != ["NONE"]


def dockerfile_of(service: dict) -> tuple[str, Path] | None:
    build = service.get("build")
    if not build:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = Path(build.get("context", "."))
    if not context.is_absolute():
        context = ROOT / context
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    return rel(dockerfile), dockerfile


# -------------------------------------------------------------------------- the checks


def check_spec_per_combination(model: dict) -> None:
    schema_path = Path(compose.config.__file__).parent / "compose_spec.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    services = model["services"]
    for combination in COMBINATIONS:
        label = "+".join(combination) or "default"
        active = {
            name: svc for name, svc in services.items()
            if not svc.get("profiles") or set(svc["profiles"]) & set(combination)
        }
        subset = {k: v for k, v in model.items() if k != "version"}
        subset["services"] = active
        for error in validator.iter_errors(json.loads(json.dumps(subset))):
            where = "/".join(str(p) for p in error.absolute_path)
            problem(f"[{label}] compose spec: {where}: {error.message}")
        hosts: dict[int, str] = {}
        for name, svc in active.items():
            for dependency, spec in (svc.get("depends_on") or {}).items():
                condition = (spec or {}).get("condition", "service_started")
                if dependency not in active:
                    problem(f"[{label}] {name} depends on {dependency}, which this profile "
                            "combination does not start")
                    continue
                target = active[dependency]
                if condition == "service_healthy" and not has_healthcheck(target):
                    problem(f"[{label}] {name} waits for {dependency} to be healthy, but "
                            f"{dependency} has no health check")
                if condition == "service_completed_successfully" and \
                        target.get("restart", "no") not in ("no", None):
                    problem(f"[{label}] {name} waits for {dependency} to complete, but "
                            f"{dependency} restarts ({target.get('restart')})")
            for host, _ in published(svc):
                if host is None:
                    continue
                if host in hosts:
                    problem(f"[{label}] host port {host} is published by both {hosts[host]} "
                            f"and {name}")
                hosts[host] = name
        notes.append(f"{label}: {len(active)} services, spec-valid, dependencies started, "
                     f"host ports distinct")


def check_services(model: dict, devices: list[str]) -> dict[str, str]:
    """Every expected service exists in its profile; health checks; one network; returns
    {agent service: device id}."""
    services = model["services"]
    expected = dict(EXPECTED)
    agents = {f"agent-{device}": device for device in devices}
    for name in agents:
        expected[name] = (("demo",), False)
    for name, (profiles, one_shot) in expected.items():
        svc = services.get(name)
        if svc is None:
            problem(f"service {name} is missing"
                    + (f" (profile {', '.join(profiles)})" if profiles else ""))
            continue
        if tuple(sorted(svc.get("profiles") or ())) != tuple(sorted(profiles)):
            problem(f"{name}: profiles {svc.get('profiles') or []}, expected {list(profiles)}")
        if one_shot and str(svc.get("restart", "no")) != "no":
            problem(f"{name}: a one-shot service must not restart (restart: \"no\")")
    for name, svc in services.items():
        one_shot = str(svc.get("restart", "no")) == "no" and expected.get(name, (None, False))[1]
        if not one_shot and not has_healthcheck(svc):
            problem(f"{name}: no health check")
    for name in services:
        if name.startswith("agent-") and name not in agents:
            problem(f"{name}: an agent for a device the seed data does not have")
    networks = model.get("networks") or {}
    if len(networks) != 1:
        problem(f"expected one network, found {len(networks)}: {sorted(networks)}")
    for name, svc in services.items():
        if svc.get("network_mode"):
            problem(f"{name}: network_mode {svc['network_mode']}, not the shared network")
        elif set(svc.get("networks") or {}) != set(networks):
            problem(f"{name}: not on the network {sorted(networks)}")
    notes.append(f"services: {len(expected)} expected present in their profiles, "
                 "health checks on every long-running one, one network")
    return agents


def check_topics(model: dict, topics: dict[str, int]) -> None:
    init = model["services"].get("kafka-init")
    kafka = model["services"].get("kafka")
    if not init or not kafka:
        return
    if init.get("image") != kafka.get("image"):
        problem("kafka-init: should use the kafka service's image "
                f"({kafka.get('image')}), has {init.get('image')}")
    if ((init.get("depends_on") or {}).get("kafka") or {}).get("condition") != "service_healthy":
        problem("kafka-init: must depend on kafka with condition service_healthy")
    script = "\n".join(words(init.get("entrypoint")) + words(init.get("command")))
    created: dict[str, int | None] = {}
    listeners = kafka_internal_addresses(kafka)
    for line in script.splitlines():
        if "--create" not in line:
            continue
        args = shlex.split(line)
        value = lambda flag: args[args.index(flag) + 1] if flag in args[:-1] else None  # noqa: E731
        topic, partitions = value("--topic"), value("--partitions")
        if topic is None:
            problem(f"kafka-init: a --create without --topic: {line.strip()}")
            continue
        created[topic] = int(partitions) if partitions and partitions.isdigit() else None
        if "--if-not-exists" not in args:
            problem(f"kafka-init: topic {topic} is created without --if-not-exists")
        server = value("--bootstrap-server")
        if server not in listeners:
            problem(f"kafka-init: --bootstrap-server {server} is not one of kafka's "
                    f"advertised addresses on the network {sorted(listeners)}")
    for topic, partitions in topics.items():
        if topic not in created:
            problem(f"kafka-init: topic {topic} ({partitions} partitions, "
                    "protocol/src/kafka.rs) is not created")
        elif created[topic] != partitions:
            problem(f"kafka-init: topic {topic} gets {created[topic]} partitions, "
                    f"protocol/src/kafka.rs says {partitions}")
    for topic in sorted(set(created) - set(topics)):
        problem(f"kafka-init: creates {topic}, which is not in protocol::kafka::ALL_TOPICS")
    for example, keys in (("bridge/config/bridge.toml", ("kafka.topic", "kafka.dlq_topic",
                                                          "kafka.metrics_topic")),
                          ("cloud-ingester/config/cloud-ingester.toml",
                           ("kafka.topic", "kafka.dlq_topic", "kafka.alerts_topic",
                            "kafka.metrics_topic")),
                          ("console/config/console.toml", ("kafka.alerts_topic",))):
        for key in keys:
            name = example_values(ROOT / example, key)
            if name and name not in topics:
                problem(f"{example}: {key} = {name!r} is not in protocol::kafka::ALL_TOPICS")
    notes.append("kafka-init creates " + ", ".join(f"{t}:{p}" for t, p in topics.items())
                 + " (protocol/src/kafka.rs)")


def kafka_internal_addresses(kafka: dict) -> set[str]:
    """host:port addresses kafka advertises, less those meant for the host machine."""
    advertised = env_of(kafka).get("KAFKA_ADVERTISED_LISTENERS", "")
    addresses = set()
    for listener in advertised.split(","):
        address = listener.split("://", 1)[-1]
        if address and not address.startswith(("localhost:", "127.")):
            addresses.add(address)
    return addresses


def check_addresses(model: dict, settings: dict[str, str]) -> None:
    services = model["services"]
    kafka = services.get("kafka")
    brokers = kafka_internal_addresses(kafka) if kafka else set()
    for name, svc in services.items():
        env = env_of(svc)
        for var in ("KAFKA_BROKERS", "BRIDGE_KAFKA__BROKERS", "INGESTER_KAFKA__BROKERS",
                    "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"):
            if var in env:
                for address in env[var].split(","):
                    if address.strip() not in brokers:
                        problem(f"{name}: {var}={env[var]} is not kafka's advertised "
                                f"address on the network {sorted(brokers)}")
    postgres = services.get("postgres")
    if postgres:
        penv = env_of(postgres)
        # The password is not stack.sh's development default but .env's (check_secrets).
        for var, stack_var in (("POSTGRES_USER", "PGUSER"), ("POSTGRES_DB", "PGDATABASE")):
            if stack_var in settings and penv.get(var) != settings[stack_var]:
                problem(f"postgres: {var}={penv.get(var)!r}, scripts/stack.sh uses "
                        f"{settings[stack_var]!r}")
        if "pg_isready" not in healthcheck_text(postgres):
            problem("postgres: the health check should use pg_isready")
        for name, svc in services.items():
            for var, url in client_urls(svc, "DATABASE"):
                parsed = urllib.parse.urlsplit(url)
                wanted = (penv.get("POSTGRES_USER"), penv.get("POSTGRES_PASSWORD"), "postgres",
                          5432, penv.get("POSTGRES_DB"))
                got = (parsed.username, parsed.password, parsed.hostname, parsed.port or 5432,
                       parsed.path.lstrip("/"))
                if got != wanted:
                    problem(f"{name}: {var} does not match the postgres service "
                            "(user, password, host postgres, port 5432, database)")
    redis = services.get("redis")
    if redis:
        args = words(redis.get("command"))
        for option in ("maxmemory", "maxmemory-policy", "appendonly", "appendfsync"):
            wanted = settings.get("redis." + option)
            flag = "--" + option
            got = args[args.index(flag) + 1] if flag in args[:-1] else None
            if wanted is not None and got != wanted:
                problem(f"redis: {flag} {got}, scripts/stack.sh sets {option} {wanted}")
        # A password: Redis answers anyone who reaches it otherwise.
        requirepass = args[args.index("--requirepass") + 1] \
            if "--requirepass" in args[:-1] else None
        if not requirepass:
            problem("redis: no --requirepass, so Redis takes any client; give it "
                    "${REDIS_PASSWORD:?run scripts/compose-env.sh}")
        else:
            check = healthcheck_text(redis)
            authenticated = env_of(redis).get("REDISCLI_AUTH") == requirepass or \
                re.search(r"(^|\s)(-a|--pass)\s", check)
            if "redis-cli" not in check or not authenticated:
                problem("redis: the health check does not authenticate (redis-cli with "
                        "REDISCLI_AUTH set to the --requirepass password)")
            elif "PONG" not in check:
                problem("redis: the health check should look for PONG (redis-cli may exit 0 "
                        "on an error reply such as NOAUTH)")
        for name, svc in services.items():
            env = env_of(svc)
            for var, url in client_urls(svc, "REDIS"):
                parsed = urllib.parse.urlsplit(url)
                if (parsed.hostname, parsed.port or 6379) != ("redis", 6379):
                    problem(f"{name}: {var} {url} is not the redis service on 6379")
                elif requirepass and parsed.password != requirepass:
                    problem(f"{name}: {var} does not carry the redis service's password "
                            "(redis://:${REDIS_PASSWORD:?...}@redis:6379)")
            for entry in filter(None, env.get("REDIS_HOSTS", "").split(",")):
                # label:host:port:db:password (Redis Commander)
                fields = entry.split(":")
                if fields[1:3] != ["redis", "6379"]:
                    problem(f"{name}: REDIS_HOSTS does not name redis:6379")
                elif requirepass and (fields[4:5] or [None])[0] != requirepass:
                    problem(f"{name}: REDIS_HOSTS does not carry the redis service's password "
                            "(label:redis:6379:0:${REDIS_PASSWORD:?...})")
            if requirepass and "REDIS_PASSWORD" in env and env["REDIS_PASSWORD"] != requirepass:
                problem(f"{name}: REDIS_PASSWORD is not the redis service's password")
    notes.append("addresses: Kafka brokers, database and Redis URLs match their services, "
                 "with their passwords; Redis requires one, and its health check gives it; "
                 "PostgreSQL user and database and Redis memory/eviction/persistence match "
                 "scripts/stack.sh")


def client_urls(svc: dict, kind: str) -> list[tuple[str, str]]:
    """(variable, URL) of a service's DATABASE or REDIS URLs: the conventional DATABASE_URL /
    REDIS_URL and any binary's PREFIX_DATABASE__URL / PREFIX_REDIS__URL (and, a database,
    the bridge's BRIDGE_EMBEDDED__REGISTRY_URL: the gateway registry)."""
    return [(var, value) for var, value in env_of(svc).items()
            if value and (var == f"{kind}_URL" or var.endswith(f"_{kind}__URL")
                          or (kind == "DATABASE" and var.endswith("__REGISTRY_URL")))]


def binary_info(svc: dict) -> dict | None:
    found = dockerfile_of(svc)
    return BINARIES.get(found[0]) if found else None


def effective(svc: dict, info: dict, example: Path, key: str, flag: str | None = None):
    """A setting as the binary would see it: the example file, then the service's
    environment, then a command-line flag."""
    args = words(svc.get("command"))
    if flag and flag in args[:-1]:
        return args[args.index(flag) + 1]
    variable = info["prefix"] + key.upper().replace(".", "__")
    env = env_of(svc)
    if variable in env:
        return env[variable]
    return example_values(example, key)


def check_env_and_ports(model: dict) -> None:
    services = model["services"]
    key_sets = {}
    for dockerfile, info in BINARIES.items():
        keys, maps = set(), set()
        for example in info["examples"]:
            k, m = toml_keys(ROOT / example)
            keys |= k
            maps |= m
        key_sets[dockerfile] = (keys, maps)
    checked = 0
    for name, svc in services.items():
        found = dockerfile_of(svc)
        info = BINARIES.get(found[0]) if found else None
        if not info:
            continue
        keys, maps = key_sets[found[0]]
        for variable in env_of(svc):
            checked += 1
            if variable in info["extra_env"]:
                continue
            if not info["prefix"] or not variable.startswith(info["prefix"]):
                problem(f"{name}: {variable} is not read by {info['binary']}")
                continue
            key = ".".join(variable[len(info["prefix"]):].lower().split("__"))
            if key not in keys and not any(key.startswith(m + ".") for m in maps):
                problem(f"{name}: {variable} sets {key}, which {info['binary']} does not have "
                        f"(not in {', '.join(info['examples'])})")
    notes.append(f"environment: {checked} variables on the Rust services, each read by its "
                 "binary (PREFIX_A__B -> a.b in the example TOML)")

    # Ports: the example files' defaults (or the service's overrides) are what is
    # published, exposed and health-checked.
    summary = []
    for name, svc in services.items():
        info = binary_info(svc)
        if not info or info["binary"] == "edge-agent" or info.get("tool"):
            continue
        example = ROOT / info["examples"][0]
        settings = [("http.listen", "--http-listen")]
        if info["binary"] == "bridge" and effective(svc, info, example, "mode",
                                                    "--mode") == "embedded":
            settings.append(("embedded.listen", "--listen"))
        wanted = {}
        for key, flag in settings:
            value = effective(svc, info, example, key, flag)
            if port_of(value) is None:
                problem(f"{name}: {key} {value!r} is not an address with a port")
            else:
                wanted[port_of(value)] = key
        http = port_of(effective(svc, info, example, "http.listen", "--http-listen"))
        containers = {target for _, target in published(svc)}
        for port, key in wanted.items():
            if port not in containers:
                problem(f"{name}: container port {port} ({key} in {rel(example)}) is not "
                        "published")
        unexpected = containers - set(wanted)
        if unexpected:
            problem(f"{name}: publishes container ports {sorted(unexpected)} that nothing "
                    "listens on")
        check = healthcheck_text(svc)
        if f"127.0.0.1:{http}/readyz" not in check and f"localhost:{http}/readyz" not in check:
            problem(f"{name}: the health check should ask /readyz on port {http} ({check!r})")
        dockerfile = dockerfile_of(svc)[1]
        if dockerfile.exists():
            exposed = set()
            for instruction, argument in dockerfile_instructions(dockerfile)[-1]:
                if instruction == "EXPOSE":
                    exposed |= {int(p.split("/")[0]) for p in argument.split()}
            for port in wanted:
                if port not in exposed:
                    problem(f"{rel(dockerfile)}: does not EXPOSE {port}, which {name} uses")
        summary.append(f"{name} {'/'.join(str(p) for p in sorted(wanted))}")
    notes.append(f"ports: {', '.join(summary)} as in their example TOML, published, exposed "
                 "and health-checked on /readyz")


def check_clients(model: dict) -> None:
    """The agents and the client-mode bridge reach a broker that listens there."""
    services = model["services"]
    listeners: dict[tuple[str, int], str] = {}
    bridge_toml = ROOT / "bridge/config/bridge.toml"
    for name, svc in services.items():
        info = binary_info(svc)
        if info and info["binary"] == "bridge" and \
                effective(svc, info, bridge_toml, "mode", "--mode") == "embedded":
            port = port_of(effective(svc, info, bridge_toml, "embedded.listen", "--listen"))
            if port is not None:
                listeners[(name, port)] = "embedded broker"
        if str(svc.get("image", "")).startswith("eclipse-mosquitto"):
            for source, target, bind in mounts(svc):
                if bind and target.endswith("mosquitto.conf"):
                    conf = Path(source)
                    if not conf.exists():
                        problem(f"{name}: {rel(conf)} does not exist")
                        continue
                    text = conf.read_text()
                    for port in re.findall(r"^listener\s+(\d+)", text, re.M):
                        listeners[(name, int(port))] = "mosquitto"
                    if not re.search(r"^allow_anonymous\s+true", text, re.M):
                        problem(f"{rel(conf)}: allow_anonymous true is missing")
                    location = re.search(r"^persistence_location\s+(\S+)", text, re.M)
                    if not re.search(r"^persistence\s+true", text, re.M) or not location:
                        problem(f"{rel(conf)}: persistence is not on")
                    elif not any(not b and t.rstrip("/") == location[1].rstrip("/")
                                 for _, t, b in mounts(svc)):
                        problem(f"{name}: no named volume at {location[1]} "
                                "(persistence_location)")
    for name, svc in services.items():
        info = binary_info(svc)
        if not info:
            continue
        if info["binary"] == "bridge" and effective(svc, info, bridge_toml, "mode",
                                                    "--mode") == "client":
            host = effective(svc, info, bridge_toml, "mqtt.host", "--mqtt-host")
            port = port_of(effective(svc, info, bridge_toml, "mqtt.port", "--mqtt-port"))
        elif info["binary"] == "edge-agent":
            config = agent_config_path(svc)
            if not config:
                continue
            host = effective(svc, info, config, "mqtt.host", "--mqtt-host")
            port = port_of(effective(svc, info, config, "mqtt.port", "--mqtt-port"))
        else:
            continue
        if port is None:
            problem(f"{name}: its MQTT port is not a port")
            continue
        if (host, port) not in listeners:
            problem(f"{name}: its MQTT broker {host}:{port} is not a broker of this file "
                    f"({', '.join(f'{h}:{p}' for h, p in sorted(listeners))})")
        elif host not in (svc.get("depends_on") or {}):
            problem(f"{name}: does not wait for its broker {host} (depends_on)")
    notes.append("MQTT: agents and the client-mode bridge point at a broker this file runs")


def agent_config_path(svc: dict) -> Path | None:
    args = words(svc.get("command"))
    inside = args[args.index("--config") + 1] if "--config" in args[:-1] else \
        "/etc/edge-agent/agent.toml"
    for source, target, bind in mounts(svc):
        if bind and target == inside:
            return Path(source)
    return None


def check_agents(model: dict, agents: dict[str, str]) -> None:
    services = model["services"]
    plant = tomllib.loads((ROOT / "edge-agent/config/simulated-plant.toml").read_text())
    seeds = {device["id"]: device for device in plant["devices"]}
    gateways: dict[str, str] = {}
    volumes_used: dict[str, str] = {}
    declared = set(model.get("volumes") or {})
    for name, device in agents.items():
        svc = services.get(name)
        if svc is None:
            continue
        info = binary_info(svc)
        if not info or info["binary"] != "edge-agent":
            problem(f"{name}: not built from docker/edge-agent.Dockerfile")
            continue
        config = agent_config_path(svc)
        if config is None:
            problem(f"{name}: no agent configuration is mounted at its --config path")
            continue
        if not config.exists():
            problem(f"{name}: {rel(config)} does not exist")
            continue
        data = tomllib.loads(config.read_text())
        devices = data.get("devices", [])
        if [d.get("id") for d in devices] != [device]:
            problem(f"{rel(config)}: should run exactly the device {device}, runs "
                    f"{[d.get('id') for d in devices]}")
        elif device not in seeds:
            problem(f"edge-agent/config/simulated-plant.toml: has no device {device}")
        elif devices[0] != seeds[device]:
            problem(f"{rel(config)}: the [[devices]] block of {device} differs from "
                    "edge-agent/config/simulated-plant.toml's")
        gateway = data.get("gateway", {}).get("id")
        if gateway in gateways:
            problem(f"{name} and {gateways[gateway]} share the gateway id {gateway} "
                    "(the MQTT client id)")
        gateways[gateway] = name
        queue = effective(svc, info, config, "queue.dir", "--queue-dir")
        at_queue = [s for s, t, bind in mounts(svc) if not bind and t.rstrip("/") == queue]
        if not at_queue or at_queue[0] not in declared:
            problem(f"{name}: no named volume at its queue directory {queue}")
        elif at_queue[0] in volumes_used:
            problem(f"{name} and {volumes_used[at_queue[0]]} share the queue volume "
                    f"{at_queue[0]}")
        else:
            volumes_used[at_queue[0]] = name
        if queue not in healthcheck_text(svc):
            problem(f"{name}: the health check does not look at the queue {queue}")
    seeded_in_plant = set(seeds)
    if set(agents.values()) != seeded_in_plant:
        problem("the seed devices in migrations/ and edge-agent/config/simulated-plant.toml "
                f"differ: {sorted(set(agents.values()) ^ seeded_in_plant)}")
    notes.append(f"agents: {len(agents)} seed devices, one agent each with the "
                 "simulated-plant.toml channels, own gateway id and queue volume")


def check_console(model: dict) -> None:
    """The console reads what the ingester writes: its schema (so it waits for the
    ingester, which migrates it), its Redis keys (prefix) and its alerts topic."""
    services = model["services"]
    consoles = {n: s for n, s in services.items()
                if (binary_info(s) or {}).get("binary") == "console"}
    ingesters = {n: s for n, s in services.items()
                 if (binary_info(s) or {}).get("binary") == "cloud-ingester"}
    migrators = [n for n, s in ingesters.items() if "--migrate" in words(s.get("command"))]
    console_toml = ROOT / "console/config/console.toml"
    ingester_toml = ROOT / "cloud-ingester/config/cloud-ingester.toml"
    for name, svc in consoles.items():
        info = binary_info(svc)
        depends = svc.get("depends_on") or {}
        for dependency in ["postgres", "redis", *migrators[:1]]:
            if ((depends.get(dependency) or {}).get("condition")) != "service_healthy":
                why = "it migrates the schema the console reads" if dependency in migrators \
                    else "the console needs it"
                problem(f"{name}: must wait for {dependency} to be healthy ({why})")
        if not migrators:
            problem(f"{name}: no ingester service runs --migrate, so nothing creates the "
                    "schema the console reads")
        for ingester_name, ingester in ingesters.items():
            ingester_info = binary_info(ingester)
            for key in ("redis.prefix", "kafka.alerts_topic"):
                mine = effective(svc, info, console_toml, key)
                theirs = effective(ingester, ingester_info, ingester_toml, key)
                if str(mine) != str(theirs):
                    problem(f"{name}: {key} {mine!r} is not {ingester_name}'s {theirs!r} "
                            "(the console reads what the ingester writes)")
    if consoles:
        notes.append(f"console: {', '.join(consoles)} waits for postgres, redis and the "
                     "migrating ingester; Redis prefix and alerts topic as the ingester's")


# ------------------------------------------------------------------- gateway registry

GATEWAYS_INIT = "gateways-init"
# MQTT command-line clients a health check or command might run against a broker.
MQTT_TOOLS = ("mosquitto_sub", "mosquitto_pub", "mosquitto_rr")
# iotctl commands that connect to the broker.
IOTCTL_MQTT_COMMANDS = {"tail", "watch", "health"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Stands in for `iotctl gateways add|rotate` when gateways-init's script runs here: the
# registry is a JSON file, errors read like iotctl's, and anything else is refused.
STUB_IOTCTL = '''#!{python}
import json, os, sys
state = os.environ["CHECK_COMPOSE_REGISTRY"]
registry = json.load(open(state)) if os.path.exists(state) else {{"gateways": {{}}}}
args = sys.argv[1:]
def fail(message, code=1):
    print("Error: " + message, file=sys.stderr)
    sys.exit(code)
if os.environ.get("CHECK_COMPOSE_FAIL"):
    fail("connecting to PostgreSQL: Connection refused (os error 111)")
if args[:1] != ["gateways"] or len(args) < 3 or args[1] not in ("add", "rotate"):
    fail("the stand-in iotctl knows `gateways add|rotate ID` only, not " + " ".join(args), 2)
command, gateway, rest = args[1], args[2], args[3:]
devices, secret_file = [], None
while rest:
    if command == "add" and rest[0] == "--device" and len(rest) > 1:
        devices.append(rest[1])
    elif rest[0] == "--secret-file" and len(rest) > 1 and secret_file is None:
        secret_file = rest[1]
    else:
        fail("unexpected argument " + repr(rest[0]), 2)
    rest = rest[2:]
if secret_file is None:
    fail("no --secret-file: the secret would be printed to the log", 2)
gateways = registry["gateways"]
if command == "add":
    if gateway in gateways:
        fail("gateway " + gateway + " exists already")
    for other in gateways.values():  # a device is spoken for by one gateway: it moves
        other["devices"] = [d for d in other["devices"] if d not in devices]
    gateways[gateway] = {{"devices": devices, "secret": 0}}
elif gateway not in gateways:
    fail("no gateway " + gateway)
gateways[gateway]["secret"] += 1
gateways[gateway]["file"] = secret_file
fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
os.write(fd, ("secret-of-%s-%d\\n" % (gateway, gateways[gateway]["secret"])).encode())
os.close(fd)
json.dump(registry, open(state, "w"))
'''


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(volume, target, read-only) of each named-volume entry."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume" and entry.get("source"):
                result.append((entry["source"], entry["target"], bool(entry.get("read_only"))))
            continue
        parts = str(entry).split(":")
        if len(parts) >= 2 and not parts[0].startswith(("/", ".")):
            modes = parts[2].split(",") if len(parts) >= 3 else []
            result.append((parts[0], parts[1], "ro" in modes))
    return result


def run_gateways_init(model: dict, scratch: Path) -> dict | None:
    """Runs gateways-init's command here, its shell script and all, with a stand-in for
    iotctl (STUB_IOTCTL) and a directory for each named volume it writes: which gateways
    it registers, with which devices, where their secrets go. Then again: a re-run keeps
    every secret, a missing secret file gets a new secret (rotate), and a registry error
    fails the one-shot. Returns {"volumes": {volume: directory here}, "gateways": {id:
    {"devices", "volume", "file" (relative to the volume)}}}."""
    svc = model["services"].get(GATEWAYS_INIT)
    if svc is None:
        return None  # reported by check_services
    info = binary_info(svc)
    if not info or info["binary"] != "iotctl":
        problem(f"{GATEWAYS_INIT}: not built from docker/iotctl.Dockerfile")
        return None
    depends = svc.get("depends_on") or {}
    migrators = [n for n, s in model["services"].items()
                 if (binary_info(s) or {}).get("binary") == "cloud-ingester"
                 and "--migrate" in words(s.get("command"))]
    if not any((depends.get(m) or {}).get("condition") == "service_healthy" for m in migrators):
        problem(f"{GATEWAYS_INIT}: must wait for the ingester that runs --migrate to be "
                "healthy (it creates the registry's tables)")
    if not client_urls(svc, "DATABASE"):
        problem(f"{GATEWAYS_INIT}: no DATABASE_URL (the registry iotctl writes to)")
    declared = set(model.get("volumes") or {})
    volumes: dict[str, tuple[str, Path]] = {}
    for source, target, read_only in volume_mounts(svc):
        if source in declared and not read_only:
            volumes[target.rstrip("/")] = (source, scratch / "volumes" / source)
    if not volumes:
        problem(f"{GATEWAYS_INIT}: mounts no writable named volume for the secrets")
        return None
    binds = {t: s for s, t, bind in mounts(svc) if bind}

    def here(word: str) -> str:
        if word in binds:
            return binds[word]
        for target, (_, directory) in volumes.items():
            if word == target or word.startswith(target + "/"):
                return str(directory) + word[len(target):]
        return word

    args = [here(w) for w in words(svc.get("entrypoint")) + words(svc.get("command"))]
    compose_dir = ROOT / "deploy" / "compose"
    scripts = [Path(w) for w in args if Path(w).is_file()
               and Path(w).resolve().is_relative_to(compose_dir.resolve())]
    if not scripts:
        problem(f"{GATEWAYS_INIT}: runs no script of {rel(compose_dir)} (mounted from "
                f"there): {' '.join(args) or 'the image entrypoint alone'}")
        return None
    script = rel(scripts[0])
    for _, directory in volumes.values():
        directory.mkdir(parents=True, mode=0o700)
    stub = scratch / "bin" / "iotctl"
    stub.parent.mkdir()
    stub.write_text(STUB_IOTCTL.format(python=sys.executable))
    stub.chmod(0o755)
    registry = scratch / "registry.json"

    def run(fail: bool = False) -> subprocess.CompletedProcess:
        env = {**env_of(svc), "PATH": f"{stub.parent}:/usr/bin:/bin", "HOME": "/nonexistent",
               "CHECK_COMPOSE_REGISTRY": str(registry)}
        if fail:
            env["CHECK_COMPOSE_FAIL"] = "1"
        return subprocess.run(args, env=env, cwd=scratch, capture_output=True, text=True,
                              timeout=60)

    def detail(run_: subprocess.CompletedProcess) -> str:
        return " | ".join((run_.stderr or run_.stdout).strip().splitlines()[-3:])

    def secrets() -> dict[str, int]:
        state = json.loads(registry.read_text()) if registry.exists() else {"gateways": {}}
        return {g: e["secret"] for g, e in state["gateways"].items()}

    first = run()
    if first.returncode != 0:
        problem(f"{GATEWAYS_INIT}: {script} fails on an empty registry: {detail(first)}")
        return None
    state = json.loads(registry.read_text()) if registry.exists() else {"gateways": {}}
    gateways: dict[str, dict] = {}
    for gateway, entry in state["gateways"].items():
        path = Path(entry["file"])
        where = [(source, directory) for source, directory in volumes.values()
                 if path.resolve().is_relative_to(directory.resolve())]
        if not where:
            problem(f"{GATEWAYS_INIT}: {script} writes gateway {gateway}'s secret to "
                    f"{entry['file']}, outside the volumes it mounts")
            continue
        source, directory = where[0]
        gateways[gateway] = {"devices": sorted(entry["devices"]), "volume": source,
                             "file": str(path.resolve().relative_to(directory.resolve()))}
    before = secrets()
    again = run()
    if again.returncode != 0:
        problem(f"{GATEWAYS_INIT}: {script} fails when run again (every gateway exists "
                f"already): {detail(again)}")
    elif secrets() != before:
        changed = sorted(g for g, n in secrets().items() if before.get(g) != n)
        problem(f"{GATEWAYS_INIT}: {script} run again gives {', '.join(changed)} new "
                "secrets; a gateway whose secret file is there keeps it")
    if gateways:
        victim = sorted(gateways)[0]
        entry = gateways[victim]
        secret_path = dict((s, d) for s, d in volumes.values())[entry["volume"]] / entry["file"]
        secret_path.unlink()
        before = secrets()
        third = run()
        changed = sorted(g for g, n in secrets().items() if before.get(g) != n)
        if third.returncode != 0:
            problem(f"{GATEWAYS_INIT}: {script} fails when gateway {victim}'s secret file is "
                    f"missing: {detail(third)}")
        elif changed != [victim] or not secret_path.exists():
            problem(f"{GATEWAYS_INIT}: with gateway {victim}'s secret file missing, {script} "
                    f"should give it alone a new secret (rotate); new secrets: "
                    f"{', '.join(changed) or 'none'}")
    failing = run(fail=True)
    if failing.returncode == 0:
        problem(f"{GATEWAYS_INIT}: {script} exits 0 when iotctl fails (the registry away), so "
                "the services waiting for it would start without their secrets")
    notes.append(f"{GATEWAYS_INIT}: {script} run with a stand-in iotctl registers "
                 + ", ".join(f"{g} ({', '.join(e['devices']) or 'no device'})"
                             for g, e in sorted(gateways.items()))
                 + "; secrets 0600 in its volume; re-runs keep them, a missing file is "
                 "rotated, a registry error fails it")
    return {"volumes": {source: directory for source, directory in volumes.values()},
            "gateways": gateways}


def option(args: list[str], *flags: str) -> str | None:
    """The value after the first of these flags (or --flag=value) in args."""
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def check_gateways(model: dict, agents: dict[str, str], provisioned: dict | None) -> None:
    """No anonymous access to the embedded broker: each embedded bridge authenticates
    against the registry (the postgres service's URL: check_addresses), and every client
    of it in this file logs in as a gateway gateways-init registers, with the secret file
    gateways-init writes, mounted read-only, once gateways-init has completed."""
    services = model["services"]
    bridge_toml = ROOT / "bridge/config/bridge.toml"
    console_toml = ROOT / "console/config/console.toml"
    embedded: dict[str, int | None] = {}
    for name, svc in services.items():
        info = binary_info(svc)
        if not info or info["binary"] != "bridge" or \
                effective(svc, info, bridge_toml, "mode", "--mode") != "embedded":
            continue
        embedded[name] = port_of(effective(svc, info, bridge_toml, "embedded.listen",
                                           "--listen"))
        if not effective(svc, info, bridge_toml, "embedded.registry_url"):
            problem(f"{name}: no BRIDGE_EMBEDDED__REGISTRY_URL: its embedded broker cannot "
                    "authenticate devices against the gateway registry (the postgres "
                    "service's URL), so it refuses to start")
        if str(effective(svc, info, bridge_toml, "embedded.allow_anonymous")).lower() == "true":
            problem(f"{name}: embedded.allow_anonymous is true: anyone who reaches its MQTT "
                    "port publishes as any device; authenticate against the registry")
        users = sorted(v for v in env_of(svc) if v.startswith("BRIDGE_EMBEDDED__USERS"))
        if users:
            problem(f"{name}: {', '.join(users)}: passwords written in docker-compose.yml; "
                    f"register a gateway in {GATEWAYS_INIT}'s script instead")

    # Other MQTT clients in the file (health checks, commands) against an embedded broker.
    for name, svc in services.items():
        for part in ("healthcheck", "command", "entrypoint"):
            value = svc.get(part)
            if part == "healthcheck":
                value = (value or {}).get("test") if isinstance(value, dict) else None
            text = value if isinstance(value, str) else " ".join(words(value))
            try:
                args = shlex.split(text)
            except ValueError:
                args = text.split()
            for i, word in enumerate(args):
                tool, rest = word.rsplit("/", 1)[-1], args[i + 1:]
                if tool in MQTT_TOOLS:
                    host = option(rest, "-h", "--host") or "localhost"
                    port = option(rest, "-p", "--port") or "1883"
                    login = option(rest, "-u", "--username") and option(rest, "-P", "--pw")
                elif tool == "iotctl" and IOTCTL_MQTT_COMMANDS & set(rest):
                    env = env_of(svc)
                    host, _, port = (option(rest, "--mqtt") or env.get("IOTCTL_MQTT")
                                     or "127.0.0.1:1883").rpartition(":")
                    login = (option(rest, "--mqtt-user") or env.get("IOTCTL_MQTT_USER")) and \
                        (option(rest, "--mqtt-password-file")
                         or env.get("IOTCTL_MQTT_PASSWORD_FILE"))
                else:
                    continue
                target = name if host in LOOPBACK else host
                if target in embedded and port_of(port) == embedded[target] and not login:
                    problem(f"{name}: its {part} runs {tool} against {target}'s embedded "
                            "broker without a gateway's user and password, which it refuses")
    if provisioned is None:
        return  # why was reported by run_gateways_init
    gateways = provisioned["gateways"]

    def logs_in(name: str, svc: dict, variable: str, path, gateway) -> None:
        """svc connects as gateway with the password file at path (a container path)."""
        if ((svc.get("depends_on") or {}).get(GATEWAYS_INIT) or {}).get("condition") != \
                "service_completed_successfully":
            problem(f"{name}: must wait for {GATEWAYS_INIT} to complete successfully "
                    "(depends_on): it registers the gateway and writes the secret")
        if gateway not in gateways:
            problem(f"{name}: logs in as gateway {gateway}, which {GATEWAYS_INIT} does not "
                    "register")
            return
        entry = gateways[gateway]
        if not path:
            problem(f"{name}: no {variable}: it connects as gateway {gateway} without its "
                    f"secret ({entry['volume']}:{entry['file']})")
            return
        for source, target, read_only in volume_mounts(svc):
            target = target.rstrip("/")
            if str(path).startswith(target + "/"):
                if (source, str(path)[len(target) + 1:]) != (entry["volume"], entry["file"]):
                    problem(f"{name}: {variable} {path} is not where {GATEWAYS_INIT} writes "
                            f"gateway {gateway}'s secret ({entry['volume']}:{entry['file']})")
                elif not read_only:
                    problem(f"{name}: mounts {source} writable; read-only (:ro) is enough")
                return
        problem(f"{name}: {variable} {path} is in no volume it mounts ({GATEWAYS_INIT} "
                f"writes gateway {gateway}'s secret to volume {entry['volume']})")

    for name in agents:
        svc = services.get(name)
        info = binary_info(svc) if svc else None
        config = agent_config_path(svc) if info and info["binary"] == "edge-agent" else None
        if not config or not config.exists():
            continue  # reported by check_agents
        data = tomllib.loads(config.read_text())
        gateway = data.get("gateway", {}).get("id")
        devices = sorted(d.get("id") for d in data.get("devices", []))
        user = effective(svc, info, config, "mqtt.username")
        if user not in (None, "", gateway):
            problem(f"{name}: mqtt.username {user!r} is not its gateway.id {gateway!r} (its "
                    "MQTT client id), so the broker refuses it")
        if effective(svc, info, config, "mqtt.password") is not None:
            problem(f"{name}: mqtt.password is set; give the secret as a file "
                    "(EDGE_AGENT_MQTT__PASSWORD_FILE)")
        if gateway in gateways and gateways[gateway]["devices"] != devices:
            problem(f"{name}: {GATEWAYS_INIT} registers gateway {gateway} for "
                    f"{gateways[gateway]['devices']}, but {rel(config)} runs {devices} (the "
                    "broker refuses frames of devices a gateway does not speak for)")
        logs_in(name, svc, "EDGE_AGENT_MQTT__PASSWORD_FILE",
                effective(svc, info, config, "mqtt.password_file"), gateway)
    consoles = [n for n, s in services.items()
                if (binary_info(s) or {}).get("binary") == "console"]
    for name in consoles:
        svc, info = services[name], binary_info(services[name])
        user = effective(svc, info, console_toml, "pipeline.mqtt_user")
        if not user:
            problem(f"{name}: no CONSOLE_PIPELINE__MQTT_USER: the broker refuses its "
                    "anonymous connection (the agents' status on the pipeline page)")
            continue
        logs_in(name, svc, "CONSOLE_PIPELINE__MQTT_PASSWORD_FILE",
                effective(svc, info, console_toml, "pipeline.mqtt_password_file"), user)
    notes.append(f"gateways: the embedded broker of {', '.join(embedded) or 'no service'} "
                 f"authenticates against the registry, none anonymous; {len(agents)} agents "
                 f"and {', '.join(consoles)} log in as gateways {GATEWAYS_INIT} registers (the "
                 "agents' with their devices), with its secret files, read-only")


def check_state_volumes(model: dict) -> None:
    services = model["services"]
    declared = set(model.get("volumes") or {})
    data_dirs = {"postgres": "/var/lib/postgresql/data", "redis": "/data"}
    kafka = services.get("kafka")
    if kafka:
        data_dirs["kafka"] = env_of(kafka).get("KAFKA_LOG_DIRS", "/var/lib/kafka/data")
    grafana = services.get("grafana")
    if grafana:
        data_dirs["grafana"] = env_of(grafana).get("GF_PATHS_DATA", "/var/lib/grafana")
    for name, directory in data_dirs.items():
        svc = services.get(name)
        if svc and not any(not bind and s in declared and t.rstrip("/") == directory
                           for s, t, bind in mounts(svc)):
            problem(f"{name}: no named volume at its data directory {directory}")
    for source, target, bind in (m for svc in services.values() for m in mounts(svc)):
        if bind and not Path(source).exists():
            problem(f"bind mount source {rel(Path(source))} does not exist")


def dockerfile_instructions(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage: [(INSTRUCTION, argument text)], continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, argument.strip()))
    return stages


_locked: list[tuple[str, tuple[int, ...]]] | None = None


def locked_rust_versions() -> list[tuple[str, tuple[int, ...]]]:
    """(package, rust-version) of every package in Cargo.lock that declares one, from
    `cargo metadata --offline` (empty when cargo or the downloaded sources are missing)."""
    global _locked
    if _locked is None:
        _locked = []
        try:
            run = subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked",
                                  "--offline"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            run = None
        if run is None or run.returncode != 0:
            notes.append("Cargo.lock's rust-versions not checked (cargo metadata --offline "
                         "failed; fetch the dependencies first)")
        else:
            for package in json.loads(run.stdout)["packages"]:
                if package.get("rust_version"):
                    version = tuple(int(x) for x in package["rust_version"].split("."))
                    _locked.append((f"{package['name']} {package['version']}", version))
    return _locked


def check_dockerfiles(model: dict) -> None:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    rust_version = tuple(int(x) for x in cargo["workspace"]["package"]["rust-version"].split("."))
    members = cargo["workspace"]["members"]
    builds: dict[str, tuple[Path, Path]] = {}
    for name, svc in model["services"].items():
        found = dockerfile_of(svc)
        if not found:
            continue
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = Path(build.get("context", "."))
        if not context.is_absolute():
            context = ROOT / context
        if not context.is_dir():
            problem(f"{name}: build context {rel(context)} is not a directory")
            continue
        label, path = found
        if not path.exists():
            problem(f"{name}: {label} does not exist")
            continue
        builds.setdefault(label, (path, context))
    # A Dockerfile no service builds is checked too (built from the root, as documented).
    for path in sorted((ROOT / "docker").glob("*.Dockerfile")):
        builds.setdefault(rel(path), (path, ROOT))
    seen = set()
    for label, (path, context) in builds.items():
        seen.add(label)
        info = BINARIES.get(label)
        if not info:
            problem(f"{label}: check-compose does not know which crate it builds (BINARIES)")
        stages = dockerfile_instructions(path)
        if len(stages) < 2:
            problem(f"{label}: not a multi-stage build")
        final = stages[-1] if stages else []
        users = [argument for instruction, argument in final if instruction == "USER"]
        if not users:
            problem(f"{label}: the final stage has no USER (it would run as root)")
        elif users[-1].split(":")[0] in ("root", "0"):
            problem(f"{label}: the final stage runs as root")
        for stage in stages:
            for instruction, argument in stage:
                if instruction == "FROM":
                    image = argument.split()[0]
                    if image.endswith(":latest") or (":" not in image and "@" not in image
                                                     and not any(image == s[0][1].split()[-1]
                                                                 for s in stages)):
                        problem(f"{label}: FROM {image} has no pinned tag")
                    rust = re.match(r"rust:(\d+)\.(\d+)", image)
                    if rust and (int(rust[1]), int(rust[2])) < rust_version[:2]:
                        problem(f"{label}: {image} is older than rust-version "
                                f"{'.'.join(map(str, rust_version))} (Cargo.toml)")
                    newest = max(locked_rust_versions(), key=lambda p: p[1], default=None)
                    if rust and newest and newest[1][:2] > (int(rust[1]), int(rust[2])):
                        problem(f"{label}: {image} is too old for Cargo.lock: {newest[0]} "
                                f"needs Rust {'.'.join(map(str, newest[1]))}")
                if instruction == "RUN" and "apt-get install" in argument:
                    if "--no-install-recommends" not in argument:
                        problem(f"{label}: apt-get install without --no-install-recommends")
                    if "rm -rf /var/lib/apt/lists" not in argument:
                        problem(f"{label}: apt lists are left in the layer")
                if instruction in ("COPY", "ADD") and "--from=" not in argument:
                    sources = [a for a in argument.split() if not a.startswith("--")][:-1]
                    for source in sources:
                        if source != "." and not any(c in source for c in "*?[") and \
                                not (context / source).exists():
                            problem(f"{label}: {instruction} {source}: not in the build context")
        if info:
            builds = [a for s in stages for i, a in s if i == "RUN" and "cargo build" in a]
            if not any(re.search(rf"-p {re.escape(info['crate'])}(\s|$)", b)
                       and "--locked" in b and "--release" in b for b in builds):
                problem(f"{label}: no `cargo build --release --locked -p {info['crate']}`")
            entry = " ".join(a for i, a in final if i == "ENTRYPOINT")
            if f"/usr/local/bin/{info['binary']}" not in entry:
                problem(f"{label}: the ENTRYPOINT does not run /usr/local/bin/{info['binary']}")
            if info.get("tool"):
                continue  # no configuration file, no health check
            copied = {}
            for instruction, argument in final:
                parts = [a for a in argument.split() if not a.startswith("--")]
                if instruction == "COPY" and "--from=" not in argument and len(parts) == 2:
                    copied[parts[0]] = parts[1]
            examples = [e for e in info["examples"] if e in copied]
            if not examples:
                problem(f"{label}: the final stage does not COPY the example configuration "
                        f"({' or '.join(info['examples'])})")
            config_env = info["prefix"] + "CONFIG"
            for instruction, argument in final:
                if instruction != "ENV":
                    continue
                for assignment in shlex.split(argument):
                    key, _, value = assignment.partition("=")
                    if examples and key == config_env and \
                            value not in {copied[e] for e in examples}:
                        problem(f"{label}: ENV {config_env}={value} is not where the example "
                                "configuration is copied")
            if not any(i == "HEALTHCHECK" for i, _ in final):
                problem(f"{label}: the final stage has no HEALTHCHECK")
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        problem(".dockerignore is missing")
    else:
        patterns = [p.strip().rstrip("/") for p in ignore.read_text().splitlines()
                    if p.strip() and not p.startswith("#") and not p.startswith("!")]

        def ignored(path: str) -> bool:
            return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)

        for junk in ("target", ".stack", "fuzz/artifacts", "fuzz/corpus", "fuzz/target",
                     ".env"):
            if not ignored(junk):
                problem(f".dockerignore: does not exclude {junk}")
        for needed in ["Cargo.toml", "Cargo.lock", "migrations", *members]:
            if ignored(needed):
                problem(f".dockerignore: excludes {needed}, which the build needs")
    notes.append(f"Dockerfiles: {', '.join(sorted(seen))}: multi-stage, --locked builds, "
                 "a Rust image no older than any locked package needs, non-root final USER, "
                 "the services' with the example config copied and a HEALTHCHECK; "
                 ".dockerignore")


# ---------------------------------------------------------------------------- secrets


def is_reference(value: str) -> bool:
    """A value that is entirely one interpolation without a default: compose's ${VAR},
    ${VAR:-}, ${VAR:?message}, or the container's own $${VAR...} / $$VAR."""
    if env_reference(value):
        return True
    return bool(re.fullmatch(r"\$\$(\w+|\{\w+(?::?-|:?\?[^}]*)?\})", value))


def mask(text: str) -> tuple[str, list[str]]:
    """text with each interpolation replaced by its index between NUL characters, and the
    interpolations."""
    found: list[str] = []

    def keep(match: re.Match) -> str:
        found.append(match[0])
        return f"\0{len(found) - 1}\0"

    return INTERPOLATION.sub(keep, text), found


def unmask(text: str, found: list[str]) -> str:
    return re.sub(r"\0(\d+)\0", lambda m: found[int(m[1])], text)


def strings(value, where: str):
    """(where, text) of every string below value; where as service.key.key[i]."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{where}[{i}]")


def argument_secrets(args: list[str]) -> list[tuple[str, str]]:
    """(flag or name, value) of each secret a command line passes: `--password x`,
    `--password=x`, `PASSWORD=x` (shell scripts are split into words), redis-cli's -a."""
    split = []
    for arg in args:
        masked, refs = mask(arg)
        try:
            parts = shlex.split(masked) if re.search(r"\s", masked) else [masked]
        except ValueError:
            parts = masked.split()
        split += [unmask(w, refs) for w in parts]
    found = []
    for i, word in enumerate(split):
        following = split[i + 1] if i + 1 < len(split) else None
        if word.startswith("-"):
            flag, equals, value = word.lstrip("-").partition("=")
            if equals and SECRET_NAME.search(flag):
                found.append((word.split("=", 1)[0], value))
            elif not equals and following is not None and not following.startswith("-") \
                    and (SECRET_NAME.search(flag) or (
                        flag == "a" and any(w.endswith("redis-cli") for w in split[:i]))):
                found.append((word, following))
        elif re.fullmatch(r"\w+=.*", word, re.S):
            name, _, value = word.partition("=")
            if SECRET_NAME.search(name):
                found.append((name, value))
    return found


def check_secrets(raw: dict, keys: list[str]) -> None:
    """No secret is written in docker-compose.yml: each comes from .env (written by
    scripts/compose-env.sh) or the container's environment. Reads the file as written
    (anchors resolved), not as interpolated."""
    services = raw.get("services") or {}
    required: set[str] = set()
    suggestion = "${VAR:?run scripts/compose-env.sh}"
    checked = 0
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        environment = svc.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) if "=" in item else (item, None)
                               for item in map(str, environment))
        for key, value in environment.items():
            if value is None or not SECRET_NAME.search(key) or key.endswith("_FILE"):
                continue  # None: passed through from compose's own environment
            checked += 1
            if not is_reference(str(value)):
                problem(f"{name}: environment {key} is a literal secret in "
                        f"docker-compose.yml; take it from .env ({suggestion})")
        for entry in str(environment.get("REDIS_HOSTS") or "").split(","):
            masked, refs = mask(entry)
            fields = masked.split(":")
            if len(fields) >= 5:
                checked += 1
                if not is_reference(unmask(":".join(fields[4:]), refs)):
                    problem(f"{name}: environment REDIS_HOSTS has a literal password in "
                            f"docker-compose.yml; take it from .env ({suggestion})")
        for part in ("command", "entrypoint", "healthcheck"):
            value = svc.get(part)
            if part == "healthcheck":
                value = (value or {}).get("test") if isinstance(value, dict) else None
            args = [value] if isinstance(value, str) else [str(a) for a in value or []]
            for flag, secret in argument_secrets(args):
                checked += 1
                if not is_reference(secret):
                    problem(f"{name}: {part} passes {flag} a literal secret in "
                            f"docker-compose.yml; take it from .env ({suggestion})")
        grafana_admin = f"{name}.environment.GF_SECURITY_ADMIN_PASSWORD"
        for where, text in strings(svc, name):
            masked, refs = mask(text)
            for match in URL_PASSWORD.finditer(masked):
                checked += 1
                if not is_reference(unmask(match[1], refs)):
                    problem(f"{where.replace('.', ': ', 1)}: a URL with a literal password "
                            f"in docker-compose.yml; take it from .env "
                            f"(scheme://user:{suggestion}@host)")
            # Compose's interpolations ($${...} is the container's): what .env must hold.
            for match in re.finditer(r"(?<!\$)\$\{(\w+)([^}]*)\}", text):
                variable, rest = match[1], match[2]
                if rest.startswith(("?", ":?")):
                    required.add(variable)
                elif variable in keys and where != grafana_admin:
                    # Anything but Grafana's admin password (its entrypoint refuses an empty
                    # one: check_grafana) would run with an empty password.
                    problem(f"{where.replace('.', ': ', 1)}: ${{{variable}{rest}}} may be "
                            f"empty; require it: ${{{variable}:?run scripts/compose-env.sh}}")
    for variable in sorted(required - set(keys)):
        problem(f"docker-compose.yml requires ${variable}, which {rel(COMPOSE_ENV)} does not "
                "generate (its KEYS)")
    ignored = ROOT / ".gitignore"
    patterns = [p.strip() for p in ignored.read_text().splitlines()] if ignored.exists() else []
    if not {".env", "/.env"} & set(patterns):
        problem(".gitignore: does not ignore /.env, which holds the compose secrets")
    notes.append(f"secrets: {checked} secret settings, each from .env or the container's "
                 f"environment, none written in docker-compose.yml; required: "
                 f"{', '.join(sorted(required))}, all generated by {rel(COMPOSE_ENV)}; "
                 ".env ignored by git and the build context")


def check_local_ports(model: dict) -> None:
    """What has no login of its own (the `tools` profile) or is for local tools only
    (PostgreSQL, Redis) is published on 127.0.0.1 only."""
    local = []
    for name, svc in model["services"].items():
        image = str(svc.get("image", "")).split("/")[-1]
        tools = "tools" in (svc.get("profiles") or [])
        if not tools and not image.startswith(("postgres:", "redis:")):
            continue
        for entry in svc.get("ports") or []:
            if host_address(entry) not in LOCAL_ADDRESSES:
                shown = entry if not isinstance(entry, dict) else \
                    f"{entry.get('published')}:{entry.get('target')}"
                problem(f"{name}: port {shown} is published on every interface; bind it to "
                        "127.0.0.1 (\"127.0.0.1:HOST:CONTAINER\")")
        local.append(name)
    notes.append(f"local ports: {', '.join(local)} published on 127.0.0.1 only")


# ------------------------------------------------------------------- the Grafana bundle

GRAFANA = ROOT / "deploy" / "grafana"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources"
GRAFANA_PROVIDERS = GRAFANA / "provisioning" / "dashboards"
GRAFANA_DASHBOARDS = GRAFANA / "dashboards"
# The built-in PostgreSQL plugin: its id, and the alias every Grafana version accepts.
POSTGRES_TYPES = {"grafana-postgresql-datasource", "postgres"}
# Grafana's SQL macros, $__name(...); $__name without arguments is a built-in variable.
GRAFANA_MACROS = {
    "__time", "__timeEpoch", "__timeFilter", "__timeFrom", "__timeTo", "__timeGroup",
    "__timeGroupAlias", "__unixEpochFilter", "__unixEpochFrom", "__unixEpochTo",
    "__unixEpochNanoFilter", "__unixEpochNanoFrom", "__unixEpochNanoTo",
    "__unixEpochGroup", "__unixEpochGroupAlias",
}
# Macros that name their result "time", and those whose first argument is a time column.
TIME_COLUMN_MACROS = {"__time", "__timeEpoch", "__timeGroupAlias", "__unixEpochGroupAlias"}
TIME_ARGUMENT_MACROS = {"__time", "__timeEpoch", "__timeFilter", "__timeGroup",
                        "__timeGroupAlias"}
# Tables that grow without bound: a panel reads them within the dashboard's time range.
TIME_FILTERED_TABLES = {"sensor_readings", "device_stats_hourly"}
SQL_KEYWORDS = set("""
    select from where and or not as on using join left right inner outer full cross
    natural lateral group by order asc desc nulls first last limit offset fetch next rows
    row only having distinct case when then else end is null true false in between like
    ilike similar to exists interval filter over partition window with recursive union
    intersect except all any some cast escape at time zone precision varying without
    values default unknown isnull notnull collate
""".split())

SQL_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>[EeBbXxUu]?'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*|)\$.*?\$(?P=tag)\$)
  | (?P<macro>\$__\w+)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<op>::|<>|!=|<=|>=|\|\||.)
""", re.S | re.X)
SQL_KINDS = ("space", "comment", "string", "dollar", "macro", "var", "qident", "number",
             "ident", "op")


def sql_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) of each token, comments and white space left out: identifiers in
    lower case, quoted ones unquoted, strings and dollar-quoted bodies as one token."""
    tokens = []
    for match in SQL_TOKEN.finditer(text):
        kind = next(k for k in SQL_KINDS if match.group(k) is not None)
        value = match.group(kind)
        if kind in ("space", "comment"):
            continue
        if kind == "ident":
            value = value.lower()
        elif kind == "qident":
            value = value[1:-1].replace('""', '"')
        tokens.append((kind, value))
    return tokens


def _word(tokens: list, i: int, *words: str) -> bool:
    return 0 <= i < len(tokens) and tokens[i][0] == "ident" and tokens[i][1] in words


def _name(tokens: list, i: int) -> str | None:
    return tokens[i][1] if 0 <= i < len(tokens) and tokens[i][0] in ("ident", "qident") \
        else None


def _qualified(tokens: list, i: int) -> tuple[str | None, int]:
    """A possibly schema-qualified name at i: (its last part, the index after it)."""
    name = _name(tokens, i)
    while name is not None and i + 2 < len(tokens) and tokens[i + 1] == ("op", ".") \
            and _name(tokens, i + 2):
        i += 2
        name = _name(tokens, i)
    return name, i + 1


def _split_top(tokens: list, separator: tuple[str, str]) -> list[list]:
    """tokens split at separator, outside parentheses."""
    parts, depth, current = [], 0, []
    for token in tokens:
        if token == ("op", "("):
            depth += 1
        elif token == ("op", ")"):
            depth -= 1
        if token == separator and depth == 0:
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    return parts


def _parenthesised(tokens: list, i: int) -> tuple[list, int]:
    """The tokens inside the parentheses opening at i, and the index after them."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", "("):
            depth += 1
        elif tokens[j] == ("op", ")"):
            depth -= 1
            if depth == 0:
                return tokens[i + 1:j], j + 1
    return tokens[i + 1:], len(tokens)


COLUMN_TYPE_END = {"not", "null", "default", "constraint", "primary", "references", "check",
                   "generated", "unique", "collate"}
TABLE_CONSTRAINTS = {"constraint", "primary", "unique", "check", "foreign", "exclude"}


def _column_type(item: list) -> str:
    words_ = []
    for kind, value in item:
        if kind != "ident" or value in COLUMN_TYPE_END:
            break
        words_.append(value)
    return " ".join(words_)


_schema: dict[str, dict[str, str]] | None = None


def migration_schema() -> dict[str, dict[str, str]]:
    """{table: {column: type}} as migrations/*.sql leave them: CREATE TABLE column lists
    (and LIKE, PARTITION OF), ALTER TABLE ADD / DROP / RENAME COLUMN and RENAME TO, DROP
    TABLE. Function bodies are strings to this parse, so the tables they make are not
    counted (none is queried by name)."""
    global _schema
    if _schema is not None:
        return _schema
    tables: dict[str, dict[str, str]] = {}
    for path in sorted(ROOT.glob("migrations/*.sql")):
        for st in _split_top(sql_tokens(path.read_text()), ("op", ";")):
            if _word(st, 0, "create"):
                i = 1
                while _word(st, i, "temp", "temporary", "unlogged", "global", "local"):
                    i += 1
                if not _word(st, i, "table"):
                    continue
                i += 1
                if _word(st, i, "if"):
                    i += 3
                name, i = _qualified(st, i)
                if name is None:
                    continue
                if i < len(st) and st[i] == ("op", "("):
                    inner, _ = _parenthesised(st, i)
                    columns: dict[str, str] = {}
                    for item in _split_top(inner, ("op", ",")):
                        head = _name(item, 0)
                        if head is None or (item[0][0] == "ident" and head in TABLE_CONSTRAINTS):
                            continue
                        if item[0][0] == "ident" and head == "like":
                            source, _ = _qualified(item, 1)
                            columns.update(tables.get(source or "", {}))
                            continue
                        columns[head] = _column_type(item[1:])
                    tables[name] = columns
                elif _word(st, i, "partition") and _word(st, i + 1, "of"):
                    parent, _ = _qualified(st, i + 2)
                    tables[name] = dict(tables.get(parent or "", {}))
            elif _word(st, 0, "alter") and _word(st, 1, "table"):
                i = 2
                if _word(st, i, "if"):
                    i += 2
                if _word(st, i, "only"):
                    i += 1
                name, i = _qualified(st, i)
                if name not in tables:
                    continue
                for action in _split_top(st[i:], ("op", ",")):
                    if _word(action, 0, "add"):
                        j = 1
                        if _word(action, j, *TABLE_CONSTRAINTS):
                            continue
                        if _word(action, j, "column"):
                            j += 1
                        if _word(action, j, "if"):
                            j += 3
                        column = _name(action, j)
                        if column:
                            tables[name][column] = _column_type(action[j + 1:])
                    elif _word(action, 0, "drop") and _word(action, 1, "column"):
                        j = 4 if _word(action, 2, "if") else 2
                        tables[name].pop(_name(action, j) or "", None)
                    elif _word(action, 0, "rename") and _word(action, 1, "to"):
                        tables[_name(action, 2) or name] = tables.pop(name)
                        name = _name(action, 2) or name
                    elif _word(action, 0, "rename"):
                        j = 2 if _word(action, 1, "column") else 1
                        old, new = _name(action, j), _name(action, j + 2)
                        if old in tables[name] and new:
                            tables[name][new] = tables[name].pop(old)
            elif _word(st, 0, "drop") and _word(st, 1, "table"):
                for part in _split_top(st[2:], ("op", ",")):
                    j = 2 if _word(part, 0, "if") else 0
                    name, _ = _qualified(part, j)
                    tables.pop(name or "", None)
    if not tables:
        problem("migrations/: no CREATE TABLE found (has their form changed?)")
    _schema = tables
    return tables


GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def check_variables(where: str, text: str, variables: set[str]) -> None:
    for match in GRAFANA_VARIABLE.finditer(text):
        name = next(g for g in match.groups() if g)
        if not name.startswith("__") and name not in variables:
            problem(f"{where}: ${name} is not a variable of the dashboard")


def check_query(where: str, sql: str, schema: dict[str, dict[str, str]],
                variables: set[str]) -> dict:
    """One dashboard query against the schema of migrations/: every table it reads is
    created there, every column it names is a column of one of them (qualified names of
    the table they qualify), every variable is the dashboard's and every macro
    Grafana's. Returns the tables read and whether a time filter and column are there."""
    check_variables(where, sql, variables)
    raw = sql_tokens(sql)
    tokens: list[tuple[str, str]] = []
    time_column = time_filter = False
    time_arguments: list[tuple[str, list]] = []
    for i, (kind, value) in enumerate(raw):
        if kind == "macro":
            macro = value[1:]
            if i + 1 < len(raw) and raw[i + 1] == ("op", "("):
                if macro not in GRAFANA_MACROS:
                    problem(f"{where}: ${macro}(...) is not a macro of Grafana's SQL data "
                            "sources")
                time_column |= macro in TIME_COLUMN_MACROS
                time_filter |= macro in ("__timeFilter", "__unixEpochFilter",
                                         "__unixEpochNanoFilter")
                if macro in TIME_ARGUMENT_MACROS:
                    inner, _ = _parenthesised(raw, i + 1)
                    time_arguments.append((macro, _split_top(inner, ("op", ","))[0]))
                continue  # the arguments stay, as the expression they are
            tokens.append(("number", "0"))  # a built-in variable ($__interval, ...)
        elif kind == "var":
            tokens.append(("number", "0"))
        else:
            tokens.append((kind, value))

    n = len(tokens)
    relations: dict[str, str | None] = {}  # table or alias -> table (None: not a table)
    aliases: set[str] = set()
    consumed: set[int] = set()
    query_group = [True]  # does each open parenthesis hold a query?
    ctes: set[str] = set()
    for i, (kind, value) in enumerate(tokens):
        if (kind, value) == ("op", "("):
            query_group.append(_word(tokens, i + 1, "select", "with", "values"))
        elif (kind, value) == ("op", ")"):
            if len(query_group) > 1 and query_group.pop():
                # A subquery's alias, (SELECT ...) [AS] name: a relation of unknown columns.
                j = i + 2 if _word(tokens, i + 1, "as") else i + 1
                alias = _name(tokens, j)
                if alias and (tokens[j][0] == "qident" or alias not in SQL_KEYWORDS):
                    relations[alias] = None
                    consumed.add(j)
        elif _name(tokens, i) and _word(tokens, i + 1, "as") and i + 2 < n \
                and tokens[i + 2] == ("op", "(") and _word(tokens, i + 3, "select", "with",
                                                              "values"):
            ctes.add(value)  # WITH name AS (SELECT ...)
            relations[value] = None
            consumed.add(i)
        elif _word(tokens, i, "extract") and i + 1 < n and tokens[i + 1] == ("op", "("):
            consumed.add(i + 2)  # extract(field FROM ...)
        elif _word(tokens, i, "from", "join") and query_group[-1]:
            j = i + 1
            while True:
                while _word(tokens, j, "lateral", "only"):
                    j += 1
                if j < n and tokens[j] == ("op", "("):
                    break  # a subquery: its alias is taken as an alias below
                start = j
                table, j = _qualified(tokens, j)
                if table is None:
                    break
                consumed.update(range(start, j))
                if table in ctes:
                    relations[table] = None
                else:
                    if table not in schema:
                        problem(f"{where}: table {table} is not created by migrations/")
                    relations[table] = table
                if _word(tokens, j, "as"):
                    j += 1
                alias = _name(tokens, j)
                if alias and (tokens[j][0] == "qident" or alias not in SQL_KEYWORDS):
                    relations[alias] = relations[table]
                    consumed.add(j)
                    j += 1
                if value == "from" and j < n and tokens[j] == ("op", ","):
                    j += 1
                    continue
                break
        if _word(tokens, i, "as") and _name(tokens, i + 1) and i + 1 not in consumed:
            aliases.add(tokens[i + 1][1])
    aliases -= set(relations)
    in_scope = {t for t in relations.values() if t}
    unknown_columns = any(t is None for t in relations.values())  # CTEs, subqueries
    time_column |= "time" in aliases

    def column_type(qualifier: str | None, column: str) -> str | None:
        tables = [relations.get(qualifier)] if qualifier else sorted(in_scope)
        for table in tables:
            if table and column in schema.get(table, {}):
                return schema[table][column]
        return None

    for i, (kind, value) in enumerate(tokens):
        if i in consumed or kind not in ("ident", "qident"):
            continue
        if kind == "ident" and value in SQL_KEYWORDS:
            continue
        before = tokens[i - 1] if i else None
        after = tokens[i + 1] if i + 1 < n else None
        if before in (("op", "::"), ("op", ".")) or after == ("op", "(") or \
                _word(tokens, i - 1, "as"):
            continue  # a type, a qualified name's column, a function, an alias
        if after == ("op", ".") and _name(tokens, i + 2):
            column = tokens[i + 2][1]
            if value in relations:
                table = relations[value]
                if table in schema and column not in schema[table]:
                    problem(f"{where}: {value}.{column}: {table} has no column {column} "
                            "(migrations/)")
            elif value not in aliases:
                problem(f"{where}: {value}.{column}: {value} is not a table of the query")
            continue
        if value in relations or value in aliases:
            continue
        if column_type(None, value) is None and not unknown_columns:
            problem(f"{where}: column {value} is in none of its tables "
                    f"({', '.join(sorted(in_scope)) or 'none'}; migrations/)")
    for macro, argument in time_arguments:
        names = [v for k, v in argument if k in ("ident", "qident")]
        if len(argument) == 1 and names:
            qualifier, column = None, names[0]
        elif len(argument) == 3 and len(names) == 2 and argument[1] == ("op", "."):
            qualifier, column = names
        else:
            continue
        found = column_type(qualifier, column)
        if found is not None and not found.startswith(("timestamp", "date")):
            problem(f"{where}: ${macro}({column}): {column} is {found}, not a timestamp")
    return {"tables": in_scope, "time_filter": time_filter, "time_column": time_column}


def node_of(node, *keys):
    """The YAML node at keys under a mapping node (yaml.compose), or None."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if k.value == key), None)
    return node


def env_reference(value: str) -> str | None:
    """VAR of `${VAR}`, `${VAR:-}`, `${VAR-}` or `${VAR:?message}` (no default value)."""
    match = re.fullmatch(r"\$\{(\w+)(?::?-|:?\?[^}]*)?\}", value)
    return match[1] if match else None


def bind_mounts(svc: dict) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of each bind mount."""
    result = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") != "bind":
                continue
            result.append((Path(entry["source"]), entry["target"].rstrip("/"),
                           bool(entry.get("read_only"))))
            continue
        parts = str(entry).split(":")
        if len(parts) >= 2 and parts[0].startswith(("/", ".")):
            options = parts[2].split(",") if len(parts) >= 3 else []
            result.append((Path(parts[0]), parts[1].rstrip("/"), "ro" in options))
    return result


def check_grafana(model: dict, compose_text: str) -> None:
    """The grafana service and the bundle it mounts from deploy/grafana/."""
    services = model["services"]
    grafana, postgres = services.get("grafana"), services.get("postgres")
    if grafana is None or postgres is None:
        return  # check_services reports it
    env, penv = env_of(grafana), env_of(postgres)

    # The service: a pinned image, 127.0.0.1 only, a health check, postgres first.
    image = str(grafana.get("image", ""))
    if not re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?",
                        image):
        problem(f"grafana: image {image!r} is not grafana/grafana-oss pinned to a version "
                "(X.Y.Z)")
    http = int(env.get("GF_SERVER_HTTP_PORT", "3000"))
    for entry in grafana.get("ports") or []:
        if host_address(entry) not in LOCAL_ADDRESSES:
            shown = entry if not isinstance(entry, dict) else \
                f"{entry.get('published')}:{entry.get('target')}"
            problem(f"grafana: port {shown} is published on every interface, not on "
                    "127.0.0.1 only")
    if http not in {target for _, target in published(grafana)}:
        problem(f"grafana: its HTTP port {http} is not published")
    check = healthcheck_text(grafana)
    if f"127.0.0.1:{http}/api/health" not in check and f"localhost:{http}/api/health" not in check:
        problem(f"grafana: the health check should ask /api/health on port {http} ({check!r})")
    if ((grafana.get("depends_on") or {}).get("postgres") or {}).get("condition") != \
            "service_healthy":
        problem("grafana: must wait for postgres to be healthy")

    # Passwords: none written in the file. Each is a ${VAR} reference without a default,
    # or the postgres service's own (a YAML alias of its node).
    root = yaml.compose(compose_text)
    raw_env = node_of(root, "services", "grafana", "environment")
    postgres_nodes = {id(v): k.value for k, v in
                      getattr(node_of(root, "services", "postgres", "environment"), "value", [])}
    if isinstance(raw_env, yaml.MappingNode):
        for key, value in raw_env.value:
            if "PASSWORD" not in key.value or key.value.endswith("__FILE"):
                continue
            if id(value) in postgres_nodes or env_reference(str(value.value)):
                continue
            problem(f"grafana: {key.value} is written in docker-compose.yml; take it from "
                    "an environment variable (${VAR}, no default) or alias the postgres "
                    "service's")
    else:
        problem("grafana: environment should be a mapping (so its passwords can be checked)")
    admin = node_of(raw_env, "GF_SECURITY_ADMIN_PASSWORD") if raw_env is not None else None
    if "GF_SECURITY_ADMIN_PASSWORD__FILE" not in env:
        if admin is None:
            problem("grafana: GF_SECURITY_ADMIN_PASSWORD is not set: Grafana's admin "
                    "password would be `admin`")
        elif env_reference(str(admin.value)) and ":?" not in str(admin.value):
            # Possibly empty (Grafana then keeps `admin`): the container must refuse.
            entry = " ".join(words(grafana.get("entrypoint")))
            if not re.search(r"\$\{GF_SECURITY_ADMIN_PASSWORD:\?[^}]+\}", entry) or \
                    "exec /run.sh" not in entry:
                problem(f"grafana: GF_SECURITY_ADMIN_PASSWORD={admin.value} may be empty "
                        "(Grafana then keeps `admin`), and the entrypoint does not refuse "
                        "to start without it (${GF_SECURITY_ADMIN_PASSWORD:?...}; exec "
                        "/run.sh)")

    # Mounts: the bundle read-only where Grafana looks for it.
    binds = bind_mounts(grafana)
    for source, target, read_only in binds:
        if not read_only:
            problem(f"grafana: {rel(source)} is mounted read-write at {target} (:ro)")

    def inside(host: Path) -> str | None:
        for source, target, _ in binds:
            try:
                rest = host.resolve().relative_to(source.resolve())
            except ValueError:
                continue
            return target + ("" if str(rest) == "." else "/" + str(rest))
        return None

    def outside(path: str) -> Path | None:
        path = path.rstrip("/")
        for source, target, _ in sorted(binds, key=lambda b: -len(b[1])):
            if path == target or path.startswith(target + "/"):
                return source / path[len(target):].lstrip("/")
        return None

    provisioning = env.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning").rstrip("/")
    for host, kind in ((GRAFANA_DATASOURCES, "datasources"), (GRAFANA_PROVIDERS, "dashboards")):
        if inside(host) != f"{provisioning}/{kind}":
            problem(f"grafana: {rel(host)} is not mounted at {provisioning}/{kind} "
                    f"(found {inside(host)})")
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (outside(home) and outside(home).is_file()):
        problem(f"grafana: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is no mounted file")

    # The data source: the compose postgres service, its database and user, the password
    # from the grafana service's environment.
    datasources: dict[str, dict] = {}
    files = sorted(GRAFANA_DATASOURCES.glob("*.yaml")) + sorted(GRAFANA_DATASOURCES.glob("*.yml"))
    if not files:
        problem(f"{rel(GRAFANA_DATASOURCES)}: no data source file")
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            problem(f"{rel(path)}: not YAML: {' '.join(str(error).split())}")
            continue
        if not isinstance(data, dict) or data.get("apiVersion") != 1:
            problem(f"{rel(path)}: apiVersion 1 expected")
        entries = data.get("datasources") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            problem(f"{rel(path)}: no `datasources` list")
            continue
        for ds in entries:
            if not isinstance(ds, dict):
                problem(f"{rel(path)}: a data source that is not a mapping")
                continue
            label = f"{rel(path)}: data source {ds.get('name')!r}"
            missing = [k for k in ("name", "uid", "type", "url", "user") if not ds.get(k)]
            if missing:
                problem(f"{label}: no {', '.join(missing)}")
            if ds.get("type") not in POSTGRES_TYPES:
                problem(f"{label}: type {ds.get('type')!r} is not PostgreSQL "
                        f"({' or '.join(sorted(POSTGRES_TYPES))})")
                continue
            datasources[str(ds.get("uid"))] = ds
            host, _, port = str(ds.get("url", "")).rpartition(":")
            if host not in services or not str(services[host].get("image", "")).startswith(
                    "postgres") or port != "5432":
                problem(f"{label}: url {ds.get('url')!r} is not the compose postgres service "
                        "(postgres:5432)")
            if ds.get("user") != penv.get("POSTGRES_USER"):
                problem(f"{label}: user {ds.get('user')!r} is not the postgres service's "
                        f"POSTGRES_USER {penv.get('POSTGRES_USER')!r}")
            database = (ds.get("jsonData") or {}).get("database") or ds.get("database")
            if database != penv.get("POSTGRES_DB"):
                problem(f"{label}: database {database!r} is not the postgres service's "
                        f"POSTGRES_DB {penv.get('POSTGRES_DB')!r}")
            if (ds.get("jsonData") or {}).get("sslmode") is None:
                problem(f"{label}: no jsonData.sslmode (Grafana's default, verify-full, "
                        "fails against the compose postgres)")
            for literal in ("password", "basicAuthPassword"):
                if literal in ds:
                    problem(f"{label}: `{literal}` is plain text; use secureJsonData.password")
            password = (ds.get("secureJsonData") or {}).get("password")
            reference = re.fullmatch(r"\$(?:\{(\w+)\}|__env\{(\w+)\}|(\w+))", str(password or ""))
            if password is None:
                problem(f"{label}: no secureJsonData.password")
            elif not reference:
                problem(f"{label}: the password is written in the file; use an environment "
                        "variable (${VAR})")
            else:
                variable = next(g for g in reference.groups() if g)
                if variable not in env:
                    problem(f"grafana: does not set {variable}, which {rel(path)} reads for "
                            "the password")
                elif env[variable] != penv.get("POSTGRES_PASSWORD"):
                    problem(f"grafana: {variable} is not the postgres service's "
                            "POSTGRES_PASSWORD")
    names = {str(ds.get("name")): uid for uid, ds in datasources.items()}
    default = [uid for uid, ds in datasources.items() if ds.get("isDefault")]

    # The dashboard providers: files, at the path compose mounts the dashboards at.
    files = sorted(GRAFANA_PROVIDERS.glob("*.yaml")) + sorted(GRAFANA_PROVIDERS.glob("*.yml"))
    if not files:
        problem(f"{rel(GRAFANA_PROVIDERS)}: no dashboard provider file")
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            problem(f"{rel(path)}: not YAML: {' '.join(str(error).split())}")
            continue
        if not isinstance(data, dict) or data.get("apiVersion") != 1:
            problem(f"{rel(path)}: apiVersion 1 expected")
        providers = data.get("providers") if isinstance(data, dict) else None
        if not isinstance(providers, list) or not providers:
            problem(f"{rel(path)}: no `providers` list")
            continue
        for provider in providers:
            label = f"{rel(path)}: provider {provider.get('name')!r}"
            if not provider.get("name"):
                problem(f"{label}: no name")
            if provider.get("type", "file") != "file":
                problem(f"{label}: type {provider.get('type')!r}, expected file")
            target = str((provider.get("options") or {}).get("path") or "")
            if not target:
                problem(f"{label}: no options.path")
                continue
            host = outside(target)
            if host is None:
                problem(f"{label}: options.path {target} is not mounted by the grafana "
                        "service (docker-compose.yml)")
            elif host.resolve() != GRAFANA_DASHBOARDS.resolve():
                problem(f"{label}: options.path {target} is where docker-compose.yml mounts "
                        f"{rel(host)}, not {rel(GRAFANA_DASHBOARDS)}")

    # The dashboards.
    schema = migration_schema()
    dashboards = sorted(GRAFANA_DASHBOARDS.glob("*.json"))
    if not dashboards:
        problem(f"{rel(GRAFANA_DASHBOARDS)}: no dashboard")
    read: set[str] = set()
    count = 0
    for path in dashboards:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problem(f"{rel(path)}: not JSON: {error}")
            continue
        for key in ("uid", "title", "panels"):
            if not dashboard.get(key):
                problem(f"{rel(path)}: no {key}")

        def datasource(where: str, ref) -> None:
            if not datasources:
                return  # reported with the data source files
            if isinstance(ref, dict) and ref.get("uid") in ("grafana", "-- Grafana --"):
                return  # Grafana's built-in annotations
            uid = ref.get("uid") if isinstance(ref, dict) else names.get(ref) if ref else \
                (default[0] if default else None)
            if uid not in datasources:
                problem(f"{where}: data source {ref!r} is not one of "
                        f"{rel(GRAFANA_DATASOURCES)} (uid {', '.join(sorted(datasources))})")
            elif isinstance(ref, dict) and ref.get("type") and ref["type"] not in POSTGRES_TYPES:
                problem(f"{where}: data source type {ref['type']!r} is not PostgreSQL")

        variables = {v.get("name") for v in (dashboard.get("templating") or {}).get("list", [])}
        queries: list[tuple[str, str, str | None, str]] = []
        for variable in (dashboard.get("templating") or {}).get("list", []):
            if variable.get("type") != "query":
                continue
            where = f"{rel(path)}: variable {variable.get('name')}"
            datasource(where, variable.get("datasource"))
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("rawSql") or query.get("query")
            queries.append((where, str(query or ""), None, "variable"))
        for annotation in (dashboard.get("annotations") or {}).get("list", []):
            ref = annotation.get("datasource")
            if isinstance(ref, dict) and ref.get("uid") in ("grafana", "-- Grafana --"):
                continue
            where = f"{rel(path)}: annotation {annotation.get('name')!r}"
            datasource(where, ref)
            sql = (annotation.get("target") or {}).get("rawSql") or annotation.get("rawQuery")
            if not sql:
                problem(f"{where}: no SQL (target.rawSql)")
                continue
            queries.append((where, sql, "table", "annotation"))

        def flatten(panels):
            for panel in panels or []:
                yield panel
                yield from flatten(panel.get("panels"))

        ids = [p.get("id") for p in flatten(dashboard.get("panels"))]
        for duplicate in sorted({i for i in ids if ids.count(i) > 1}, key=str):
            problem(f"{rel(path)}: panel id {duplicate} appears twice")
        for panel in flatten(dashboard.get("panels")):
            if panel.get("type") == "row":
                continue
            where = f"{rel(path)}: panel {panel.get('id')} {panel.get('title')!r}"
            check_variables(where, str(panel.get("title", "")), variables)
            if not panel.get("targets"):
                problem(f"{where}: no query")
            for target in panel.get("targets") or []:
                label = f"{where} query {target.get('refId')}"
                datasource(label, target.get("datasource") or panel.get("datasource"))
                fmt = target.get("format")
                if fmt not in ("time_series", "table"):
                    problem(f"{label}: format {fmt!r}, expected time_series or table")
                if not target.get("rawSql"):
                    problem(f"{label}: no rawSql")
                    continue
                queries.append((label, target["rawSql"], fmt, "panel"))
        for where, sql, fmt, kind in queries:
            count += 1
            found = check_query(where, sql, schema, variables)
            read |= found["tables"]
            big = found["tables"] & TIME_FILTERED_TABLES
            if kind != "variable" and big and not found["time_filter"]:
                problem(f"{where}: reads {', '.join(sorted(big))} without $__timeFilter(...) "
                        "(every partition, whatever the time range)")
            if fmt == "time_series" and not found["time_column"]:
                problem(f"{where}: a time_series query without a time column "
                        "(AS \"time\", $__timeGroupAlias(...))")
    notes.append(f"grafana: {image}, 127.0.0.1:{http} only, no admin password in the file; "
                 f"data source postgres:5432/{penv.get('POSTGRES_DB')} as "
                 f"{penv.get('POSTGRES_USER')}, password from the environment; "
                 f"{len(dashboards)} dashboard(s) at the provider's path, {count} queries "
                 f"over {', '.join(sorted(read))}: tables and columns of migrations/")


def check_binaries(model: dict, directory: Path, provisioned: dict | None) -> None:
    """Each Rust service's binary, run with the service's setup plus --check-config. A
    volume gateways-init writes is the directory its script wrote here (run_gateways_init):
    a password file exists, mode 0600, only if gateways-init writes it."""
    ran = 0
    written = (provisioned or {}).get("volumes", {})
    for name, svc in model["services"].items():
        found = dockerfile_of(svc)
        info = BINARIES.get(found[0]) if found else None
        if not info or info.get("tool") or not found[1].exists():
            continue
        binary = directory / info["binary"]
        if not binary.exists():
            problem(f"{name}: {rel(binary)} not found (build it, or drop --binaries)")
            continue
        # Container paths -> files here: the Dockerfile's COPYs and the bind mounts.
        paths = {}
        image_env = {}
        for instruction, argument in dockerfile_instructions(found[1])[-1]:
            parts = [a for a in argument.split() if not a.startswith("--")]
            if instruction == "COPY" and "--from=" not in argument and len(parts) == 2:
                paths[parts[1]] = str(ROOT / parts[0])
            if instruction == "ENV":
                for assignment in shlex.split(argument):
                    key, _, value = assignment.partition("=")
                    image_env[key] = value
        for source, target, bind in mounts(svc):
            if bind:
                paths[target] = source
        volumes = [(t.rstrip("/"), written[s]) for s, t, _ in volume_mounts(svc)
                   if s in written]

        def here(value: str) -> str:
            for target, place in volumes:
                if value.startswith(target + "/"):
                    return str(place) + value[len(target):]
            return paths.get(value, value)

        env = {k: here(v) for k, v in {**image_env, **env_of(svc)}.items()}
        env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME="/nonexistent")
        entry = [a for i, a in dockerfile_instructions(found[1])[-1] if i == "CMD"]
        command = words(svc.get("command")) if svc.get("command") is not None else \
            (json.loads(entry[-1]) if entry else [])
        args = [paths.get(a, a) for a in command]
        run = subprocess.run([str(binary), *args, "--check-config"], env=env,
                             capture_output=True, text=True, timeout=60)
        ran += 1
        if run.returncode != 0:
            detail = " | ".join((run.stderr or run.stdout).strip().splitlines()[:4])
            problem(f"{name}: {info['binary']} refuses its compose setup: {detail}")
    notes.append(f"binaries: {ran} services' settings accepted by "
                 f"`<binary> --check-config` ({rel(directory)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binaries", type=Path,
                        help="directory with bridge, cloud-ingester, console and edge-agent "
                             "binaries")
    parser.add_argument("--file", type=Path,
                        help="a compose file to check instead of docker-compose.yml (paths "
                             "in it are relative to the repository root)")
    options = parser.parse_args()
    if options.file:
        global COMPOSE_FILE
        COMPOSE_FILE = options.file.resolve()

    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    if "version" in raw:
        problem("docker-compose.yml: drop the `version:` key (Compose spec)")
    keys = compose_env_keys()
    check_secrets(raw, keys)
    resolved = resolve(keys)
    if resolved is not None:
        model = unescape(resolved)
        model.pop("version", None)
        topics = kafka_topics()
        devices = seed_devices()
        settings = stack_settings()
        check_spec_per_combination(model)
        agents = check_services(model, devices)
        check_topics(model, topics)
        check_addresses(model, settings)
        check_env_and_ports(model)
        check_local_ports(model)
        check_clients(model)
        check_agents(model, agents)
        check_console(model)
        # Scratch: the registry and secrets gateways-init's script writes here.
        scratch = tempfile.TemporaryDirectory(prefix="check-compose-gateways-")
        provisioned = run_gateways_init(model, Path(scratch.name))
        check_gateways(model, agents, provisioned)
        check_state_volumes(model)
        check_dockerfiles(model)
        check_grafana(model, COMPOSE_FILE.read_text())
        if options.binaries:
            directory = options.binaries if options.binaries.is_absolute() else \
                Path.cwd() / options.binaries
            check_binaries(model, directory, provisioned)
        scratch.cleanup()
    if problems:
        for message in problems:
            print(f"check-compose: {message}")
        print(f"check-compose: {len(problems)} problem(s) in docker-compose.yml, "
              "docker/, .dockerignore, .gitignore, scripts/compose-env.sh, deploy/compose/ or "
              "deploy/grafana/",
              file=sys.stderr)
        return 1
    for note in notes:
        print(f"check-compose: ok: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
