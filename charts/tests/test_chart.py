"""The mirrorfs-csi chart rendered and linted by the Helm engine: what the driver, the sidecars,
kubelet and the API server need from each object, for the default and non-default values."""

from __future__ import annotations

import copy
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

import chartlib
import k8s_checks
from chartlib import DRIVER, NAMESPACE, RELEASE
from conftest import SCENARIOS

FULL = RELEASE  # the release name contains the chart name: objects are prefixed with it alone


def render(name: str) -> chartlib.Release:
    return chartlib.render(SCENARIOS[name])


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for c in obj["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{obj['metadata']['name']} has no container {name}")


def flag(c: dict[str, Any], name: str) -> str | None:
    """The value of --name=value among a container's args (None if absent, "" for a bare flag)."""
    for arg in c.get("args", []):
        if arg == f"--{name}":
            return ""
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert m, f"unexpected duration {duration!r}"
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_startup_probe(driver: dict[str, Any], timeout: int = 300) -> None:
    """Liveness counts only once the driver is ready: a restarted node plugin remounts its
    volumes first and answers "not ready" meanwhile, which livenessprobe reports as a failure."""
    startup = driver["startupProbe"]
    assert startup["httpGet"] == driver["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= timeout


def volume(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def mount(c: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in c["volumeMounts"] if m["name"] == name)


# --- Helm engine: lint, render, schema -----------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_passes(scenario: str) -> None:
    report = chartlib.lint(SCENARIOS[scenario])
    assert report["errors"] == [], report
    # severity 1 is informational ("icon is recommended"); warnings and errors fail.
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_valid_for_the_kubernetes_api(scenario: str) -> None:
    release = render(scenario)
    assert release.objects, "nothing rendered"
    assert k8s_checks.check_all([r.obj for r in release.objects], NAMESPACE) == []


def test_the_validation_catches_what_it_claims_to() -> None:
    """The checks above are worth something only if they fail on broken objects."""
    release = render("everything")
    node = copy.deepcopy(release.one("DaemonSet", f"{FULL}-node"))
    node["spec"]["template"]["spec"]["containers"][0]["mountPropagations"] = "Bidirectional"
    assert any("mountPropagations" in p for p in k8s_checks.validate_schema(node))

    node = copy.deepcopy(release.one("DaemonSet", f"{FULL}-node"))
    node["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]["mountPropagation"] = "Both"
    assert any("'Both' is not one of" in p for p in k8s_checks.check_object(node, NAMESPACE))

    node = copy.deepcopy(release.one("DaemonSet", f"{FULL}-node"))
    node["spec"]["template"]["spec"]["volumes"] = node["spec"]["template"]["spec"]["volumes"][1:]
    assert any("which the pod does not have" in p for p in k8s_checks.check_object(node, NAMESPACE))

    driver = copy.deepcopy(release.one("CSIDriver", DRIVER))
    driver["spec"]["attachRequired"] = "false"
    assert k8s_checks.validate_schema(driver)

    objs = [r.obj for r in release.objects if not (r.kind == "ServiceAccount" and r.name.endswith("-controller"))]
    assert any("is not rendered" in p for p in k8s_checks.check_references(objs))

    monitor = copy.deepcopy(release.find("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["targetPort"] = 9810
    assert k8s_checks.validate_schema(monitor)


# (values, the words the error must contain)
BAD_VALUES = [
    ({"kubeletDir": "var/lib/kubelet"}, "/kubeletDir"),
    ({"stateDir": ""}, "/stateDir"),
    ({"driver": {"pathWait": "30"}}, "/driver/pathWait"),
    ({"driver": {"pathWait": "1m30s"}}, "/driver/pathWait"),
    ({"driver": {"region": "eu west"}}, "/driver/region"),
    ({"driver": {"metrics": {"port": 70000}}}, "/driver/metrics/port"),
    ({"controller": {"replicas": 0}}, "/controller/replicas"),
    ({"controller": {"provisionerTimeout": "soon"}}, "/controller/provisionerTimeout"),
    ({"controller": {"secretNamespaces": ["Team_A"]}}, "/controller/secretNamespaces"),
    ({"controller": {"replica": 2}}, "replica"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"tag": 1.2}}, "/image/tag"),
    ({"sidecars": {"provisioner": {"extraArgs": ["timeout=5s"]}}}, "/sidecars/provisioner/extraArgs"),
    ({"storageClass": {"create": True}}, "/storageClass/volume"),
    ({"storageClass": {"create": True, "volume": "v", "metaAddress": "meta:7400"}}, "/storageClass/metaAddress"),
    ({"storageClass": {"reclaimPolicy": "Recycle"}}, "/storageClass/reclaimPolicy"),
    ({"secret": {"create": True}}, "/secret/token"),
    ({"meta": {"enabled": True}}, "/meta/mirrorOf"),
    ({"meta": {"engine": "sqlite"}}, "/meta/engine"),
    ({"node": {"maxUnavailable": 0}}, "/node/maxUnavailable"),
    ({"node": {"updateStrategy": "Recreate"}}, "/node/updateStrategy"),
    ({"node": {"cache": {"sizePerVolume": "10 parsecs"}}}, "/node/cache/sizePerVolume"),
    ({"node": {"cache": {"hostPath": "relative/cache"}}}, "/node/cache/hostPath"),
    ({"node": {"cache": {"enabled": "yes"}}}, "/node/cache/enabled"),
    ({"unknownTopLevel": True}, "unknownTopLevel"),
]


@pytest.mark.parametrize(("values", "names"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_the_schema_refuses_bad_values(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chartlib.render(values)
    assert names in str(caught.value)


TEMPLATE_FAILURES = [
    ({"controller": {"provisionerTimeout": "30s"}}, "must be longer than driver.pathWait"),
    ({"driver": {"pathWait": "2m"}, "controller": {"provisionerTimeout": "90s"}}, "must be longer than driver.pathWait"),
    (
        {"storageClass": {"create": True, "volume": "v", "metaAddress": "http://m:7400", "subdir": "a", "pathPattern": "b"}},
        "set subdir or pathPattern, not both",
    ),
    (
        {"meta": {"enabled": True, "mirrorOf": "http://s:7400", "mirrorTokenSecret": {"name": "t", "key": "token"}, "replicas": 2}},
        "embedded engine is a single-process database",
    ),
    (
        {
            "meta": {
                "enabled": True,
                "mirrorOf": "http://s:7400",
                "mirrorTokenSecret": {"name": "t", "key": "token"},
                "engine": "etcd://e:2379",
                "replicas": 2,
            }
        },
        "meta.adminTokenSecret.name is required",
    ),
    (
        {"stateDir": "/var/lib/mirrorfs-csi", "node": {"cache": {"enabled": True, "hostPath": "/var/lib/mirrorfs-csi/"}}},
        "node.cache.hostPath must be a directory of its own, not stateDir",
    ),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_FAILURES, ids=[m for _, m in TEMPLATE_FAILURES])
def test_inconsistent_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chartlib.render(values)
    assert message in str(caught.value)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_notes_tell_what_to_do_next(scenario: str) -> None:
    release = render(scenario)
    notes = release.notes
    assert f"kubectl get csidriver {DRIVER}" in notes
    assert "kubectl get csinode" in notes
    if SCENARIOS[scenario].get("secret", {}).get("create"):
        assert "holds the mirror volume's token" in notes and "NOTE: secret.create" in notes
    else:
        assert "create secret generic" in notes
    assert "docs/TROUBLESHOOTING.md" in notes
    assert "ReadOnlyMany" in notes
    if SCENARIOS[scenario].get("meta", {}).get("enabled"):
        assert "mirrorfs volume create" in notes and "--source-volume" in notes
    if SCENARIOS[scenario].get("storageClass", {}).get("create"):
        assert "kubectl describe pvc" in notes
    # Every step number appears once, in order.
    steps = re.findall(r"(?m)^(\d)\. ", notes)
    assert steps == [str(i) for i in range(1, len(steps) + 1)], steps


def test_notes_warn_when_path_wait_approaches_the_kubelet_timeout() -> None:
    assert "WARNING" not in render("defaults").notes
    assert "kubelet's 2-minute limit" in chartlib.render({"driver": {"pathWait": "110s"}}).notes


# --- CSIDriver ------------------------------------------------------------------------------


def test_csidriver() -> None:
    spec = render("defaults").one("CSIDriver", DRIVER)["spec"]
    assert spec == {
        "attachRequired": False,
        "fsGroupPolicy": "None",
        "seLinuxMount": False,
        "podInfoOnMount": False,
        "volumeLifecycleModes": ["Persistent"],
    }
    assert render("minimal").find("CSIDriver") == []


# --- controller -----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_controller_runs_the_provisioner_with_the_flags_the_driver_needs(scenario: str) -> None:
    values = SCENARIOS[scenario]
    deploy = render(scenario).one("Deployment", f"{FULL}-controller")
    spec = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == values.get("controller", {}).get("replicas", 1)
    assert spec["serviceAccountName"] == f"{FULL}-controller"
    driver = container(deploy, "mirrorfs")
    assert driver["args"][0] == "csi"
    assert flag(driver, "role") == "controller"
    assert flag(driver, "endpoint") == "unix:///csi/csi.sock"
    assert flag(driver, "node-id") is None
    state = flag(driver, "state-dir")
    assert state and mount(driver, "state-dir")["mountPath"] == state
    assert volume(spec, "state-dir") == {"name": "state-dir", "emptyDir": {}}
    path_wait = flag(driver, "path-wait")
    assert path_wait == values.get("driver", {}).get("pathWait", "30s")

    prov = container(deploy, "csi-provisioner")
    assert prov["image"] == "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0"
    assert flag(prov, "csi-address") == "/csi/csi.sock"
    assert flag(prov, "extra-create-metadata") == ""
    assert flag(prov, "leader-election") == ""
    assert flag(prov, "leader-election-namespace") == NAMESPACE
    timeout = flag(prov, "timeout")
    assert timeout is not None and seconds(timeout) > seconds(path_wait)
    assert prov["livenessProbe"]["httpGet"]["path"] == "/healthz/leader-election"

    probe = container(deploy, "liveness-probe")
    assert probe["image"] == "registry.k8s.io/sig-storage/livenessprobe:v2.19.0"
    assert flag(probe, "csi-address") == "/csi/csi.sock"
    health_port = int(flag(probe, "http-endpoint").lstrip(":"))
    healthz = next(p for p in driver["ports"] if p["name"] == "healthz")
    assert healthz["containerPort"] == health_port
    assert driver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    check_startup_probe(driver)
    # All three share the socket directory.
    for c in spec["containers"]:
        assert mount(c, "socket-dir")["mountPath"] == "/csi"
    # The controller needs no privilege.
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_startup_timeout() -> None:
    release = chartlib.render({"driver": {"startupTimeout": "12m"}})
    for kind, name in (("DaemonSet", f"{FULL}-node"), ("Deployment", f"{FULL}-controller")):
        driver = container(release.one(kind, name), "mirrorfs")
        check_startup_probe(driver, 720)
        assert driver["startupProbe"]["failureThreshold"] == 144


def test_default_provisioner_timeout_is_path_wait_plus_30s() -> None:
    prov = container(render("defaults").one("Deployment", f"{FULL}-controller"), "csi-provisioner")
    assert flag(prov, "timeout") == "60s"
    prov = container(chartlib.render({"driver": {"pathWait": "2m"}}).one("Deployment", f"{FULL}-controller"), "csi-provisioner")
    assert flag(prov, "timeout") == "150s"
    prov = container(render("everything").one("Deployment", f"{FULL}-controller"), "csi-provisioner")
    assert flag(prov, "timeout") == "3m"
    assert prov["args"][-1] == "--worker-threads=20"


# --- node -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_node_plugin_mounts_where_kubelet_looks(scenario: str) -> None:
    values = SCENARIOS[scenario]
    kubelet = values.get("kubeletDir", "/var/lib/kubelet")
    state = values.get("stateDir", "/var/lib/mirrorfs-csi")
    ds = render(scenario).one("DaemonSet", f"{FULL}-node")
    spec = ds["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == f"{FULL}-node"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork"), "the node pod's network namespace must never change between releases"

    driver = container(ds, "mirrorfs")
    assert driver["args"][0] == "csi"
    assert flag(driver, "role") == "node"
    assert flag(driver, "endpoint") == "unix:///csi/csi.sock"
    assert flag(driver, "kubelet-dir") == kubelet
    assert flag(driver, "state-dir") == state
    # The node id comes from the downward API.
    assert flag(driver, "node-id") == "$(NODE_NAME)"
    node_name = next(e for e in driver["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    assert driver["securityContext"]["privileged"] is True
    for vol, host in (("pods-dir", f"{kubelet}/pods"), ("plugins-dir", f"{kubelet}/plugins")):
        m = mount(driver, vol)
        assert m["mountPath"] == host, "kubelet passes host paths: the container must see the same ones"
        assert m["mountPropagation"] == "Bidirectional"
        assert volume(spec, vol)["hostPath"]["path"] == host
    assert volume(spec, "socket-dir")["hostPath"] == {"path": f"{kubelet}/plugins/{DRIVER}", "type": "DirectoryOrCreate"}
    assert volume(spec, "registration-dir")["hostPath"]["path"] == f"{kubelet}/plugins_registry"
    assert volume(spec, "state-dir")["hostPath"] == {"path": state, "type": "DirectoryOrCreate"}
    assert mount(driver, "state-dir")["mountPath"] == state
    assert volume(spec, "fuse-device")["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    assert mount(driver, "fuse-device")["mountPath"] == "/dev/fuse"

    reg = container(ds, "node-driver-registrar")
    assert reg["image"] == "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0"
    assert flag(reg, "csi-address") == "/csi/csi.sock"
    assert flag(reg, "kubelet-registration-path") == f"{kubelet}/plugins/{DRIVER}/csi.sock"
    endpoint = flag(reg, "http-endpoint")
    assert endpoint is not None
    reg_port = next(p for p in reg["ports"] if p["name"] == "registrar")
    assert endpoint == f":{reg_port['containerPort']}"
    assert reg["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "registrar"}
    assert mount(reg, "registration-dir")["mountPath"] == "/registration"

    probe = container(ds, "liveness-probe")
    assert probe["image"] == "registry.k8s.io/sig-storage/livenessprobe:v2.19.0"
    healthz = next(p for p in driver["ports"] if p["name"] == "healthz")
    assert flag(probe, "http-endpoint") == f":{healthz['containerPort']}"
    assert driver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    check_startup_probe(driver)

    # The kubelet directory is a value: no default path may leak into a custom one.
    if kubelet != "/var/lib/kubelet":
        assert "/var/lib/kubelet" not in yaml.safe_dump(ds).replace(kubelet, "")


def test_node_disk_cache_is_off_by_default() -> None:
    ds = render("defaults").one("DaemonSet", f"{FULL}-node")
    driver = container(ds, "mirrorfs")
    assert flag(driver, "cache-root") is None and flag(driver, "cache-size") is None
    assert "cache-dir" not in [m["name"] for m in driver["volumeMounts"]]
    assert "cache-dir" not in [v["name"] for v in ds["spec"]["template"]["spec"]["volumes"]]


@pytest.mark.parametrize(
    ("cache", "root", "size"),
    [
        ({"enabled": True}, "/var/lib/mirrorfs/cache", "10GiB"),
        ({"enabled": True, "hostPath": "/mnt/nvme/mirrorfs-cache", "sizePerVolume": "50GiB"}, "/mnt/nvme/mirrorfs-cache", "50GiB"),
    ],
)
def test_node_disk_cache_enabled(cache: dict[str, Any], root: str, size: str) -> None:
    ds = chartlib.render({"node": {"cache": cache}}).one("DaemonSet", f"{FULL}-node")
    spec = ds["spec"]["template"]["spec"]
    driver = container(ds, "mirrorfs")
    assert flag(driver, "cache-root") == root
    assert flag(driver, "cache-size") == size
    # The driver checks --cache-root is a writable directory at start: the host directory is
    # created if missing and seen at the same path in the container.
    assert volume(spec, "cache-dir")["hostPath"] == {"path": root, "type": "DirectoryOrCreate"}
    m = mount(driver, "cache-dir")
    assert m["mountPath"] == root
    assert "mountPropagation" not in m and not m.get("readOnly")
    # Only the node plugin gets it.
    ctrl = container(chartlib.render({"node": {"cache": cache}}).one("Deployment", f"{FULL}-controller"), "mirrorfs")
    assert flag(ctrl, "cache-root") is None


def test_node_scheduling_values() -> None:
    ds = render("defaults").one("DaemonSet", f"{FULL}-node")
    spec = ds["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    ds = render("everything").one("DaemonSet", f"{FULL}-node")
    spec = ds["spec"]["template"]["spec"]
    # Helm merges maps with the defaults; null removes a default key.
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "mirrorfs.io/mirror-reader": "true"}
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"
    assert ds["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "storage"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(ds, "mirrorfs")["image"] == "registry.example/mirrorfs:1.2.3"
    ds = render("minimal").one("DaemonSet", f"{FULL}-node")
    spec = ds["spec"]["template"]["spec"]
    assert "tolerations" not in spec and "priorityClassName" not in spec and "nodeSelector" not in spec
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_image_tag_defaults_to_the_app_version() -> None:
    app_version = yaml.safe_load((chartlib.CHART / "Chart.yaml").read_text())["appVersion"]
    for kind, name in (("DaemonSet", f"{FULL}-node"), ("Deployment", f"{FULL}-controller")):
        obj = render("defaults").one(kind, name)
        assert container(obj, "mirrorfs")["image"] == f"mirrorfs/mirrorfs:{app_version}"


def test_resources_are_set_on_every_container() -> None:
    for scenario in SCENARIOS:
        for r in render(scenario).objects:
            if r.kind in k8s_checks.WORKLOADS:
                for c in r.obj["spec"]["template"]["spec"]["containers"]:
                    assert c["resources"]["requests"]["memory"], (scenario, r.name, c["name"])
                    assert c["resources"]["limits"]["memory"], (scenario, r.name, c["name"])


# --- RBAC -----------------------------------------------------------------------------------


PROVISIONER_RULES = {
    ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
    ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
    ("storage.k8s.io", "volumeattributesclasses"): {"get", "list", "watch"},
}


def rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rbac_is_least_privilege(scenario: str) -> None:
    release = render(scenario)
    for r in release.objects:
        if r.kind in {"Role", "ClusterRole"}:
            for rule in r.obj["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{r.kind}/{r.name} grants * in {field}"
    assert rules(release.one("ClusterRole", f"{FULL}-provisioner")) == PROVISIONER_RULES
    # Cluster-wide: no secrets. Namespaced: `get` on secrets, nothing else.
    for role in release.find("ClusterRole"):
        assert all(res != "secrets" for _, res in rules(role))
    secret_roles = {r.namespace: r.obj for r in release.objects if r.kind == "Role" and r.name == f"{FULL}-secrets"}
    for role in secret_roles.values():
        assert rules(role) == {("", "secrets"): {"get"}}
    values = SCENARIOS[scenario]
    expected = {NAMESPACE, *values.get("controller", {}).get("secretNamespaces", [])}
    if values.get("storageClass", {}).get("create") and values["storageClass"].get("secretNamespace"):
        expected.add(values["storageClass"]["secretNamespace"])
    assert set(secret_roles) == expected
    leader = release.one("Role", f"{FULL}-leader-election")
    assert rules(leader) == {("coordination.k8s.io", "leases"): {"get", "watch", "list", "delete", "update", "create"}}
    # The node plugin's account is bound to nothing.
    for b in release.objects:
        if b.kind in {"RoleBinding", "ClusterRoleBinding"}:
            assert all(s["name"] != f"{FULL}-node" for s in b.obj["subjects"])


def test_secret_roles_in_other_namespaces_bind_the_controller_of_the_release_namespace() -> None:
    release = render("everything")
    for b in release.objects:
        if b.kind == "RoleBinding" and b.name == f"{FULL}-secrets":
            assert b.obj["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-controller", "namespace": NAMESPACE}]


# --- metrics --------------------------------------------------------------------------------


def test_metrics_are_off_by_default() -> None:
    release = render("defaults")
    assert release.find("Service") == [] and release.find("ServiceMonitor") == []
    for kind, name in (("DaemonSet", f"{FULL}-node"), ("Deployment", f"{FULL}-controller")):
        assert flag(container(release.one(kind, name), "mirrorfs"), "metrics-addr") is None


def test_metrics_services_and_service_monitor() -> None:
    release = render("everything")
    for kind, name, component in (
        ("DaemonSet", f"{FULL}-node", "node"),
        ("Deployment", f"{FULL}-controller", "controller"),
    ):
        driver = container(release.one(kind, name), "mirrorfs")
        assert flag(driver, "metrics-addr") == "0.0.0.0:9810"
        assert {"name": "metrics", "containerPort": 9810, "protocol": "TCP"} in driver["ports"]
        svc = release.one("Service", f"{FULL}-{component}-metrics")
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = release.one("ServiceMonitor", FULL)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    only_services = chartlib.render({"driver": {"metrics": {"enabled": True}}})
    assert len(only_services.find("Service")) == 2 and only_services.find("ServiceMonitor") == []


# --- StorageClass and Secret ----------------------------------------------------------------

# StorageClass parameters of the driver's contract, and the reserved keys external-provisioner
# consumes (any other csi.storage.k8s.io/ key fails provisioning).
DRIVER_PARAMETERS = {"volume", "metaAddress", "subdir", "pathPattern", "lenient"}
SECRET_PARAMETERS = {
    f"csi.storage.k8s.io/{op}-secret-{part}" for op in ("provisioner", "node-stage") for part in ("name", "namespace")
}
SECRET_KEYS = {"token", "mirrorAccessKeyId", "mirrorSecretAccessKey", "sourceAccessKeyId", "sourceSecretAccessKey"}


def check_storage_class(sc: dict[str, Any]) -> None:
    params = sc["parameters"]
    assert sc["provisioner"] == DRIVER
    assert set(params) <= DRIVER_PARAMETERS | SECRET_PARAMETERS, set(params) - DRIVER_PARAMETERS - SECRET_PARAMETERS
    assert SECRET_PARAMETERS <= set(params)
    assert params["volume"] and params["metaAddress"]
    assert not ("subdir" in params and "pathPattern" in params)
    assert params.get("lenient", "false") in {"true", "false"}
    assert sc["allowVolumeExpansion"] is False


def test_storage_class_and_secret_are_off_by_default() -> None:
    release = render("defaults")
    assert release.find("StorageClass") == [] and release.find("Secret") == []


def test_storage_class_with_a_fixed_directory_and_its_secret() -> None:
    release = render("everything")
    sc = release.one("StorageClass", "mirrorfs-datasets")
    check_storage_class(sc)
    assert sc["parameters"]["subdir"] == "imagenet/train"
    assert "lenient" not in sc["parameters"]
    assert sc["parameters"]["csi.storage.k8s.io/node-stage-secret-namespace"] == "mirrorfs-secrets"
    secret = release.one("Secret", "datasets-token")
    assert secret["metadata"]["namespace"] == "mirrorfs-secrets"
    assert set(secret["stringData"]) == SECRET_KEYS
    assert secret["stringData"]["token"] == "t0ken"


def test_storage_class_with_a_pattern() -> None:
    sc = render("pattern").one("StorageClass", "mirrorfs")
    check_storage_class(sc)
    assert sc["parameters"]["pathPattern"] == "${pvc.metadata.namespace}/${pvc.metadata.name}"
    assert sc["parameters"]["lenient"] == "true"
    assert sc["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert sc["reclaimPolicy"] == "Retain" and sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["parameters"]["csi.storage.k8s.io/provisioner-secret-namespace"] == "tenants"


# --- meta service ---------------------------------------------------------------------------


def test_meta_service_is_off_by_default() -> None:
    assert render("defaults").find("StatefulSet") == []


def test_meta_service_embedded() -> None:
    release = render("everything")
    sts = release.one("StatefulSet", f"{FULL}-meta")
    meta = container(sts, "meta")
    assert meta["args"][:2] == ["meta", "serve"]
    assert flag(meta, "mirror-of") == "http://meta.source.example:7400"
    assert flag(meta, "engine") == "embedded"
    assert flag(meta, "data-dir") == "/data"
    assert flag(meta, "listen") == "0.0.0.0:7400"
    assert flag(meta, "metrics-listen") == "0.0.0.0:7401"
    assert flag(meta, "admin-token-file") is None  # generated in the data volume
    # Large numbers must not turn into floats (1e+06) on the way through the template.
    assert flag(meta, "changelog-retention") == "1000000"
    token = volume(sts["spec"]["template"]["spec"], "mirror-token")["secret"]
    assert token == {"secretName": "source-replication", "items": [{"key": "replication.token", "path": "token"}]}
    assert flag(meta, "mirror-token-file") == "/etc/mirrorfs/mirror-token/token"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    svc = release.one("Service", f"{FULL}-meta")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 7400, "metrics": 7401}
    assert sts["spec"]["serviceName"] == f"{FULL}-meta"


def test_meta_service_on_etcd() -> None:
    sts = render("meta-etcd").one("StatefulSet", f"{FULL}-meta")
    meta = container(sts, "meta")
    assert sts["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in sts["spec"]
    assert volume(sts["spec"]["template"]["spec"], "data") == {"name": "data", "emptyDir": {}}
    assert flag(meta, "engine").startswith("etcd://")
    assert flag(meta, "admin-token-file") == "/etc/mirrorfs/admin-token/token"
    assert meta["args"][-1] == "--etcd-ca-file=/etc/etcd-tls/ca.crt"
    assert mount(meta, "etcd-tls")["mountPath"] == "/etc/etcd-tls"
