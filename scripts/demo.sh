#!/usr/bin/env bash
# The main job on embedded defaults: a local metadata service, a volume with a small data set,
# path checks as the CSI driver makes them, and the changelog a mirror region follows.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh protobuf-compiler libprotobuf-dev
cargo build --quiet --release --locked -p mirrorfs
MIRRORFS_LOG=${MIRRORFS_LOG:-warn} exec ./target/release/mirrorfs demo "$@"
