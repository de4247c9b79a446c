#!/usr/bin/env bash
# The Helm chart, manifests/ and Dockerfile tests (pytest): renders and lints the chart with the
# Helm engine, validates every object against the Kubernetes API schemas, compares manifests/
# with the chart, and checks every flag the chart passes against the built `mirrorfs` binary.
# Usage: charts/tests/run.sh [pytest arguments]. Needs python3 (with venv) and apt (apt-cache,
# apt-get download: the Dockerfile's Debian packages are looked up).
set -euo pipefail
cd "$(dirname "$0")/../.."

source charts/tests/venv.sh

# The Dockerfile tests look its Debian packages up (apt-cache show, apt-get download): make sure
# the package lists are there.
if ! apt-cache show --no-all-versions tini fuse3 ca-certificates >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "chart tests: apt package lists are missing; run apt-get update as root" >&2
    exit 1
  fi
  apt-get update -q >/dev/null
fi

# The binary the image ships (Dockerfile: cargo build --release -p mirrorfs).
cargo build --release --locked --quiet -p mirrorfs
export MIRRORFS_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/mirrorfs

export PYTHONDONTWRITEBYTECODE=1
exec "$CHART_PY" -m pytest -q -p no:cacheprovider charts/tests "$@"
