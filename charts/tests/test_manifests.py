"""manifests/ against the chart, the examples against the API and the driver's contract, and every
flag and environment variable the chart hands to `mirrorfs` against the built binary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import chartlib
import k8s_checks
from chartlib import DRIVER, EXAMPLES, MANIFESTS, NAMESPACE, REPO
from conftest import SCENARIOS, help_text
from test_chart import DRIVER_PARAMETERS, SECRET_KEYS, check_storage_class


def test_manifests_match_the_chart() -> None:
    current = (MANIFESTS / "mirrorfs-csi.yaml").read_text()
    assert current == chartlib.manifest_text(), (
        "manifests/mirrorfs-csi.yaml differs from the chart's default rendering: run scripts/render-manifests.sh"
    )


def test_the_plain_manifests_are_valid_on_their_own() -> None:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / "mirrorfs-csi.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    kinds = {d["kind"] for d in docs}
    assert {"CSIDriver", "Deployment", "DaemonSet", "ClusterRole", "ServiceAccount"} <= kinds
    assert k8s_checks.check_all(docs, NAMESPACE) == []


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.mark.parametrize("name", ["dynamic.yaml", "static.yaml"])
def test_examples_are_valid_objects(name: str) -> None:
    docs = load_example(name)
    assert k8s_checks.check_all(docs, None) == []
    for pod in (d for d in docs if d["kind"] == "Pod"):
        claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert claims, "the example pod uses no claim"
        for claim_name, vol in claims.items():
            assert vol["persistentVolumeClaim"]["readOnly"] is True
            claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim_name)
            assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
            assert claim["metadata"]["namespace"] == pod["metadata"]["namespace"]
    for secret in (d for d in docs if d["kind"] == "Secret"):
        # The provisioner reads Secrets in the driver's namespace only (by default).
        assert secret["metadata"]["namespace"] == NAMESPACE
        assert set(secret["stringData"]) <= SECRET_KEYS and "token" in secret["stringData"]


def test_dynamic_example_follows_the_contract() -> None:
    docs = load_example("dynamic.yaml")
    sc = next(d for d in docs if d["kind"] == "StorageClass")
    check_storage_class(sc)
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert sc["parameters"]["csi.storage.k8s.io/provisioner-secret-name"] == secret["metadata"]["name"]
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == sc["metadata"]["name"]


def test_static_example_follows_the_contract() -> None:
    docs = load_example("static.yaml")
    pv = next(d for d in docs if d["kind"] == "PersistentVolume")
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    secret = next(d for d in docs if d["kind"] == "Secret")
    csi = pv["spec"]["csi"]
    assert csi["driver"] == DRIVER
    assert set(csi["volumeAttributes"]) <= DRIVER_PARAMETERS - {"pathPattern"}
    assert csi["volumeAttributes"]["volume"] and csi["volumeAttributes"]["metaAddress"]
    assert len(csi["volumeHandle"].encode()) <= 128, "CSI volume ids are at most 128 bytes"
    assert csi["nodeStageSecretRef"] == {"name": secret["metadata"]["name"], "namespace": secret["metadata"]["namespace"]}
    assert claim["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"]}
    assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""


def test_missing_directory_example_shows_both_events() -> None:
    text = (EXAMPLES / "missing-directory.txt").read_text()
    assert "ProvisioningFailed" in text and "FailedMount" in text
    assert "kubectl describe pvc" in text and "kubectl describe pod" in text


# --- flags against the binary ---------------------------------------------------------------


def mirrorfs_containers(release: chartlib.Release, image_repo: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for r in release.objects:
        if r.kind in k8s_checks.WORKLOADS:
            for c in r.obj["spec"]["template"]["spec"]["containers"]:
                if c["image"].startswith(image_repo + ":"):
                    out.append((f"{r.kind}/{r.name}/{c['name']}", c))
    return out


def split_args(args: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Subcommand words (before the first flag) and (flag, value) pairs."""
    words: list[str] = []
    flags: list[tuple[str, str | None]] = []
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags.append((name, value if "=" in arg else None))
        elif flags:
            raise AssertionError(f"argument {arg!r} after flags: the chart passes --flag=value only")
        else:
            words.append(arg)
    return words, flags


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?m)^\s+(?:-\w, )?--([a-z0-9-]+)", text))


def help_envs(text: str) -> set[str]:
    return set(re.findall(r"\[env: ([A-Z0-9_]+)=", text))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_flag_the_chart_passes_exists_in_the_binary(scenario: str, mirrorfs_bin: Path) -> None:
    values = SCENARIOS[scenario]
    repo = values.get("image", {}).get("repository", "mirrorfs/mirrorfs")
    found = mirrorfs_containers(chartlib.render(values), repo)
    assert found, "no container runs the mirrorfs image"
    main_rs = (REPO / "cli" / "src" / "main.rs").read_text()
    for where, c in found:
        words, flags = split_args(c["args"])
        text = help_text(mirrorfs_bin, *words)
        known = help_flags(text)
        unknown = [f for f, _ in flags if f not in known]
        assert unknown == [], f"{where}: mirrorfs {' '.join(words)} has no flag(s) {unknown}"
        # The values parse: clap runs each flag's parser before it prints --help. $(VAR) is
        # expanded by kubelet, so give it a plausible value here.
        concrete = [re.sub(r"\$\([A-Z_]+\)", "node-1", a) for a in c["args"]]
        done = subprocess.run([mirrorfs_bin, *concrete, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{where}: mirrorfs refuses the chart's arguments: {done.stderr}"
        envs = help_envs(text)
        for env in c.get("env", []):
            name = env["name"]
            referenced = any(f"$({name})" in a for a in c["args"])
            logging = name == "MIRRORFS_LOG" and '"MIRRORFS_LOG"' in main_rs
            assert name in envs or referenced or logging, f"{where}: mirrorfs reads no environment variable {name}"


def test_flag_check_notices_a_wrong_flag(mirrorfs_bin: Path) -> None:
    text = help_text(mirrorfs_bin, "csi")
    assert "endpoint" in help_flags(text)
    assert "no-such-flag" not in help_flags(text)
    done = subprocess.run([mirrorfs_bin, "csi", "--path-wait=soon", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "path-wait" in done.stderr


@pytest.mark.parametrize("component", ["controller", "node"])
def test_the_driver_starts_with_the_charts_arguments(component: str, mirrorfs_bin: Path, tmp_path: Path) -> None:
    """`mirrorfs csi` with the rendered arguments passes its start-up checks and serves its
    socket. Only what would touch the host is redirected into a temporary directory: the socket,
    the state directory, the metrics port (an ephemeral one)."""
    release = chartlib.render(SCENARIOS["everything"])
    kind = "Deployment" if component == "controller" else "DaemonSet"
    obj = release.one(kind, f"{chartlib.RELEASE}-{component}")
    (driver,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "mirrorfs"]
    socket = tmp_path / "csi.sock"
    redirect = {
        "endpoint": f"unix://{socket}",
        "state-dir": str(tmp_path / "state"),
        "cache-root": str(tmp_path),
        "metrics-addr": "127.0.0.1:0",
    }
    args = []
    for arg in driver["args"]:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        args.append(f"--{name}={redirect[name]}" if name in redirect else arg.replace("$(NODE_NAME)", "node-1"))
    env = {"PATH": os.environ.get("PATH", ""), "MIRRORFS_LOG": "info"}
    proc = subprocess.Popen([mirrorfs_bin, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None:
                pytest.fail(f"mirrorfs {' '.join(args)} exited with {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the driver did not create its socket within 30 s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"the driver did not stop cleanly on SIGTERM: {proc.stderr.read()}"
