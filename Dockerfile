# syntax=docker/dockerfile:1
#
# hooksign: a static (musl) binary in a distroless image, running as a non-root user.
#
#   docker build -t hooksign .
#   docker run --rm -p 127.0.0.1:9090:9090 \
#       -v hooksign-store:/var/lib/hooksign -v hooksign-sock:/run/hooksign hooksign
#
# The image's config (deploy/container.toml) serves the proxy port on the Unix socket
# /run/hooksign/proxy.sock (mount the same volume into the application's container), never on a
# published TCP port: whoever reaches the proxy port gets deliveries signed. Mount the store's
# directory, not the file: hooksign replaces the file by rename, which a bind-mounted file refuses.

FROM rust:1-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# .cargo/config.toml points PROTOC at tools/protoc (the vendored protoc etcd-client builds with).
COPY .cargo ./.cargo
COPY tools ./tools
COPY src ./src
COPY benches ./benches
# ring compiles its C and assembly with musl-gcc; the result has no dynamic dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/hooksign /hooksign
# Fail the build if the binary is not static, and prove it runs.
RUN (ldd /hooksign 2>&1 || true) | grep -Eq 'not a dynamic executable|statically linked' \
    && /hooksign --version \
    && mkdir -p /out/var/lib/hooksign /out/run/hooksign

# distroless/static carries CA certificates (for upstream TLS), /etc/passwd and tzdata; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /hooksign /usr/local/bin/hooksign
COPY deploy/container.toml /etc/hooksign/config.toml
# The store directory belongs to the runtime user: hooksign writes the store atomically there
# (temp file, fsync, rename), so the directory must be writable, not only the file.
COPY --from=build --chown=65532:65532 /out/var/lib/hooksign /var/lib/hooksign
COPY --from=build --chown=65532:65532 /out/run/hooksign /run/hooksign
ENV HOOKSIGN_CONFIG=/etc/hooksign/config.toml
USER 65532:65532
VOLUME ["/etc/hooksign", "/var/lib/hooksign", "/run/hooksign"]
# 9090: the admin port (probes, metrics, token-protected API). The proxy port is the socket
# /run/hooksign/proxy.sock.
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/hooksign", "healthcheck", "--config", "/etc/hooksign/config.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hooksign"]
CMD ["serve", "--config", "/etc/hooksign/config.toml"]
