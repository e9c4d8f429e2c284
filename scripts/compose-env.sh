#!/usr/bin/env bash
# compose-env.sh - the secrets of the Docker Compose stack, in <repo>/.env (where `docker
# compose` reads its variables): random values, generated once, so that no service that
# can face a network runs with a default password. docker-compose.yml has no password in
# it and refuses to start without these.
#
#   scripts/compose-env.sh    add each key .env lacks, with a random value; print the
#                             names of the keys it generated (never a value). Safe to run
#                             again: existing values are kept.
#
# Keys: POSTGRES_PASSWORD (the `telemetry` role; also in the ingester's and the console's
# DATABASE_URL and Grafana's data source), REDIS_PASSWORD (requirepass; every client's
# REDIS_URL) and GRAFANA_ADMIN_PASSWORD (user `admin`, the `grafana` profile). Values are
# hex, so they go into URLs unescaped; a value written by hand must be URL-safe as well.
# PostgreSQL and Grafana take theirs only when their volume is first created: changing
# one later means changing it in the service too (README, "Docker Compose").
#
# The file is mode 0600; git and the Docker build context ignore it.
# COMPOSE_ENV_FILE=<path> writes another file instead (a scratch copy).

set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=${COMPOSE_ENV_FILE:-$REPO_ROOT/.env}
# scripts/check-compose.py reads this list: docker-compose.yml may require only these.
KEYS=(POSTGRES_PASSWORD REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD)

die() { echo "compose-env: $*" >&2; exit 1; }

# 24 random bytes (192 bits) as 48 hex digits, from the kernel's CSPRNG (coreutils only).
random_hex() {
  local value
  value=$(head -c 24 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
  [[ $value =~ ^[0-9a-f]{48}$ ]] || die "could not read 24 random bytes from /dev/urandom"
  printf %s "$value"
}

# The value of KEY in the file as compose reads it (KEY=value, optionally `export `,
# optionally quoted); fails when the key is not there.
value_of() {
  local line
  line=$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$ENV_FILE" | tail -n 1) || return 1
  line=${line#*=}
  line=${line#"${line%%[![:space:]]*}"}
  line=${line%"${line##*[![:space:]]}"}
  [[ $line == \"*\" || $line == \'*\' ]] && line=${line:1:${#line}-2}
  printf %s "$line"
}

umask 077
[[ -e $ENV_FILE ]] || : >"$ENV_FILE" || die "cannot create $ENV_FILE"
[[ -f $ENV_FILE ]] || die "$ENV_FILE is not a regular file"
# Secrets: readable by the owner only, also when the file was made by hand.
chmod 600 "$ENV_FILE"

missing=()
for key in "${KEYS[@]}"; do
  if value=$(value_of "$key"); then
    # Compose's ${KEY:?} refuses an empty value too; a value filled in here could hide a
    # mistake in the file, so say so (before writing anything).
    [[ -n $value ]] || die "$key is empty in $ENV_FILE: give it a value or delete its line"
  else
    missing+=("$key")
  fi
done

generated=()
for key in "${missing[@]}"; do
  # Append after a last line that lacks its newline.
  [[ ! -s $ENV_FILE || -z $(tail -c 1 "$ENV_FILE") ]] || echo >>"$ENV_FILE"
  printf '%s=%s\n' "$key" "$(random_hex)" >>"$ENV_FILE"
  generated+=("$key")
done

if ((${#generated[@]})); then
  echo "compose-env: generated ${generated[*]} in $ENV_FILE (mode 0600; the values are only there)"
  if [[ " ${generated[*]} " == *" POSTGRES_PASSWORD "* ]]; then
    echo "compose-env: a postgres-data volume from before keeps its old password; see README, \"Docker Compose\""
  fi
else
  echo "compose-env: $ENV_FILE has ${KEYS[*]}; nothing generated"
fi
