"""The chart's documentation: every value in docs/CONFIGURATION.md, the install steps in the
README pointing at files that exist."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import yaml

import k8s_checks
from chartlib import CHART, REPO
from test_chart import check_storage_class


def values_in_schema(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every value a user sets (objects with fixed properties are descended)."""
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        # Container resources are one value (a Kubernetes ResourceRequirements).
        if "properties" in sub and name != "resources":
            yield from values_in_schema(sub, path + ".")
        else:
            yield path


def chart_section() -> str:
    text = (REPO / "docs" / "CONFIGURATION.md").read_text()
    start = text.index("## Helm chart values")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_every_chart_value_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = chart_section().splitlines()
    missing = []
    for path in values_in_schema(schema):
        parent, _, leaf = path.rpartition(".")
        direct = any(f"`{path}`" in line for line in lines)
        # "`a.b.x` / `.y`": siblings documented on one line.
        grouped = any(f"`.{leaf}`" in line and re.search(rf"`{re.escape(parent)}\.\w+`", line) for line in lines)
        if not (direct or grouped):
            missing.append(path)
    assert missing == [], f"values missing from docs/CONFIGURATION.md (Helm chart values): {missing}"


def test_documented_values_exist() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = set(values_in_schema(schema))
    prefixes = {p.rsplit(".", i)[0] for p in known for i in range(p.count(".") + 1)}
    mentioned = set(re.findall(r"(?m)^\| `([a-zA-Z][\w.]*)`", chart_section()))
    assert mentioned and mentioned <= prefixes, mentioned - prefixes


def test_readme_install_section_points_at_real_files() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Kubernetes install")
    end = readme.find("\n## ", start + 1)
    section = readme[start:end]
    for path in re.findall(r"(?:\./)?((?:charts|manifests|docs|scripts)/[\w./-]+[\w])", section):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
    for needed in ("helm install", "manifests/examples/dynamic.yaml", "manifests/examples/static.yaml", "kubeletDir"):
        assert needed in section


def test_readme_yaml_examples_are_valid_objects() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Kubernetes install")
    section = readme[start : readme.find("\n## ", start + 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    objs = [yaml.safe_load(b) for b in blocks]
    assert {o["kind"] for o in objs} == {"StorageClass", "PersistentVolume"}
    assert k8s_checks.check_all(objs, None) == []
    for o in objs:
        if o["kind"] == "StorageClass":
            check_storage_class({**o, "allowVolumeExpansion": False})
        else:
            assert o["spec"]["csi"]["driver"] == "csi.mirrorfs.io"
