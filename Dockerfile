# syntax=docker/dockerfile:1
# Production image of the Myelin homeserver (`myelin-server`).
#
#   docker build -t myelin:latest .
#   docker run -p 8008:8008 -v myelin-data:/data -e MYELIN_SERVER_NAME=example.org myelin:latest
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.

# ---- build ------------------------------------------------------------------------------------
# The workspace declares rust-version 1.95; bookworm matches the runtime stage's glibc.
FROM rust:1.95-slim-bookworm AS build

# C toolchain for the crates that compile C: aws-lc-sys (rustls' crypto provider; cmake for its
# fallback build), libsqlite3-sys (bundled SQLite) and libmimalloc-sys.
# Versions are not pinned: they come from the pinned Debian release, whose point releases drop
# old package versions, so a pin would only break the build later.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ make cmake perl pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole tree (less what .dockerignore drops): cargo needs every workspace member's
# manifest, homeserver embeds migrations/ at compile time and openapi/client reads
# openapi/myelin.json in its build script.
COPY . .

# Registry and target directory live in cache mounts, so a rebuild after a source change only
# recompiles the workspace crates. The target directory is not part of the image, hence the copy
# out of it. `sharing=locked`: two builds at once (compose builds both myelin services) must not
# write the same target directory. Stripped: symbols only make the image bigger (panic messages
# keep their file and line).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p myelin-homeserver --bin myelin-server \
        --config profile.release.strip=true \
    && cp target/release/myelin-server /usr/local/bin/myelin-server

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="myelin" \
      org.opencontainers.image.description="Myelin: a Matrix homeserver" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates only: reqwest/rustls check other homeservers' and S3's certificates against
# the system roots. Nothing else: SQLite, TLS and the allocator are linked into the binary.
# A fixed UID/GID (10001) so that volumes and bind mounts can be chowned for it on the host.
# /data is created and owned here: a new named volume mounted there copies this ownership.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 myelin \
    && useradd --system --uid 10001 --gid myelin --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin myelin \
    && mkdir /data \
    && chown myelin:myelin /data

COPY --from=build /usr/local/bin/myelin-server /usr/local/bin/myelin-server

# Configuration is by environment (MYELIN_*, nested keys joined by `__`); these are the image's
# defaults: state under the volume, and listeners on all addresses so that the published ports
# reach them (the binary's own default is loopback only). Also set, typically:
#   MYELIN_SERVER_NAME (default localhost:8008), MYELIN_REGISTRATION__TOKEN,
#   MYELIN_DATABASE__URL=postgres://... (default: SQLite in /data),
#   MYELIN_MEDIA__STORE=s3://bucket with AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#   AWS_REGION (and AWS_ALLOW_HTTP=true for a plain-HTTP S3 server) (default: /data/media),
#   MYELIN_FEDERATION__ENABLED=true with MYELIN_FEDERATION__TLS_CERT and __TLS_KEY (PEM paths).
ENV MYELIN_DATA_DIR=/data \
    MYELIN_LISTEN__CLIENT=0.0.0.0:8008 \
    MYELIN_LISTEN__FEDERATION=0.0.0.0:8448

# The signing key, and the SQLite database and media when not configured elsewhere.
VOLUME /data
WORKDIR /data
# The myelin user, by number: Kubernetes' runAsNonRoot can only verify a numeric user.
USER 10001:10001

# 8008: Client-Server API (plain HTTP; put TLS in front). 8448: federation (TLS), when enabled.
EXPOSE 8008 8448

# `myelin-server health` asks the configured client listener for /_matrix/client/versions and
# exits 0 or 1, so the image needs no curl. The start period covers the first start's database
# migrations; within it, checks run every 2 s (Docker 25+), so services waiting for this one to be
# healthy (compose's nginx) start seconds, not an interval, after it does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --start-interval=2s --retries=3 \
    CMD ["myelin-server", "health"]

# The server stops gracefully on SIGTERM (Docker's default stop signal); exec form so that it
# is PID 1 and receives it.
ENTRYPOINT ["myelin-server"]
