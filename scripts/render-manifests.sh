#!/usr/bin/env bash
# Regenerates manifests/mirrorfs-csi.yaml from charts/mirrorfs-csi with default values (the chart
# tests fail when the two disagree). Usage: scripts/render-manifests.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
source charts/tests/venv.sh
exec "$CHART_PY" charts/tests/render_manifests.py "$@"
