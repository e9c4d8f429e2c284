#!/usr/bin/env python3
"""Checks docker-compose.yml and docker/*.Dockerfile without a Docker engine.

    scripts/check-compose.py                         spec + consistency checks
    scripts/check-compose.py --binaries target/debug  also run each service's binary with
                                                      --check-config in its compose setup

No engine runs here, so the compose file is validated instead of run:

1. The Compose spec. `docker-compose config` (Compose v1 from PyPI: it parses, interpolates
   and validates without an engine) resolves the file; then, for each profile combination
   (default, demo, client, tools, all), the services that combination starts are
   validated against the Compose spec schema and checked for what only shows per
   combination: a dependency the combination does not start, a health condition on a
   service without a health check, a host port published twice.
2. The code's sources of truth: every topic of protocol::kafka::ALL_TOPICS (parsed from
   protocol/src/kafka.rs) is created by kafka-init with its partition count; every
   service the pipeline needs exists, in its profile, with a health check; ports are the
   defaults of bridge/config/bridge.toml and cloud-ingester/config/cloud-ingester.toml;
   every BRIDGE_* / INGESTER_* / EDGE_AGENT_* variable names a key of the example TOML
   (PREFIX_A__B -> a.b); URLs, brokers and credentials point at the right services and
   match scripts/stack.sh; the five demo agents run the seed devices of migrations/ with
   the simulated-plant.toml definitions; each build's Dockerfile exists, builds its
   crate with --locked and ends as a non-root USER; .dockerignore keeps the junk out.
3. With --binaries: each bridge, ingester and agent service's binary is run with the
   service's environment and command plus --check-config, so the binaries themselves
   confirm they accept the settings (their configs refuse unknown keys).

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
import tomllib  # noqa: E402
import urllib.parse  # noqa: E402

import compose.config  # noqa: E402
import jsonschema  # noqa: E402
import yaml  # noqa: E402

COMPOSE_FILE = ROOT / "docker-compose.yml"

# Profile combinations to check: each alone, and all together.
COMBINATIONS = [(), ("demo",), ("client",), ("tools",), ("demo", "client", "tools")]

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
    "docker/edge-agent.Dockerfile": {
        "crate": "edge-agent",
        "binary": "edge-agent",
        "prefix": "EDGE_AGENT_",
        "examples": ["edge-agent/config/simulated-plant.toml", "edge-agent/config/pi.toml"],
        "extra_env": {"EDGE_AGENT_CONFIG", "RUST_LOG"},
    },
}

# Services the pipeline needs: name -> (profiles, one-shot). The agents are added from
# the seed devices in migrations/.
EXPECTED = {
    "postgres": ((), False),
    "redis": ((), False),
    "kafka": ((), False),
    "kafka-init": ((), True),
    "bridge": ((), False),
    "ingester": ((), False),
    "mosquitto": (("client",), False),
    "bridge-client": (("client",), False),
    "kafka-ui": (("tools",), False),
    "redis-commander": (("tools",), False),
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
    """Credentials and Redis settings scripts/stack.sh gives its services."""
    text = (ROOT / "scripts/stack.sh").read_text()
    settings = dict(re.findall(r"^(PG\w+)=\$\{\1:-([^}]*)\}", text, re.M))
    redis_conf = re.search(r"redis_write_config\(\).*?<<EOF\n(.*?)\nEOF", text, re.S)
    if redis_conf:
        for line in redis_conf[1].splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in (
                "maxmemory", "maxmemory-policy", "appendonly", "appendfsync"):
                settings["redis." + parts[0]] = parts[1].strip()
    for key in ("PGUSER", "PGPASSWORD", "PGDATABASE", "redis.maxmemory",
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


def resolve() -> dict | None:
    """Runs `docker-compose config`: spec validation, interpolation, anchors, paths."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    run = subprocess.run(
        [str(VENV / "bin" / "docker-compose"), "--project-directory", str(ROOT),
         "-f", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode != 0:
        for line in (run.stderr or run.stdout).strip().splitlines():
            problem(f"docker-compose config: {line}")
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
                            "kafka.metrics_topic"))):
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
        for var, stack_var in (("POSTGRES_USER", "PGUSER"), ("POSTGRES_PASSWORD", "PGPASSWORD"),
                               ("POSTGRES_DB", "PGDATABASE")):
            if stack_var in settings and penv.get(var) != settings[stack_var]:
                problem(f"postgres: {var}={penv.get(var)!r}, scripts/stack.sh uses "
                        f"{settings[stack_var]!r}")
        if "pg_isready" not in healthcheck_text(postgres):
            problem("postgres: the health check should use pg_isready")
        for name, svc in services.items():
            url = env_of(svc).get("DATABASE_URL") or env_of(svc).get("INGESTER_DATABASE__URL")
            if not url:
                continue
            parsed = urllib.parse.urlsplit(url)
            wanted = (penv.get("POSTGRES_USER"), penv.get("POSTGRES_PASSWORD"), "postgres",
                      5432, penv.get("POSTGRES_DB"))
            got = (parsed.username, parsed.password, parsed.hostname, parsed.port or 5432,
                   parsed.path.lstrip("/"))
            if got != wanted:
                problem(f"{name}: DATABASE_URL does not match the postgres service "
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
        for name, svc in services.items():
            env = env_of(svc)
            url = env.get("REDIS_URL") or env.get("INGESTER_REDIS__URL")
            if url:
                parsed = urllib.parse.urlsplit(url)
                if (parsed.hostname, parsed.port or 6379) != ("redis", 6379):
                    problem(f"{name}: REDIS_URL {url} is not the redis service on 6379")
            if "REDIS_HOSTS" in env and ":redis:6379" not in env["REDIS_HOSTS"]:
                problem(f"{name}: REDIS_HOSTS does not name redis:6379")
    notes.append("addresses: Kafka brokers, DATABASE_URL, REDIS_URL match their services; "
                 "PostgreSQL credentials and Redis memory/eviction/persistence match "
                 "scripts/stack.sh")


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
            if not variable.startswith(info["prefix"]):
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
    bridge_toml = ROOT / "bridge/config/bridge.toml"
    ingester_toml = ROOT / "cloud-ingester/config/cloud-ingester.toml"
    for name, svc in services.items():
        info = binary_info(svc)
        if not info or info["binary"] == "edge-agent":
            continue
        example = bridge_toml if info["binary"] == "bridge" else ingester_toml
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
    notes.append("ports: bridge 1883/9101 and ingester 9102 as in their example TOML, "
                 "published, exposed and health-checked on /readyz")


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


def check_state_volumes(model: dict) -> None:
    services = model["services"]
    declared = set(model.get("volumes") or {})
    data_dirs = {"postgres": "/var/lib/postgresql/data", "redis": "/data"}
    kafka = services.get("kafka")
    if kafka:
        data_dirs["kafka"] = env_of(kafka).get("KAFKA_LOG_DIRS", "/var/lib/kafka/data")
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
    seen = set()
    for name, svc in model["services"].items():
        found = dockerfile_of(svc)
        if not found:
            continue
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = Path(build.get("context", "."))
        if not context.is_dir():
            problem(f"{name}: build context {rel(context)} is not a directory")
            continue
        label, path = found
        if not path.exists():
            problem(f"{name}: {label} does not exist")
            continue
        if label in seen:
            continue
        seen.add(label)
        info = BINARIES.get(label)
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
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        problem(".dockerignore is missing")
    else:
        patterns = [p.strip().rstrip("/") for p in ignore.read_text().splitlines()
                    if p.strip() and not p.startswith("#") and not p.startswith("!")]

        def ignored(path: str) -> bool:
            return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)

        for junk in ("target", ".stack", "fuzz/artifacts", "fuzz/corpus", "fuzz/target"):
            if not ignored(junk):
                problem(f".dockerignore: does not exclude {junk}")
        for needed in ["Cargo.toml", "Cargo.lock", "migrations", *members]:
            if ignored(needed):
                problem(f".dockerignore: excludes {needed}, which the build needs")
    notes.append(f"Dockerfiles: {', '.join(sorted(seen))}: multi-stage, --locked builds, "
                 "a Rust image no older than any locked package needs, non-root final USER; "
                 ".dockerignore")


def check_binaries(model: dict, directory: Path) -> None:
    """Each Rust service's binary, run with the service's setup plus --check-config."""
    ran = 0
    for name, svc in model["services"].items():
        found = dockerfile_of(svc)
        info = BINARIES.get(found[0]) if found else None
        if not info or not found[1].exists():
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
        env = {k: paths.get(v, v) for k, v in {**image_env, **env_of(svc)}.items()}
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
                        help="directory with bridge, cloud-ingester and edge-agent binaries")
    options = parser.parse_args()

    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    if "version" in raw:
        problem("docker-compose.yml: drop the `version:` key (Compose spec)")
    resolved = resolve()
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
        check_clients(model)
        check_agents(model, agents)
        check_state_volumes(model)
        check_dockerfiles(model)
        if options.binaries:
            directory = options.binaries if options.binaries.is_absolute() else \
                Path.cwd() / options.binaries
            check_binaries(model, directory)
    if problems:
        for message in problems:
            print(f"check-compose: {message}")
        print(f"check-compose: {len(problems)} problem(s) in docker-compose.yml, "
              "docker/ or .dockerignore", file=sys.stderr)
        return 1
    for note in notes:
        print(f"check-compose: ok: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
