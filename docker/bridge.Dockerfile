# syntax=docker/dockerfile:1
# The bridge (MQTT -> Kafka) as a small runtime image. Build from the repository root:
#
#   docker build -f docker/bridge.Dockerfile -t plant-telemetry/bridge .
#
# (docker-compose.yml does this.) Ports: 1883 (embedded MQTT broker), 9101 (/metrics,
# /livez, /readyz). Configuration: /etc/bridge/bridge.toml (the example, every key at its
# default) overridden by BRIDGE_* variables, e.g. BRIDGE_KAFKA__BROKERS=kafka:9092.

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
# Cache mounts keep the registry and the target directory between builds (BuildKit);
# the binary is copied out of the cache mount in the same step.
RUN --mount=type=cache,id=plant-telemetry-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=plant-telemetry-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p bridge \
 && install -D -m 0755 target/release/bridge /out/bridge

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
COPY --from=builder /out/bridge /usr/local/bin/bridge
COPY bridge/config/bridge.toml /etc/bridge/bridge.toml
# Read by the bridge's command line (--config), not a setting.
ENV BRIDGE_CONFIG=/etc/bridge/bridge.toml
USER 10001:10001
EXPOSE 1883 9101
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9101/readyz"]
ENTRYPOINT ["/usr/local/bin/bridge"]
