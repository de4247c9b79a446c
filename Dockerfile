# syntax=docker/dockerfile:1
# One image for every mirrorfs role: the CSI driver's controller and node plugins (`mirrorfs csi`),
# the meta service (`mirrorfs meta serve`) and the FUSE mounts the node plugin starts
# (`mirrorfs mount`). The Helm chart (charts/mirrorfs-csi) picks the role with its arguments.
#
#   docker build -t <registry>/mirrorfs:0.1.0 .

# Build stage: the workspace's release binary. rust-version in Cargo.toml is the minimum.
FROM rust:1.88-bookworm AS builder
# protoc and the well-known .proto files: the etcd client generates its gRPC code at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mirrorfs

# Runtime stage: the binary plus what FUSE needs.
FROM debian:bookworm-slim
# fuse3: /dev/fuse users and fusermount3 (non-root mounts); ca-certificates: TLS to object
# stores and remote meta services; tini: reaps the mount processes the node plugin starts and
# forwards signals to the driver.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/mirrorfs /usr/local/bin/mirrorfs
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/mirrorfs"]
CMD ["csi"]
