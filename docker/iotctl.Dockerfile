# syntax=docker/dockerfile:1
# iotctl, the operator's command line, as a small runtime image. Build from the repository
# root:
#
#   docker build -f docker/iotctl.Dockerfile -t plant-telemetry/iotctl .
#
# (docker-compose.yml does this, for its one-shot `gateways-init`, which registers the
# compose gateways with deploy/compose/gateways-init.sh.) A command-line tool, not a
# service: no port, no health check. Settings come from its options and their
# variables: DATABASE_URL, REDIS_URL, KAFKA_BROKERS, IOTCTL_MQTT, IOTCTL_MQTT_USER,
# IOTCTL_MQTT_PASSWORD_FILE, e.g. `docker compose run --rm --entrypoint iotctl
# gateways-init gateways list`.

# ---------------------------------------------------------------------------- builder
# rust-version in Cargo.toml is 1.89; Cargo.lock needs nothing newer.
FROM rust:1.89-bookworm AS builder
# rdkafka (features "libz", no cmake-build) compiles librdkafka with its own configure
# script: a C compiler, make and zlib headers are all it needs. The rust image already
# has them; installing them here says so and survives a switch to a slimmer base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (cargo needs every member's manifest); .dockerignore keeps
# target/, .stack/ and the fuzz corpus out of the context.
COPY . .
RUN --mount=type=cache,id=plant-telemetry-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=plant-telemetry-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p iotctl \
 && install -D -m 0755 target/release/iotctl /out/iotctl

# ---------------------------------------------------------------------------- runtime
# debian:bookworm-slim like the others: one base to patch, /bin/sh for the compose
# script, and the system zlib the binary links (libz.so.1).
FROM debian:bookworm-slim AS runtime
# The same user (10001) as the other images, so the secret files iotctl writes (mode
# 0600) are readable by the console and the agents. /run/gateway-secrets is made here,
# owned by it, because Docker gives an empty named volume mounted there this owner.
RUN groupadd --system --gid 10001 plant \
 && useradd --system --uid 10001 --gid plant --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin plant \
 && install -d -o 10001 -g 10001 -m 0700 /run/gateway-secrets
COPY --from=builder /out/iotctl /usr/local/bin/iotctl
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/iotctl"]
