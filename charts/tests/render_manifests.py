"""Writes manifests/mirrorfs-csi.yaml from the chart (default values); --check only compares."""

from __future__ import annotations

import sys

import chartlib


def main(argv: list[str]) -> int:
    target = chartlib.MANIFESTS / "mirrorfs-csi.yaml"
    text = chartlib.manifest_text()
    if argv[1:] == ["--check"]:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} differs from the chart: run scripts/render-manifests.sh", file=sys.stderr)
            return 1
        print(f"{target} matches the chart")
        return 0
    if argv[1:]:
        print("usage: render-manifests.sh [--check]", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target.relative_to(chartlib.REPO)} ({text.count(chr(10) + '---')} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
