# nfs-subdir-provisioner image: a multi-stage build that runs unchanged under Docker/BuildKit and
# podman/buildah 1.28. For that reason it uses no RUN heredocs and no COPY --link.
#
#   docker build -t nfs-subdir-provisioner:0.1.0 .
#   podman build -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
#     --build-arg RUST_IMAGE=localhost/rust:1.96-debian \
#     --build-arg RUNTIME_IMAGE=localhost/debian:bookworm -t localhost/nfs-subdir-provisioner:dev .
#   (The -v mount gives the RUN step a TLS-intercepting proxy's CA without baking it into a layer.)
#
# Why glibc and not musl: ring compiles C. A musl build needs musl-tools and the musl std, and a
# Debian-packaged Rust builder has neither. distroless/cc ships exactly what this binary links
# against (libc, libm, libgcc_s). Keep the builder and the runtime on the same Debian release
# (bookworm = glibc 2.36): a binary built against a newer glibc will not start on an older one.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# dist = fat LTO, about 2 MiB smaller and several minutes slower. "release" also works.
ARG CARGO_PROFILE=dist
WORKDIR /src
# The binary needs only these. tests/ holds the [[test]] e2e target, which `cargo build --bin` never reads.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# target/ is a cache mount, so the binary has to be copied out within this same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile "${CARGO_PROFILE}" --bin nfs-subdir-provisioner \
 && install -m 0755 "target/${CARGO_PROFILE}/nfs-subdir-provisioner" /nfs-subdir-provisioner

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="nfs-subdir-provisioner" \
      org.opencontainers.image.description="Kubernetes dynamic provisioner: one directory per claim on an NFS export" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /nfs-subdir-provisioner /nfs-subdir-provisioner
# Numeric, so this works on runtime images that have no passwd entry for it. It matches
# runAsUser in deploy/deployment.yaml.
USER 65532:65532
ENTRYPOINT ["/nfs-subdir-provisioner"]
