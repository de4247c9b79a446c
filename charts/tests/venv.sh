# Sourced by charts/tests/run.sh and scripts/render-manifests.sh: makes sure a virtualenv with
# charts/tests/requirements.txt exists (created once, re-installed when the file changes) and
# sets CHART_PY to its python. Unattended and idempotent.
# Location: $MIRRORFS_CHART_VENV, default ~/.cache/mirrorfs/chart-venv (outside the work tree, so
# fresh clones on one machine share it).
chart_venv=${MIRRORFS_CHART_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrorfs/chart-venv}
chart_requirements=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements.txt
chart_stamp=$(sha256sum "$chart_requirements" | cut -d' ' -f1)
if [[ ! -x $chart_venv/bin/python || $(cat "$chart_venv/.requirements-sha256" 2>/dev/null) != "$chart_stamp" ]]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "chart tests: python3 with the venv module is needed (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  echo "chart tests: installing $(grep -c '^[a-zA-Z]' "$chart_requirements") Python packages into $chart_venv"
  rm -rf "$chart_venv"
  python3 -m venv "$chart_venv"
  "$chart_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$chart_requirements"
  echo "$chart_stamp" > "$chart_venv/.requirements-sha256"
fi
CHART_PY=$chart_venv/bin/python
