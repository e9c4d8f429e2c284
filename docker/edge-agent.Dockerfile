# syntax=docker/dockerfile:1
# The edge agent as a container, for the compose demo (five simulated machines). On a
# real Raspberry Pi it runs as a systemd service instead (deploy/README.md). Build from
# the repository root:
#
#   docker build -f docker/edge-agent.Dockerfile -t plant-telemetry/edge-agent .
#
# Configuration: --config (default /etc/edge-agent/agent.toml: the five simulated seed
# machines) overridden by EDGE_AGENT_* variables (EDGE_AGENT_MQTT__HOST=bridge). Not
# EDGE_AGENT_CONFIG: the agent reads it as a setting named `config` and refuses it, so
# the file is given with --config. The queue lives in /var/lib/edge-agent/queue: mount a
# volume there so frames survive a restart of the container.

# ---------------------------------------------------------------------------- builder
# rust-version in Cargo.toml is 1.89; Cargo.lock needs nothing newer.
FROM rust:1.89-bookworm AS builder
# The agent has no C dependency beyond what the rust image has (ring compiles a little C
# with the system cc); build-essential is named so a slimmer base keeps working.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=plant-telemetry-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=plant-telemetry-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p edge-agent \
 && install -D -m 0755 target/release/edge-agent /out/edge-agent

# ---------------------------------------------------------------------------- runtime
# debian:bookworm-slim like the other two: one base to patch, and a shell with `find`
# for the health check (the agent has no HTTP endpoint; the check is that the queue's
# `acks` file, rewritten after every broker PUBACK, changed in the last two minutes).
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 plant \
 && useradd --system --uid 10001 --gid plant --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin plant \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/edge-agent /var/lib/edge-agent/queue
COPY --from=builder /out/edge-agent /usr/local/bin/edge-agent
COPY edge-agent/config/simulated-plant.toml /etc/edge-agent/agent.toml
USER 10001:10001
VOLUME ["/var/lib/edge-agent/queue"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD find /var/lib/edge-agent/queue -maxdepth 1 -name acks -mmin -2 | grep -q .
ENTRYPOINT ["/usr/local/bin/edge-agent"]
CMD ["--config", "/etc/edge-agent/agent.toml"]
