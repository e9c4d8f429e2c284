#!/usr/bin/env bash
# stack.sh - the services the telemetry pipeline needs, for local development and CI:
# PostgreSQL, Redis, Mosquitto (MQTT) and Tansu (a Kafka-compatible broker), run as plain
# background processes from their Debian packages (no Docker, no systemd).
#
#   scripts/stack.sh up      install what is missing (when root), start what is not
#                            running, wait until every service answers, create the Kafka
#                            topics and write $STACK_DIR/env. Safe to run again.
#   scripts/stack.sh down    stop what `up` started (found by its pid files); data stays.
#   scripts/stack.sh status  one line per service; exits non-zero if any is not running.
#
# Config, data, logs and pid files all live in STACK_DIR (default <repo>/.stack, which git
# ignores; for a clone inside a private directory such as /root, a link to a folder in
# /var/tmp that the postgres and mosquitto users can reach). Data survives down/up,
# except Kafka's: Tansu runs with memory storage, so its topics and messages are gone once
# it stops, and `up` creates the topics again every time it starts Tansu. PostgreSQL gets
# its own cluster in $STACK_DIR/postgres/data; Debian's system cluster
# (/var/lib/postgresql) is never touched.
#
# Settings come from the environment (defaults shown):
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=telemetry PGPASSWORD=telemetry PGDATABASE=telemetry
#   REDIS_PORT=6379 MQTT_HOST=127.0.0.1 MQTT_PORT=1884 KAFKA_PORT=9092
#   STACK_DIR=<repo>/.stack STACK_TIMEOUT=60 (seconds to wait for each service)
# MQTT defaults to 1884 because 1883 belongs to the bridge's embedded broker.
#
# PostgreSQL also gets the group roles of migrations/*_roles.sql (telemetry_ingester,
# telemetry_operator, telemetry_bridge) and a login in each: ${PGUSER}_ingest,
# ${PGUSER}_ops and ${PGUSER}_registry (DATABASE_URL_INGESTER, DATABASE_URL_OPERATOR,
# DATABASE_URL_REGISTRY in the env file).
#
# Tests read the addresses from the env file:  set -a; . .stack/env; set +a

set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# True when every directory from $1 up to / lets other users through: the postgres and
# mosquitto users must reach their data below it.
others_can_traverse() {
  local dir=$1 mode
  while [[ $dir != / ]]; do
    mode=$(stat -c %A "$dir")
    [[ ${mode:9:1} == [xt] ]] || return 1
    dir=$(dirname "$dir")
  done
}
STACK_LINK=''
if [[ -z ${STACK_DIR:-} ]]; then
  STACK_DIR=$REPO_ROOT/.stack
  # A clone inside a private directory (like /root): keep the data where the service
  # users can reach it, and make <repo>/.stack a link to it so every path stays the same.
  if ((EUID == 0)) && ! others_can_traverse "$REPO_ROOT"; then
    STACK_LINK=$STACK_DIR
    STACK_DIR=/var/tmp/telemetry-stack-$(printf %s "$REPO_ROOT" | md5sum | cut -c1-8)
  fi
fi
[[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-telemetry}
PGPASSWORD=${PGPASSWORD:-telemetry}
PGDATABASE=${PGDATABASE:-telemetry}
REDIS_PORT=${REDIS_PORT:-6379}
MQTT_HOST=${MQTT_HOST:-127.0.0.1}
MQTT_PORT=${MQTT_PORT:-1884}
KAFKA_PORT=${KAFKA_PORT:-9092}
STACK_TIMEOUT=${STACK_TIMEOUT:-60}

# Topics are not auto-created by Tansu. name:partitions
KAFKA_TOPICS=(sensors-data:3 alerts:2 metrics:2 sensors-dlq:3 sensors-confirm:1)
TANSU_INSTALL=(cargo install --locked tansu --features dynostore)

PG_DIR=$STACK_DIR/postgres
PG_DATA=$PG_DIR/data
PG_SOCKET_DIR=$PG_DIR/run
PG_LOG=$PG_DIR/postgres.log
REDIS_DIR=$STACK_DIR/redis
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_PID=$REDIS_DIR/redis.pid
MQTT_DIR=$STACK_DIR/mosquitto
MQTT_LOG=$MQTT_DIR/mosquitto.log
MQTT_PID=$MQTT_DIR/mosquitto.pid
TANSU_DIR=$STACK_DIR/tansu
TANSU_LOG=$TANSU_DIR/tansu.log
TANSU_PID=$TANSU_DIR/tansu.pid
ENV_FILE=$STACK_DIR/env

KAFKA_URL=tcp://127.0.0.1:$KAFKA_PORT

usage() {
  cat <<EOF
usage: scripts/stack.sh up|down|status

  up      install missing software (as root), start PostgreSQL, Redis, Mosquitto and
          Tansu (Kafka) under \$STACK_DIR, wait until they answer, create the Kafka
          topics and write \$STACK_DIR/env
  down    stop the services started by 'up'; their data is kept
  status  show each service; exit non-zero if any is not running

STACK_DIR=$STACK_DIR
Ports and credentials: PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE REDIS_PORT
MQTT_HOST MQTT_PORT KAFKA_PORT (see the header of this script for defaults).
EOF
}

# ---------------------------------------------------------------------------- helpers

say() { echo "stack: $*"; }
die() {
  echo "stack: error: $*" >&2
  exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Finds a program on PATH or in the sbin directories a non-root PATH may lack.
find_bin() {
  PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin command -v "$1" || return 1
}

# Runs a command as the given system user when we are root, as ourselves otherwise.
as_user() {
  local user=$1
  shift
  if is_root; then
    # From /: the caller's directory may be one the service user cannot enter.
    (cd / && runuser -u "$user" -- "$@")
  else
    "$@"
  fi
}

port_open() {
  # shellcheck disable=SC2016 # $0 and $1 belong to the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

port_taken() { # port variable
  die "port $1 is in use by another process; set $2=… to use another port"
}

# Prints the pid in a pid file if that process is alive and runs the expected program.
live_pid() { # pidfile program
  local pid
  [[ -r $1 ]] || return 1
  pid=$(head -n1 "$1")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$2"* ]] || return 1
  echo "$pid"
}

# Retries a check until it succeeds, or fails naming the service and its log.
wait_for() { # service logfile command...
  local service=$1 log=$2 deadline=$((SECONDS + STACK_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "stack: error: $service did not answer within ${STACK_TIMEOUT}s; its log is $log" >&2
      [[ -r $log ]] && tail -n 20 "$log" | sed 's/^/    /' >&2
      exit 1
    fi
    sleep 0.5
  done
}

# True while the process exists and is not a zombie waiting for init to reap it.
alive() { # pid
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

wait_exit() { # pid
  local deadline=$((SECONDS + STACK_TIMEOUT))
  while alive "$1" && ((SECONDS < deadline)); do sleep 0.2; done
  ! alive "$1"
}

# SIGTERM, wait, and SIGKILL only if the process ignores it.
terminate() { # service pid
  kill -TERM "$2" 2>/dev/null || true
  if ! wait_exit "$2"; then
    say "$1 (pid $2) ignored SIGTERM for ${STACK_TIMEOUT}s; killing it"
    kill -KILL "$2" 2>/dev/null || true
    wait_exit "$2" || die "could not stop $1 (pid $2)"
  fi
}

# Starts a long-running program detached from this shell (own session, no stdin, output
# appended to its log) and records its pid.
start_detached() { # dir pidfile logfile command...
  local dir=$1 pidfile=$2 log=$3
  shift 3
  (
    cd "$dir"
    setsid "$@" </dev/null >>"$log" 2>&1 &
    echo $! >"$pidfile"
  )
}

# A service that drops privileges must be able to reach its directory.
check_reachable() { # user dir
  as_user "$1" test -w "$2" ||
    die "user '$1' cannot write $2 (is a parent directory private, like /root?); set STACK_DIR to a directory it can reach, e.g. STACK_DIR=/var/tmp/telemetry-stack"
}

# Percent-encodes a URL component (for credentials in DATABASE_URL).
urlencode() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [a-zA-Z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c" && out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

DATABASE_URL="postgres://$(urlencode "$PGUSER"):$(urlencode "$PGPASSWORD")@$PGHOST:$PGPORT/$(urlencode "$PGDATABASE")"
# Least privilege (migrations/*_roles.sql): a login of each group role, for the ingester
# and for iotctl and the console. A local stack's passwords, like PGPASSWORD.
INGESTER_PGUSER=${PGUSER}_ingest
OPERATOR_PGUSER=${PGUSER}_ops
REGISTRY_PGUSER=${PGUSER}_registry
DATABASE_URL_INGESTER="postgres://$(urlencode "$INGESTER_PGUSER"):$(urlencode "$PGPASSWORD")@$PGHOST:$PGPORT/$(urlencode "$PGDATABASE")"
DATABASE_URL_OPERATOR="postgres://$(urlencode "$OPERATOR_PGUSER"):$(urlencode "$PGPASSWORD")@$PGHOST:$PGPORT/$(urlencode "$PGDATABASE")"
DATABASE_URL_REGISTRY="postgres://$(urlencode "$REGISTRY_PGUSER"):$(urlencode "$PGPASSWORD")@$PGHOST:$PGPORT/$(urlencode "$PGDATABASE")"

# --------------------------------------------------------------------------- software

# Newest PostgreSQL server binaries: Debian keeps them off PATH in /usr/lib/postgresql.
pg_bindir() {
  local dir
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  if [[ ! -x $dir/initdb ]] && command -v initdb >/dev/null; then
    dir=$(dirname "$(command -v initdb)")
  fi
  [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/psql ]] || return 1
  echo "$dir"
}

tansu_bin() {
  command -v tansu || {
    local bin=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
    [[ -x $bin ]] && echo "$bin"
  }
}

cargo_bin() {
  command -v cargo || {
    local bin=${CARGO_HOME:-$HOME/.cargo}/bin/cargo
    [[ -x $bin ]] && echo "$bin"
  }
}

# True while some `cargo install ... tansu` runs (for example one started by hand).
tansu_install_running() {
  local f
  for f in /proc/[0-9]*/cmdline; do
    [[ $(tr '\0' ' ' <"$f" 2>/dev/null) =~ ^[^\ ]*cargo\ install\ .*tansu ]] && return 0
  done
  return 1
}

apt_install() {
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_tansu() {
  local cargo
  cargo=$(cargo_bin) ||
    die "tansu is missing and so is cargo; install Rust (https://rustup.rs), then run: ${TANSU_INSTALL[*]}"
  say "building tansu: ${TANSU_INSTALL[*]} (7 to 18 minutes on 2 cores; cargo shows its progress)"
  "$cargo" "${TANSU_INSTALL[@]:1}" || die "cargo install of tansu failed (output above)"
}

# Installs what is missing when root; otherwise says exactly what to install.
ensure_software() {
  local packages=()
  pg_bindir >/dev/null || packages+=(postgresql)
  find_bin redis-server >/dev/null && find_bin redis-cli >/dev/null || packages+=(redis-server)
  find_bin mosquitto >/dev/null || packages+=(mosquitto)
  find_bin mosquitto_pub >/dev/null && find_bin mosquitto_sub >/dev/null || packages+=(mosquitto-clients)
  # The console's browser tests drive a real headless Chromium through ChromeDriver.
  find_bin chromium >/dev/null || packages+=(chromium)
  find_bin chromedriver >/dev/null || packages+=(chromium-driver)

  if ! tansu_bin >/dev/null && tansu_install_running; then
    say "waiting for the 'cargo install ... tansu' already running to finish"
    while tansu_install_running; do sleep 10; done
  fi
  local need_tansu=false
  tansu_bin >/dev/null || need_tansu=true
  if $need_tansu && ! command -v cc >/dev/null; then
    packages+=(build-essential pkg-config) # to compile tansu's C dependencies
  fi

  if ((${#packages[@]} == 0)) && ! $need_tansu; then
    return 0
  fi
  if ! is_root; then
    echo "stack: error: missing software; install it (as root) and run again:" >&2
    ((${#packages[@]})) && echo "    apt-get install -y --no-install-recommends ${packages[*]}" >&2
    $need_tansu && echo "    ${TANSU_INSTALL[*]}   # needs Rust: https://rustup.rs" >&2
    exit 1
  fi
  ((${#packages[@]} == 0)) || apt_install "${packages[@]}"
  ! $need_tansu || install_tansu
}

# --------------------------------------------------------------------------- postgres

PG_OS_USER=$(if is_root; then echo postgres; else id -un; fi)
PG_BIN='' # set by postgres_up, once ensure_software has installed PostgreSQL

postgres_pid() {
  live_pid "$PG_DATA/postmaster.pid" postgres
}

# Settings for a dev box that ingests in bulk; rewritten before every start.
postgres_write_config() {
  cat >"$PG_DATA/stack.conf" <<EOF
# Written by scripts/stack.sh before every start: change the script, not this file.
listen_addresses = '$PGHOST'
port = $PGPORT
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 256MB
effective_cache_size = 2GB
fsync = on
synchronous_commit = on
wal_compression = on
max_wal_size = 2GB
checkpoint_timeout = 15min
password_encryption = scram-sha-256
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
EOF
  grep -qx "include 'stack.conf'" "$PG_DATA/postgresql.conf" ||
    echo "include 'stack.conf'" >>"$PG_DATA/postgresql.conf"
  if is_root; then chown "$PG_OS_USER": "$PG_DATA/stack.conf"; fi
}

# Local (socket) connections: peer auth for the cluster's owner; TCP: passwords only.
postgres_init() {
  say "postgres: creating a cluster in $PG_DATA"
  as_user "$PG_OS_USER" "$PG_BIN/initdb" -D "$PG_DATA" --encoding=UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
    die "postgres: initdb failed; see $PG_DIR/initdb.log"
}

postgres_admin_sql() {
  as_user "$PG_OS_USER" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" \
    -p "$PGPORT" -U "$PG_OS_USER" -d postgres -v app_user="$PGUSER" \
    -v app_password="$PGPASSWORD" -v app_db="$PGDATABASE" \
    -v ingester_user="$INGESTER_PGUSER" -v operator_user="$OPERATOR_PGUSER" \
    -v registry_user="$REGISTRY_PGUSER"
}

postgres_app_query() {
  [[ $("$PG_BIN/psql" -X -q -At "$DATABASE_URL" -c 'select 1') == 1 ]]
}

# The application role may create databases: #[sqlx::test] makes throw-away ones.
postgres_ensure_role() {
  postgres_admin_sql <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'app_user', :'app_password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB', :'app_user')
  FROM pg_roles WHERE rolname = :'app_user' AND NOT (rolcanlogin AND rolcreatedb) \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('CREATE ROLE %I NOLOGIN', g)
  FROM unnest(ARRAY['telemetry_ingester', 'telemetry_operator', 'telemetry_bridge']) AS g
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = g) \gexec
SELECT format('CREATE ROLE %I LOGIN IN ROLE %I', login, g)
  FROM (VALUES (:'ingester_user', 'telemetry_ingester'),
               (:'operator_user', 'telemetry_operator'),
               (:'registry_user', 'telemetry_bridge')) AS l (login, g)
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', login, :'app_password')
  FROM unnest(ARRAY[:'ingester_user', :'operator_user', :'registry_user']) AS login \gexec
SQL
  if ! postgres_app_query 2>/dev/null; then # PGPASSWORD changed since the role was made
    postgres_admin_sql <<<"SELECT format('ALTER ROLE %I PASSWORD %L', :'app_user', :'app_password') \gexec"
  fi
  postgres_app_query || die "postgres: cannot run a query as $PGUSER at $DATABASE_URL; see $PG_LOG"
}

postgres_up() {
  PG_BIN=$(pg_bindir)
  local pid
  if pid=$(postgres_pid); then
    say "postgres: already running (pid $pid)"
  else
    port_open "$PGHOST" "$PGPORT" && port_taken "$PGPORT" PGPORT
    ((${#PG_SOCKET_DIR} < 100)) || die "postgres: socket path $PG_SOCKET_DIR is too long; use a shorter STACK_DIR"
    mkdir -p "$PG_DATA" "$PG_SOCKET_DIR"
    if is_root; then chown -R "$PG_OS_USER": "$PG_DIR"; fi
    chmod 700 "$PG_DATA"
    check_reachable "$PG_OS_USER" "$PG_DIR"
    [[ -f $PG_DATA/PG_VERSION ]] || postgres_init
    [[ $(cat "$PG_DATA/PG_VERSION") == $("$PG_BIN/postgres" --version | grep -oE '[0-9]+' | head -n1) ]] ||
      die "postgres: $PG_DATA was made by PostgreSQL $(cat "$PG_DATA/PG_VERSION"), but $PG_BIN is another major version"
    postgres_write_config
    say "postgres: starting on $PGHOST:$PGPORT"
    as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$STACK_TIMEOUT" >/dev/null ||
      die "postgres did not start; its log is $PG_LOG"
  fi
  wait_for postgres "$PG_LOG" "$PG_BIN/pg_isready" -q -h "$PGHOST" -p "$PGPORT"
  postgres_ensure_role
}

postgres_down() {
  local pid
  if ! pid=$(postgres_pid); then
    say "postgres: not running"
    return
  fi
  say "postgres: stopping (pid $pid)"
  as_user "$PG_OS_USER" "$(pg_bindir)/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$STACK_TIMEOUT" >/dev/null ||
    die "postgres did not stop; its log is $PG_LOG"
}

# ------------------------------------------------------------------------------ redis

redis_pid() { live_pid "$REDIS_PID" redis-server; }

redis_ping() { [[ $("$(find_bin redis-cli)" -h 127.0.0.1 -p "$REDIS_PORT" ping) == PONG ]]; }

redis_write_config() {
  mkdir -p "$REDIS_DIR/data"
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by scripts/stack.sh before every start: change the script, not this file.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_PID
logfile $REDIS_LOG
dir $REDIS_DIR/data
maxmemory 512mb
maxmemory-policy allkeys-lru
appendonly yes
appendfsync everysec
save 3600 1
save 300 100
save 60 10000
EOF
}

redis_up() {
  local pid
  if pid=$(redis_pid); then
    say "redis: already running (pid $pid)"
  else
    port_open 127.0.0.1 "$REDIS_PORT" && port_taken "$REDIS_PORT" REDIS_PORT
    redis_write_config
    say "redis: starting on 127.0.0.1:$REDIS_PORT"
    "$(find_bin redis-server)" "$REDIS_DIR/redis.conf" || die "redis did not start; its log is $REDIS_LOG"
  fi
  wait_for redis "$REDIS_LOG" redis_ping
}

redis_down() {
  local pid
  if ! pid=$(redis_pid); then
    say "redis: not running"
    return
  fi
  # The port this stack's Redis was started on, from its own configuration: REDIS_PORT
  # may name another stack's server now (a second checkout's on the default port).
  local port
  port=$(awk '$1 == "port" { print $2 }' "$REDIS_DIR/redis.conf" 2>/dev/null)
  say "redis: stopping (pid $pid, port ${port:-?})"
  if [[ -z $port ]] ||
    ! { "$(find_bin redis-cli)" -h 127.0.0.1 -p "$port" shutdown >/dev/null 2>&1 && wait_exit "$pid"; }; then
    terminate redis "$pid"
  fi
}

# -------------------------------------------------------------------------- mosquitto

mosquitto_pid() { live_pid "$MQTT_PID" mosquitto; }

# A retained message is read back by a fresh subscriber, so there is no race between
# subscribing and publishing; the retained message is cleared afterwards.
mosquitto_round_trip() {
  local topic=stack/health payload="ping-$$-$RANDOM" got
  "$(find_bin mosquitto_pub)" -h "$MQTT_HOST" -p "$MQTT_PORT" -q 1 -r -t "$topic" -m "$payload" || return 1
  got=$("$(find_bin mosquitto_sub)" -h "$MQTT_HOST" -p "$MQTT_PORT" -t "$topic" -C 1 -W 5) || return 1
  "$(find_bin mosquitto_pub)" -h "$MQTT_HOST" -p "$MQTT_PORT" -q 1 -r -t "$topic" -n
  [[ $got == "$payload" ]]
}

# The bridge acknowledges MQTT messages only after Kafka has them, so it keeps many
# messages in flight: no in-flight limit, and a deep queue per client.
mosquitto_write_config() {
  mkdir -p "$MQTT_DIR/data"
  touch "$MQTT_LOG"
  cat >"$MQTT_DIR/mosquitto.conf" <<EOF
# Written by scripts/stack.sh before every start: change the script, not this file.
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true
persistence true
persistence_location $MQTT_DIR/data
autosave_interval 60
max_inflight_messages 0
max_queued_messages 100000
log_dest file $MQTT_LOG
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF
  # As root, mosquitto switches to its own user (the default 'user mosquitto').
  if is_root; then
    chown -R mosquitto: "$MQTT_DIR"
    check_reachable mosquitto "$MQTT_DIR/data"
  fi
}

mosquitto_up() {
  local pid
  if pid=$(mosquitto_pid); then
    say "mosquitto: already running (pid $pid)"
  else
    port_open "$MQTT_HOST" "$MQTT_PORT" && port_taken "$MQTT_PORT" MQTT_PORT
    mosquitto_write_config
    say "mosquitto: starting on $MQTT_HOST:$MQTT_PORT"
    start_detached "$MQTT_DIR" "$MQTT_PID" "$MQTT_LOG" "$(find_bin mosquitto)" -c "$MQTT_DIR/mosquitto.conf"
  fi
  wait_for mosquitto "$MQTT_LOG" mosquitto_round_trip
}

mosquitto_down() {
  local pid
  if ! pid=$(mosquitto_pid); then
    say "mosquitto: not running"
    return
  fi
  say "mosquitto: stopping (pid $pid)"
  terminate mosquitto "$pid"
  rm -f "$MQTT_PID"
}

# ------------------------------------------------------------------------------ tansu

tansu_pid() { live_pid "$TANSU_PID" tansu; }

# Creates the topics that are missing (all of them after a restart: memory storage).
tansu_create_topics() {
  local tansu topics entry name
  tansu=$(tansu_bin)
  topics=$(cd "$TANSU_DIR" && "$tansu" topic list --broker "$KAFKA_URL" 2>>"$TANSU_LOG") ||
    die "kafka: cannot list topics at $KAFKA_URL; see $TANSU_LOG"
  for entry in "${KAFKA_TOPICS[@]}"; do
    name=${entry%%:*}
    grep -q "\"name\":\"$name\"" <<<"$topics" && continue
    say "kafka: creating topic $name (${entry##*:} partitions)"
    (cd "$TANSU_DIR" && "$tansu" topic create "$name" --partitions "${entry##*:}" --broker "$KAFKA_URL") \
      >>"$TANSU_LOG" 2>&1 || die "kafka: could not create topic $name; see $TANSU_LOG"
  done
}

tansu_up() {
  local pid
  mkdir -p "$TANSU_DIR"
  if pid=$(tansu_pid); then
    say "kafka (tansu): already running (pid $pid)"
  else
    port_open 127.0.0.1 "$KAFKA_PORT" && port_taken "$KAFKA_PORT" KAFKA_PORT
    say "kafka (tansu): starting on 127.0.0.1:$KAFKA_PORT (memory storage)"
    start_detached "$TANSU_DIR" "$TANSU_PID" "$TANSU_LOG" "$(tansu_bin)" broker \
      --listener-url "$KAFKA_URL" --advertised-listener-url "$KAFKA_URL" \
      --storage-engine memory://tansu/
  fi
  wait_for "kafka (tansu)" "$TANSU_LOG" port_open 127.0.0.1 "$KAFKA_PORT"
  tansu_create_topics
}

tansu_down() {
  local pid
  if ! pid=$(tansu_pid); then
    say "kafka (tansu): not running"
    return
  fi
  say "kafka (tansu): stopping (pid $pid); its topics and messages go with it"
  terminate tansu "$pid"
  rm -f "$TANSU_PID"
}

# --------------------------------------------------------------------------- commands

write_env_file() {
  local name
  {
    printf '%s=%q\n' DATABASE_URL "$DATABASE_URL"
    printf '%s=%q\n' DATABASE_URL_INGESTER "$DATABASE_URL_INGESTER"
    printf '%s=%q\n' DATABASE_URL_OPERATOR "$DATABASE_URL_OPERATOR"
    printf '%s=%q\n' DATABASE_URL_REGISTRY "$DATABASE_URL_REGISTRY"
    printf '%s=%q\n' REDIS_URL "redis://127.0.0.1:$REDIS_PORT"
    printf '%s=%q\n' MQTT_HOST "$MQTT_HOST" MQTT_PORT "$MQTT_PORT"
    printf '%s=%q\n' KAFKA_BROKERS "127.0.0.1:$KAFKA_PORT"
    for name in PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE; do
      printf '%s=%q\n' "$name" "${!name}"
    done
  } >"$ENV_FILE.tmp"
  if cmp -s "$ENV_FILE.tmp" "$ENV_FILE"; then
    rm "$ENV_FILE.tmp"
  else
    mv "$ENV_FILE.tmp" "$ENV_FILE"
  fi
}

cmd_up() {
  ensure_software
  mkdir -p "$STACK_DIR"
  if [[ -n $STACK_LINK ]]; then
    [[ -L $STACK_LINK || ! -e $STACK_LINK ]] || die "$STACK_LINK exists and is not a link; remove it or set STACK_DIR"
    ln -sfn "$STACK_DIR" "$STACK_LINK"
    echo "stack: $REPO_ROOT is private to root; data lives in $STACK_DIR (linked from $STACK_LINK)"
  fi
  if is_root; then chmod go+x "$STACK_DIR"; fi # the postgres and mosquitto users pass through it
  postgres_up
  redis_up
  mosquitto_up
  tansu_up
  write_env_file
  cat <<EOF
stack: up
  postgres  $DATABASE_URL
  redis     redis://127.0.0.1:$REDIS_PORT
  mqtt      $MQTT_HOST:$MQTT_PORT
  kafka     127.0.0.1:$KAFKA_PORT (topics: ${KAFKA_TOPICS[*]%%:*})
  env file  $ENV_FILE   (set -a; . $ENV_FILE; set +a)
  logs      $STACK_DIR/*/*.log
EOF
}

cmd_down() {
  tansu_down
  mosquitto_down
  redis_down
  postgres_down
}

# One line per service; fails unless the service runs and its port answers.
status_line() { # service pid-function host port
  local pid=''
  if pid=$($2) && port_open "$3" "$4"; then
    printf 'stack: %-13s running      %s:%s  pid %s\n' "$1" "$3" "$4" "$pid"
  elif [[ -n $pid ]]; then
    printf 'stack: %-13s not answering %s:%s  pid %s\n' "$1" "$3" "$4" "$pid"
    return 1
  elif port_open "$3" "$4"; then
    printf 'stack: %-13s stopped      %s:%s  (port used by another process)\n' "$1" "$3" "$4"
    return 1
  else
    printf 'stack: %-13s stopped      %s:%s\n' "$1" "$3" "$4"
    return 1
  fi
}

cmd_status() {
  local ok=true
  status_line postgres postgres_pid "$PGHOST" "$PGPORT" || ok=false
  status_line redis redis_pid 127.0.0.1 "$REDIS_PORT" || ok=false
  status_line mosquitto mosquitto_pid "$MQTT_HOST" "$MQTT_PORT" || ok=false
  status_line "kafka (tansu)" tansu_pid 127.0.0.1 "$KAFKA_PORT" || ok=false
  $ok
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
