# syntax=docker/dockerfile:1
# pushgate image: the gateway and worker binaries on Debian 12, run as a non-root user.
#   docker build -t pushgate .
#   docker run --rm -p 8080:8080 -e PUSHGATE_LISTEN=0.0.0.0:8080 pushgate            (gateway)
#   docker run --rm -p 9000:9000 -e PUSHGATE_LISTEN=0.0.0.0:9000 \
#     -e PUSHGATE_ADVERTISE=HOST -e PUSHGATE_GATEWAY=http://GATEWAY:8080 pushgate worker
# A whole fleet: deploy/compose.yaml, deploy/k8s/; docs/deploy.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit cache mounts), so the
# binaries are copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p worker \
 && install -D -m 0755 -t /out target/release/gateway target/release/worker

FROM debian:bookworm-slim
# ca-certificates: the system roots a worker checks an https:// gateway against (unless
# --gateway-ca names its own). Debian's security updates replace a package's old versions,
# so versions are not pinned here; rebuild to take them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pushgate \
 && useradd --system --uid 10001 --gid pushgate --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin pushgate
COPY --from=build /out/gateway /out/worker /usr/local/bin/
# mimalloc without large OS pages: a worker's idle memory stays at ~100 B per connection.
ENV MIMALLOC_ALLOW_LARGE_OS_PAGES=0
# Numeric, so that runAsNonRoot can check it. The binaries write no files: the root file
# system may be mounted read-only.
USER 10001:10001
# 8080: the gateway's API and worker links; 9000: a worker's client listener (the ports the
# compose file and the Kubernetes manifests use; both are set by PUSHGATE_LISTEN).
EXPOSE 8080 9000
# No HEALTHCHECK here: one image runs either binary, on ports set at run time, so the probe
# (GET /healthz, which both serve) is the orchestrator's: see deploy/compose.yaml and the
# probes in deploy/k8s/.
CMD ["gateway"]
