#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently and unattended. Safe to run again.
set -euo pipefail

# Usage: setup.sh [apt-package...]. The callers name what they need (test.sh: etcd-server for
# the etcd engine's tests, protobuf-compiler and libprotobuf-dev for the etcd
# client's generated code).
need_apt=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages ${need_apt[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
