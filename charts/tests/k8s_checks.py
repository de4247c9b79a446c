"""Checks of Kubernetes objects: strict validation against the API types (kubernetes-validate's
bundled OpenAPI-derived schemas, which refuse unknown fields), a schema of the ServiceMonitor
fields the chart uses, and the cross-object references the API server does not check (selectors,
named ports, volumes, service accounts, role bindings)."""

from __future__ import annotations

import re
from typing import Any, Iterable

import jsonschema
import kubernetes_validate

# The chart's lowest supported Kubernetes (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "StorageClass",
    "PersistentVolume",
}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}

# monitoring.coreos.com/v1 ServiceMonitor, restricted to the fields this chart sets (names and
# types from prometheus-operator's API: ServiceMonitorSpec, Endpoint, NamespaceSelector).
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


# Enumerations the OpenAPI schemas leave as plain strings (values from the Kubernetes API docs).
ENUMS: dict[str, set[str]] = {
    "mountPropagation": {"None", "HostToContainer", "Bidirectional"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "fsGroupPolicy": {"None", "File", "ReadWriteOnceWithFSType"},
    "reclaimPolicy": {"Delete", "Retain"},
    "persistentVolumeReclaimPolicy": {"Delete", "Retain", "Recycle"},
    "volumeBindingMode": {"Immediate", "WaitForFirstConsumer"},
    "protocol": {"TCP", "UDP", "SCTP"},
    "volumeMode": {"Filesystem", "Block"},
    "restartPolicy": {"Always", "OnFailure", "Never"},
}
LIST_ENUMS: dict[str, set[str]] = {
    "accessModes": {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"},
    "volumeLifecycleModes": {"Persistent", "Ephemeral"},
}
HOST_PATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"}


def check_enums(node: Any, path: str = "") -> list[str]:
    """Every known enumeration field anywhere in the object holds one of its values."""
    problems: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if key in ENUMS and isinstance(value, str) and value not in ENUMS[key]:
                problems.append(f"{here}: {value!r} is not one of {sorted(ENUMS[key])}")
            if key in LIST_ENUMS and isinstance(value, list):
                problems += [f"{here}: {v!r} is not one of {sorted(LIST_ENUMS[key])}" for v in value if v not in LIST_ENUMS[key]]
            if key == "hostPath" and isinstance(value, dict) and value.get("type", "") not in HOST_PATH_TYPES:
                problems.append(f"{here}/type: {value.get('type')!r} is not a hostPath type")
            problems += check_enums(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            problems += check_enums(item, f"{path}/{i}")
    return problems


def validate_schema(obj: dict[str, Any]) -> list[str]:
    """Strict schema validation against every version in KUBE_VERSIONS; messages, empty if valid."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") == "ServiceMonitor":
        errors = jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(obj)
        return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.absolute_path))
            problems.append(f"{where} (Kubernetes {version}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where}: {e.message}")
    return problems


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") in WORKLOADS:
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj["spec"]
    return None


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj.get("kind") in WORKLOADS:
        return obj["spec"]["template"]["metadata"].get("labels", {})
    return obj.get("metadata", {}).get("labels", {})


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def check_object(obj: dict[str, Any], namespace: str | None) -> list[str]:
    """What one object must satisfy on its own (names, labels, scope, pod-internal references)."""
    problems: list[str] = []
    kind = obj.get("kind")
    meta = obj.get("metadata", {})
    problems += [f"{kind}/{meta.get('name')}: {p}" for p in check_enums(obj)]
    name = meta.get("name", "")
    where = f"{kind}/{name}"
    if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"{where}: name is not a DNS subdomain")
    if kind in {"Service", "Namespace"} and (not DNS_LABEL.match(name) or len(name) > 63):
        problems.append(f"{where}: a {kind} name must be a DNS label (<= 63 characters)")
    for key, value in meta.get("labels", {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    if kind in CLUSTER_SCOPED:
        if "namespace" in meta:
            problems.append(f"{where}: cluster-scoped object with a namespace")
    elif namespace is not None and meta.get("namespace") != namespace:
        # Only access to Secrets kept elsewhere (and those Secrets) may live outside the release.
        if kind not in {"Role", "RoleBinding", "Secret"} or not meta.get("namespace"):
            problems.append(f"{where}: namespace {meta.get('namespace')!r}, expected {namespace!r}")

    spec = _pod_spec(obj)
    if spec is None:
        return problems
    if kind in WORKLOADS:
        selector = obj["spec"]["selector"].get("matchLabels", {})
        if not selector or not _matches(selector, _pod_labels(obj)):
            problems.append(f"{where}: selector {selector} does not match the pod template labels")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    if kind == "StatefulSet":
        volumes |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    used_volumes: set[str] = set()
    names = [c["name"] for c in _containers(spec)]
    if len(names) != len(set(names)):
        problems.append(f"{where}: duplicate container names {names}")
    all_ports: list[int] = []
    for c in _containers(spec):
        cw = f"{where} container {c['name']}"
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", []) if p.get("name")}
        all_ports += [p["containerPort"] for p in c.get("ports", [])]
        for pname in ports:
            if len(pname) > 15 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", pname):
                problems.append(f"{cw}: port name {pname!r} is not an IANA service name")
        for probe_kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_kind)
            if not probe:
                continue
            port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{cw}: {probe_kind} uses port {port!r}, not a port of the container")
        paths = []
        for m in c.get("volumeMounts", []):
            used_volumes.add(m["name"])
            paths.append(m["mountPath"])
            if m["name"] not in volumes:
                problems.append(f"{cw}: mounts volume {m['name']!r}, which the pod does not have")
            if m.get("mountPropagation") == "Bidirectional" and not c.get("securityContext", {}).get("privileged"):
                problems.append(f"{cw}: Bidirectional mount propagation needs a privileged container")
        if len(paths) != len(set(paths)):
            problems.append(f"{cw}: two volumes mounted at one path {paths}")
        for arg in c.get("args", []) + c.get("command", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                if ref not in {e["name"] for e in c.get("env", [])}:
                    problems.append(f"{cw}: argument {arg!r} refers to $({ref}), which is not in env")
    if len(all_ports) != len(set(all_ports)):
        problems.append(f"{where}: two containers declare one port {all_ports}")
    unused = volumes - used_volumes
    if unused:
        problems.append(f"{where}: volumes {sorted(unused)} are mounted by no container")
    return problems


def check_references(objects: Iterable[dict[str, Any]]) -> list[str]:
    """References between objects: Services and ServiceMonitors select something that exists,
    service accounts and roles named by pods and bindings are rendered, nothing is defined twice."""
    objs = list(objects)
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for o in objs:
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if key in seen:
            problems.append(f"{key}: defined twice")
        seen.add(key)

    def exists(kind: str, name: str, namespace: str | None = None) -> bool:
        return any(
            o["kind"] == kind
            and o["metadata"]["name"] == name
            and (namespace is None or o["metadata"].get("namespace") == namespace)
            for o in objs
        )

    pods = [o for o in objs if _pod_spec(o) is not None]
    for p in pods:
        sa = _pod_spec(p).get("serviceAccountName")
        if sa and not exists("ServiceAccount", sa, p["metadata"].get("namespace")):
            problems.append(f"{p['kind']}/{p['metadata']['name']}: service account {sa!r} is not rendered")
    for svc in (o for o in objs if o["kind"] == "Service"):
        where = f"Service/{svc['metadata']['name']}"
        selector = svc["spec"].get("selector", {})
        targets = [
            p
            for p in pods
            if p["metadata"].get("namespace") == svc["metadata"].get("namespace")
            and _matches(selector, _pod_labels(p))
        ]
        if not targets:
            problems.append(f"{where}: selector {selector} matches no rendered pod")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for p in targets:
                named = {
                    pp.get("name"): pp["containerPort"]
                    for c in _containers(_pod_spec(p))
                    for pp in c.get("ports", [])
                }
                if isinstance(target, str) and target not in named:
                    problems.append(f"{where}: targetPort {target!r} is not a port of {p['metadata']['name']}")
                if isinstance(target, int) and target not in named.values():
                    problems.append(f"{where}: targetPort {target} is not a port of {p['metadata']['name']}")
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        where = f"ServiceMonitor/{sm['metadata']['name']}"
        selector = sm["spec"]["selector"].get("matchLabels", {})
        services = [o for o in objs if o["kind"] == "Service" and _matches(selector, o["metadata"].get("labels", {}))]
        if not services:
            problems.append(f"{where}: selects no rendered Service")
        for ep in sm["spec"]["endpoints"]:
            for svc in services:
                if ep.get("port") not in {p.get("name") for p in svc["spec"]["ports"]}:
                    problems.append(f"{where}: port {ep.get('port')!r} is not a port of {svc['metadata']['name']}")
    for b in (o for o in objs if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        where = f"{b['kind']}/{b['metadata']['name']}"
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        if not exists(ref["kind"], ref["name"], ns):
            problems.append(f"{where}: roleRef {ref['kind']}/{ref['name']} is not rendered")
        for s in b.get("subjects", []):
            if s["kind"] == "ServiceAccount" and not exists("ServiceAccount", s["name"], s.get("namespace")):
                problems.append(f"{where}: subject {s['namespace']}/{s['name']} is not rendered")
    return problems


def check_all(objects: Iterable[dict[str, Any]], namespace: str | None) -> list[str]:
    objs = list(objects)
    problems: list[str] = []
    for o in objs:
        problems += validate_schema(o)
        problems += check_object(o, namespace)
    problems += check_references(objs)
    return problems
