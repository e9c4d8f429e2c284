# syntax=docker/dockerfile:1
# The cloud ingester (Kafka -> PostgreSQL + Redis) as a small runtime image. Build from
# the repository root:
#
#   docker build -f docker/cloud-ingester.Dockerfile -t plant-telemetry/cloud-ingester .
#
# (docker-compose.yml does this.) Port 9102: /metrics, /livez, /readyz. Configuration:
# /etc/cloud-ingester/cloud-ingester.toml (the example, every key at its default), then
# DATABASE_URL, REDIS_URL, KAFKA_BROKERS, then INGESTER_* variables; `--migrate` runs the
# migrations (embedded in the binary at compile time) before starting.

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
# The whole workspace (cargo needs every member's manifest, and sqlx::migrate! embeds
# migrations/); .dockerignore keeps target/, .stack/ and the fuzz corpus out.
COPY . .
RUN --mount=type=cache,id=plant-telemetry-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=plant-telemetry-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p cloud-ingester \
 && install -D -m 0755 target/release/cloud-ingester /out/cloud-ingester

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
COPY --from=builder /out/cloud-ingester /usr/local/bin/cloud-ingester
COPY cloud-ingester/config/cloud-ingester.toml /etc/cloud-ingester/cloud-ingester.toml
# Read by the ingester's command line (--config), not a setting.
ENV INGESTER_CONFIG=/etc/cloud-ingester/cloud-ingester.toml
USER 10001:10001
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9102/readyz"]
ENTRYPOINT ["/usr/local/bin/cloud-ingester"]
