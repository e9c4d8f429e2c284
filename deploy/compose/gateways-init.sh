#!/bin/sh
# gateways-init.sh - docker-compose.yml's one-shot `gateways-init` (image
# docker/iotctl.Dockerfile): registers the gateways the compose services connect to the
# bridge's embedded broker as, since it refuses anonymous clients, and writes each
# secret to DIR/<gateway id>.secret (mode 0600, user 10001, as the console and agent
# images run).
#
#   gateways-init.sh DIR        DATABASE_URL: the registry's database (the ingester
#                               has migrated it)
#
# Safe to run again, as scripts/run.sh's provision_gateway: a gateway registered before
# keeps its secret while its file is there, and gets a new one when the file is missing
# (the registry keeps hashes only). Delete a file and run this again to rotate that one.
set -eu

dir=${1:?usage: gateways-init.sh DIR}
if ! [ -d "$dir" ] || ! [ -w "$dir" ]; then
  echo "gateways-init: $dir is not a directory uid $(id -u) can write to (a volume made" \
    "before by another image? docker compose down -v starts over)" >&2
  exit 1
fi

# provision ID [DEVICE]...
provision() {
  id=$1
  shift
  devices=$*
  file=$dir/$id.secret
  for device in "$@"; do
    set -- "$@" --device "$device"
    shift
  done
  if out=$(iotctl gateways add "$id" "$@" --secret-file "$file" 2>&1); then
    echo "gateways-init: registered gateway $id${devices:+ for $devices} (secret in $file)"
    return
  fi
  case $out in
    *"exists already"*) ;;
    *) echo "gateways-init: cannot register gateway $id: $out" >&2; exit 1 ;;
  esac
  if [ -s "$file" ]; then
    echo "gateways-init: gateway $id is registered, its secret in $file"
  elif out=$(iotctl gateways rotate "$id" --secret-file "$file" 2>&1); then
    echo "gateways-init: gave gateway $id a new secret (in $file)"
  else
    echo "gateways-init: cannot give gateway $id a new secret: $out" >&2
    exit 1
  fi
}

# The console (and an operator's iotctl): reads status topics, speaks for no device.
provision operator
# Each demo agent: gateway.id and [[devices]] of deploy/compose/agents/*.toml (checked by
# scripts/check-compose.py). Registered without the `demo` profile too: harmless.
provision gw-furnace-01 furnace-01
provision gw-cnc-spindle-01 cnc-spindle-01
provision gw-press-01 press-01
provision gw-paint-booth-01 paint-booth-01
provision gw-compressor-01 compressor-01
