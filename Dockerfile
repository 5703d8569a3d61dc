# syntax=docker/dockerfile:1
# captain-bridge image: the `captain-bridge` and `captain-sim` binaries on Debian bookworm,
# running as a non-root user (uid 10001).
#
#   docker build -t captain-bridge .                    # compiles in the builder stage
#   docker run --rm captain-bridge demo                 # the whole loop, no service needed
#   docker run -p 8080:8080 -p 9090:9090 -e CAPTAIN_BRIDGE_... captain-bridge   # `run`
#
# Ports: 8080 callbacks from Captain Data (`callbacks.listen`), 9090 `/metrics`, `/healthz`,
# `/readyz` (`ops.listen`). The HEALTHCHECK asks `/healthz` through the binary itself (the
# image has no HTTP client); set CAPTAIN_BRIDGE_HEALTHCHECK_URL when `ops.listen` moves.
#
# BINARIES=prebuilt takes the two binaries from bin/ in the build context instead of compiling
# them (built beforehand on Debian bookworm, glibc 2.36): scripts/deploy-check.sh builds the
# runtime image this way, where no Rust image can be pulled.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARIES=builder

FROM ${BUILDER_IMAGE} AS builder
# librdkafka is compiled by rdkafka-sys (make, a C/C++ compiler); zlib is linked dynamically.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p captain-bridge -p captain-sim \
 && mkdir -p /out \
 && cp target/release/captain-bridge target/release/captain-sim /out/

FROM scratch AS prebuilt
COPY bin/captain-bridge bin/captain-sim /out/

# hadolint ignore=DL3006
FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: the API client verifies TLS against the system store (rustls platform
# verifier); zlib1g and libgcc-s1 are in every Debian base. Versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 captain \
 && useradd --uid 10001 --gid captain --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin captain
COPY --from=binaries /out/captain-bridge /out/captain-sim /usr/local/bin/
LABEL org.opencontainers.image.title="captain-bridge" \
      org.opencontainers.image.description="Kafka to Captain Data v4 bridge, with the captain-sim simulator" \
      org.opencontainers.image.licenses="MIT"
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["captain-bridge", "healthcheck"]
ENTRYPOINT ["captain-bridge"]
CMD ["run"]
