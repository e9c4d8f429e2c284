# syntax=docker/dockerfile:1
# The plant console (the plant live in a browser: overview, devices, alerts, pipeline)
# as a small runtime image. Build from the repository root:
#
#   docker build -f docker/console.Dockerfile -t plant-telemetry/console .
#
# (docker-compose.yml does this.) Port 8080: the pages, /events, /metrics, /livez and
# /readyz. Configuration: /etc/console/console.toml (the example, every key at its
# default), then DATABASE_URL, REDIS_URL, KAFKA_BROKERS, then CONSOLE_* variables, e.g.
# CONSOLE_ACCESS__VIEWING=login. The schema it reads is the ingester's (`--migrate`); the
# pages, styles and scripts are compiled into the binary.

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
# The whole workspace (cargo needs every member's manifest, and the console embeds
# console/static/); .dockerignore keeps target/, .stack/ and the fuzz corpus out.
COPY . .
RUN --mount=type=cache,id=plant-telemetry-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=plant-telemetry-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p console \
 && install -D -m 0755 target/release/console /out/console

# ---------------------------------------------------------------------------- runtime
# debian:bookworm-slim, not distroless: the compose health check calls /readyz with curl
# (the binary has no probe flag), and the binary links the system zlib (libz.so.1).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 plant \
 && useradd --system --uid 10001 --gid plant --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin plant
COPY --from=builder /out/console /usr/local/bin/console
COPY console/config/console.toml /etc/console/console.toml
# Read by the console's command line (--config), not a setting.
ENV CONSOLE_CONFIG=/etc/console/console.toml
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/console"]
