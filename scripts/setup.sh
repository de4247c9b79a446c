#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently and unattended. Safe to run again.
set -euo pipefail

need_apt=()
# Nothing in the current tree needs system packages beyond the Rust toolchain: protoc is
# vendored by the build. Packages are added here as the tests come to need them.
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
