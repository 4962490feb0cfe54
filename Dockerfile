# nfs-subdir-provisioner image: a multi-stage build of one static binary on distroless/static,
# running as nonroot (65532) with a read-only root filesystem.
#
# Plain Dockerfile syntax that builds unchanged under Docker/BuildKit and podman/buildah 1.28:
# RUN --mount=type=cache is used, RUN heredocs and COPY --link are not (buildah 1.28 lacks them).
#
#   docker build -t nfs-subdir-provisioner:0.1.0 .
#   scripts/build-image.sh     # podman, on a host without registry access: makes local stand-ins
#                              # for the two base images below, then builds this file unchanged
#
# Why musl: the binary is then fully static, so the runtime image needs no libc; the image is the
# binary (about 11 MB) on distroless/static (about 2 MB). ring compiles C, which for the musl
# target needs musl-gcc (musl-tools). The official rust image has the gnu std only, so the musl
# std is added with rustup (a download, unless the builder image already has it). The target
# triple comes from `uname -m`, so a native arm64 build works the same way.
# The runtime image must provide /etc/ssl/certs (the client trusts the system roots besides the
# cluster CA) and /etc/passwd with uid 65532; distroless/static:nonroot has both.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
# dist = fat LTO and one codegen unit (Cargo.toml): smaller and faster, slower to build.
# "release" also works.
ARG CARGO_PROFILE=dist
WORKDIR /src
# The binary needs only these (.dockerignore keeps everything else out of the build context).
# tests/ and benches/ hold explicitly declared targets that `cargo build --bin` never reads.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# target/ is a cache mount, so the binary has to be copied out within this same step.
RUN --mount=type=cache,id=nfs-subdir-provisioner-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=nfs-subdir-provisioner-target,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --locked --profile "${CARGO_PROFILE}" --target "${target}" --bin nfs-subdir-provisioner \
 && install -m 0755 "target/${target}/${CARGO_PROFILE}/nfs-subdir-provisioner" /nfs-subdir-provisioner

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="nfs-subdir-provisioner" \
      org.opencontainers.image.description="Kubernetes dynamic provisioner: one directory per claim on an NFS export" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /nfs-subdir-provisioner /nfs-subdir-provisioner
# Numeric, so that runAsNonRoot can verify it; it matches runAsUser in deploy/deployment.yaml.
USER 65532:65532
ENTRYPOINT ["/nfs-subdir-provisioner"]
