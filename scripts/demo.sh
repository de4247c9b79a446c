#!/usr/bin/env bash
# The main job on embedded defaults: a source and a mirror region on this machine (meta services,
# local buckets), a small data set written in the source, replicated to the mirror's bucket, and a
# mirror directory published read-only through the CSI node path as a pod would see it, with the
# mirror's lag. Needs root (FUSE and bind mounts); Ctrl-C cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (it mounts a mirror volume through the CSI node path): sudo $0" >&2
  exit 1
fi
./scripts/setup.sh protobuf-compiler libprotobuf-dev fuse3
cargo build --quiet --release --locked -p mirrorfs
MIRRORFS_LOG=${MIRRORFS_LOG:-error} exec ./target/release/mirrorfs demo "$@"
