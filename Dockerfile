# syntax=docker/dockerfile:1
# ciba-gate container image.
#
#   docker build -t ciba-gate:0.1.0 .
#
# Builder and runtime share Debian 12 (bookworm) so that the glibc the binary links
# against is the one the runtime image ships.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds; the
# binary is copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ciba-gate \
    && install -D -m 0755 target/release/ciba-gate /out/ciba-gate

# distroless/cc: glibc, libgcc, ca-certificates and a "nonroot" user (65532), no
# shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ciba-gate /ciba-gate
COPY --from=build /src/policies /etc/ciba-gate/policies
USER 65532:65532
# 8080 agent-facing proxy (bind to 127.0.0.1 in a pod), 8443 CIBA callback (TLS),
# 9090 admin (/healthz, /readyz, /metrics).
EXPOSE 8080 8443 9090
ENTRYPOINT ["/ciba-gate"]
CMD ["serve", "--config", "/etc/ciba-gate/config.yaml"]
