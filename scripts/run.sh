#!/usr/bin/env bash
# run.sh - the whole pipeline on this machine, in one command: the local service stack
# (scripts/stack.sh up: PostgreSQL, Redis, Mosquitto, a Kafka-compatible broker), the
# database migrations, the bridge with its embedded MQTT broker on 1883, the ingester, and
# the five seed machines simulated by an edge agent (anomalies on), publishing through it.
#
#   scripts/run.sh            start what is not running, print where to look, then show a
#                             live one-screen summary until Ctrl-C; Ctrl-C stops what this
#                             run started (a second run beside a first one only watches)
#   scripts/run.sh --no-watch start, print where to look, and return; the services stay
#                             up (stop them with scripts/run.sh --stop)
#   scripts/run.sh --stop     stop the pipeline's processes and the stack
#
# Builds the release binaries first (cargo reuses what is already built). Logs, pid files
# and the agent's disk queue are under .stack/run/. Run as root on a fresh Debian or
# Ubuntu machine, `stack.sh up` installs the services it needs.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf 'run: %s\n' "$*"; }
die() {
  printf 'run: error: %s\n' "$*" >&2
  exit 1
}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

watch=true
case ${1:-} in
  "") ;;
  --no-watch) watch=false ;;
  --stop) ;;
  -h | --help) usage && exit 0 ;;
  *) usage >&2 && exit 2 ;;
esac

BRIDGE_PORT=9101
INGESTER_PORT=9102
CONSOLE_PORT=8080
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

# The process of a pid file, if it is alive and is what the file says.
live_pid() {
  local file=$1 name=$2 pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${name:0:15}" ]] || return 1
  echo "$pid"
}

# Asks a process to stop (SIGTERM: each one finishes what it holds) and waits for it.
stop_one() {
  local name=$1 pid
  pid=$(live_pid "$RUN_DIR/$name.pid" "$name") || return 0
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$name.pid"
}

STACK_DIR=${STACK_DIR:-$ROOT/.stack}
stack_dir() {
  # .stack may be a link to a directory the service users can reach.
  if [[ -e $STACK_DIR ]]; then (cd "$STACK_DIR" && pwd -P); else echo "$STACK_DIR"; fi
}

# 0 if GET http://$1:$2$3 answers 200 (bash's /dev/tcp: no curl needed).
http_ok() {
  local host=$1 port=$2 path=$3 status
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
  read -r -t 5 _ status _ <&3 || status=
  exec 3<&- 3>&-
  [[ $status == 200 ]]
}

# 0 if something listens on 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ ${1:-} == --stop ]]; then
  RUN_DIR=$(stack_dir)/run
  # Devices first (they keep unsent frames on disk), then the bridge (it forwards what
  # its broker took), then the ingester (it commits what it consumed).
  stop_one edge-agent
  stop_one bridge
  stop_one cloud-ingester
  stop_one console
  scripts/stack.sh down
  exit 0
fi

# What this run starts, and so stops at Ctrl-C: its processes, and the stack unless some
# of it was already running.
started=()
stack_was_up=false
# (Not `| grep -q`: with pipefail, grep leaving early would fail the pipeline.)
if [[ $(scripts/stack.sh status 2>/dev/null || true) == *" running "* ]]; then
  stack_was_up=true
fi
RUN_DIR=$(stack_dir)/run

stop_started() {
  trap - INT TERM EXIT HUP
  # Stop everything even if a message cannot be written (a closed terminal).
  set +e
  local name
  for name in edge-agent bridge cloud-ingester console; do
    [[ " ${started[*]-} " == *" $name "* ]] && stop_one "$name" 2>/dev/null
  done
  $stack_was_up || scripts/stack.sh down >/dev/null 2>&1
}

if $watch; then
  trap stop_started EXIT
  trap 'exit 130' INT TERM HUP
fi

scripts/stack.sh up
mkdir -p "$RUN_DIR"
set -a
# shellcheck disable=SC1091
. "$STACK_DIR/env"
set +a

command -v cargo >/dev/null || die "cargo is missing; install Rust (https://rustup.rs) and run again"
say "building the release binaries (the first time takes a few minutes)"
cargo build --release --locked -p bridge -p cloud-ingester -p edge-agent -p iotctl -p console

# Starts a binary in the background unless it already runs; its log and pid file go to
# RUN_DIR.
start_one() {
  local name=$1 port=$2 pid
  shift 2
  if pid=$(live_pid "$RUN_DIR/$name.pid" "$name"); then
    say "$name already running (pid $pid), reusing it"
    return 0
  fi
  if [[ -n $port ]] && port_taken "$port"; then
    die "port $port is taken by a process this script did not start; stop it (or scripts/run.sh --stop) and run again"
  fi
  # A session of its own: Ctrl-C reaches this script, which stops the processes in order,
  # instead of reaching them all at once.
  setsid "$BIN/$name" "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  started+=("$name")
  say "started $name (pid $!, log $RUN_DIR/$name.log)"
}

# Fails with the end of its log if the process has stopped.
alive() {
  local name=$1
  kill -0 "$(<"$RUN_DIR/$name.pid")" 2>/dev/null ||
    die "$name stopped; the end of its log ($RUN_DIR/$name.log):$(printf '\n'; tail -n 20 "$RUN_DIR/$name.log")"
}

# Waits until its /readyz answers 200 (and it is still ours that answers).
wait_ready() {
  local name=$1 port=$2
  for _ in $(seq 1 600); do
    if http_ok 127.0.0.1 "$port" /readyz; then
      alive "$name"
      return 0
    fi
    alive "$name"
    sleep 0.1
  done
  die "$name is not ready after 60 s (http://127.0.0.1:$port/readyz); its log is $RUN_DIR/$name.log"
}

# The schema, by its owner; each service then logs in as its least-privilege role
# (migrations/*_roles.sql; scripts/stack.sh makes the logins).
migrated=$("$BIN/iotctl" migrate) || die "cannot migrate the database at $DATABASE_URL"
say "$migrated"
start_one cloud-ingester "$INGESTER_PORT" --database-url "$DATABASE_URL_INGESTER" \
  --http-listen "127.0.0.1:$INGESTER_PORT"
wait_ready cloud-ingester "$INGESTER_PORT"

# Registers gateway $1 (its secret into file $2, mode 0600) unless it is registered and
# the file is there; a registered gateway whose secret file is gone, or that has no frame
# key (registered before keys existed), gets a new secret.
provision_gateway() {
  local id=$1 file=$2 out
  shift 2
  if out=$("$BIN/iotctl" gateways add "$id" "$@" --secret-file "$file" 2>&1); then
    say "registered gateway $id (secret in $file)"
  elif [[ $out != *"exists already"* ]]; then
    die "cannot register gateway $id: $out"
  elif [[ ! -s $file || $("$BIN/iotctl" --json gateways list) == *"\"id\":\"$id\",\"enabled\":true,\"seals\":false"* ]]; then
    "$BIN/iotctl" gateways rotate "$id" --secret-file "$file" >/dev/null ||
      die "cannot give gateway $id a new secret"
    say "gave gateway $id a new secret (in $file)"
  fi
}

# The embedded broker authenticates every connection against the gateway registry: the
# simulated plant's agent speaks for the five seed machines, the console and iotctl
# connect as the gateway `operator`, which speaks for none.
provision_gateway sim-gateway-01 "$RUN_DIR/sim-gateway-01.secret" \
  --device furnace-01 --device cnc-spindle-01 --device press-01 \
  --device paint-booth-01 --device compressor-01
provision_gateway operator "$RUN_DIR/operator.secret"
printf 'IOTCTL_MQTT_USER=operator\nIOTCTL_MQTT_PASSWORD_FILE=%s\n' "$RUN_DIR/operator.secret" \
  >"$RUN_DIR/operator.env"
export BRIDGE_EMBEDDED__REGISTRY_URL=$DATABASE_URL_REGISTRY
export EDGE_AGENT_MQTT__PASSWORD_FILE=$RUN_DIR/sim-gateway-01.secret
export CONSOLE_PIPELINE__MQTT_USER=operator CONSOLE_PIPELINE__MQTT_PASSWORD_FILE=$RUN_DIR/operator.secret
export IOTCTL_MQTT_USER=operator IOTCTL_MQTT_PASSWORD_FILE=$RUN_DIR/operator.secret

start_one bridge "$BRIDGE_PORT" --http-listen "127.0.0.1:$BRIDGE_PORT"
wait_ready bridge "$BRIDGE_PORT"
start_one edge-agent "" --config edge-agent/config/simulated-plant.toml \
  --queue-dir "$RUN_DIR/edge-queue"
start_one console "$CONSOLE_PORT" --database-url "$DATABASE_URL_OPERATOR" \
  --http-listen "0.0.0.0:$CONSOLE_PORT"
wait_ready console "$CONSOLE_PORT"
sleep 1
alive edge-agent

cat <<EOF

The pipeline is running: five simulated machines -> MQTT -> bridge -> Kafka -> ingester.

  Plant console (browser)        http://127.0.0.1:$CONSOLE_PORT/   (operators who acknowledge alerts: console/config/console.toml)
  MQTT (devices, MQTT Explorer)  127.0.0.1:1883   (topics plant/#; 'latest' is readable JSON;
                                 user operator, client id operator@<anything>, password in
                                 $RUN_DIR/operator.secret)
  bridge metrics and health      http://127.0.0.1:$BRIDGE_PORT/metrics   /readyz
  ingester metrics and health    http://127.0.0.1:$INGESTER_PORT/metrics   /readyz
  Kafka                          $KAFKA_BROKERS   (sensors-data, alerts, metrics, sensors-dlq, sensors-confirm)
  PostgreSQL                     $DATABASE_URL
  Redis                          $REDIS_URL   (plant:latest:<device>, plant:alerts:open)
  logs                           $RUN_DIR/*.log

  For iotctl in another shell: set -a; . $STACK_DIR/env; . $RUN_DIR/operator.env; set +a
  $BIN/iotctl health        checks every service and probes the pipeline end to end
  $BIN/iotctl tail          live frames, decoded
  $BIN/iotctl alerts list   open alerts

EOF

if ! $watch; then
  say "started; stop with scripts/run.sh --stop"
  exit 0
fi
say "live summary below; Ctrl-C stops what this run started"
"$BIN/iotctl" watch || true
