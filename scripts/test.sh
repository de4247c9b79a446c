#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and process-level tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the etcd engine's tests start real etcd processes (they fail, never skip, without
# it); protobuf-compiler and libprotobuf-dev (the well-known .proto files): etcd-client generates
# its gRPC code at build time; fuse3: fusermount3 and the FUSE tests' mounts; rclone: the peer
# that `mirrorfs bench replicate` measures against.
./scripts/setup.sh etcd-server protobuf-compiler libprotobuf-dev fuse3 rclone

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== Helm chart, manifests and Dockerfile"
./charts/tests/run.sh

echo "== benchmark smoke run (tiny sizes; the real figures come from 'mirrorfs bench')"
cargo run --quiet --release --locked -p mirrorfs -- bench meta --clients 1,4 --files-per-client 50 --etcd >/dev/null
MIRRORFS_LOG=error cargo run --quiet --release --locked -p mirrorfs -- bench mirror --duration 1s \
  --clients 4 --paced-rate 100 --catch-up-creates 500 --bootstrap-inodes 2000 \
  --etcd --etcd-bootstrap-inodes 500 >/dev/null
MIRRORFS_LOG=error cargo run --quiet --release --locked -p mirrorfs -- bench replicate \
  --small-blocks 40 --large-blocks 4 --workers 1,4 --latency-reads 10 >/dev/null
MIRRORFS_LOG=error cargo run --quiet --release --locked -p mirrorfs -- bench fs --size-mb 8 \
  --random-ops 50 --files 300 >/dev/null
MIRRORFS_LOG=error cargo run --quiet --release --locked -p mirrorfs -- bench csi --inodes 2000 \
  --callers 1,4 --create-calls 40 --publish-calls 8 >/dev/null
echo "all tests passed"
