"""Shared fixtures: value sets the chart is rendered with, and the built mirrorfs binary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Value sets rendered, linted and validated; "defaults" is what manifests/ holds.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # Every optional part on, every list and map filled, a non-standard kubelet directory.
    "everything": {
        "image": {"repository": "registry.example/mirrorfs", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "sidecars": {"provisioner": {"extraArgs": ["--worker-threads=20"]}},
        "driver": {
            "logLevel": "debug",
            "pathWait": "90s",
            "maxLag": "10m",
            "region": "eu-west-1",
            "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        },
        "kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet",
        "stateDir": "/var/lib/mirrorfs-csi-state",
        "controller": {
            "replicas": 2,
            "provisionerTimeout": "3m",
            "secretNamespaces": ["team-a", "team-b"],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
                            },
                        }
                    ]
                }
            },
            "podAnnotations": {"example.com/team": "storage"},
        },
        "node": {
            "nodeSelector": {"mirrorfs.io/mirror-reader": "true"},
            "podAnnotations": {"example.com/team": "storage"},
            "maxUnavailable": "20%",
            "cache": {"enabled": True, "hostPath": "/mnt/nvme/mirrorfs-cache", "sizePerVolume": "50GiB"},
        },
        "storageClass": {
            "create": True,
            "name": "mirrorfs-datasets",
            "volume": "datasets",
            "metaAddress": "http://mirrorfs-meta.mirrorfs:7400",
            "subdir": "imagenet/train",
            "secretName": "datasets-token",
            "secretNamespace": "mirrorfs-secrets",
        },
        "secret": {
            "create": True,
            "name": "datasets-token",
            "token": "t0ken",
            "mirrorAccessKeyId": "AKMIRROR",
            "mirrorSecretAccessKey": "mirror-secret",
            "sourceAccessKeyId": "AKSOURCE",
            "sourceSecretAccessKey": "source-secret",
        },
        "meta": {
            "enabled": True,
            "mirrorOf": "http://meta.source.example:7400",
            "mirrorTokenSecret": {"name": "source-replication", "key": "replication.token"},
            "storage": {"size": "50Gi", "storageClassName": "fast"},
            "mirrorCheckInterval": "30m",
            "reconcileInterval": "1d",
        },
    },
    # Templated directories, lenient access modes, delayed binding, secrets elsewhere.
    "pattern": {
        "storageClass": {
            "create": True,
            "volume": "models",
            "metaAddress": "https://meta.mirror.example:7400",
            "pathPattern": "${pvc.metadata.namespace}/${pvc.metadata.name}",
            "lenient": True,
            "isDefault": True,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer",
            "secretNamespace": "tenants",
        },
    },
    # The meta service on etcd: several replicas, an admin token from a Secret, extra flags.
    "meta-etcd": {
        "meta": {
            "enabled": True,
            "mirrorOf": "http://meta.source.example:7400",
            "mirrorTokenSecret": {"name": "source-replication", "key": "token"},
            "adminTokenSecret": {"name": "meta-admin", "key": "token"},
            "engine": "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379",
            "replicas": 3,
            "extraArgs": ["--etcd-ca-file=/etc/etcd-tls/ca.crt"],
            "extraVolumes": [{"name": "etcd-tls", "secret": {"secretName": "etcd-client-tls"}}],
            "extraVolumeMounts": [{"name": "etcd-tls", "mountPath": "/etc/etcd-tls", "readOnly": True}],
        },
    },
    # Everything optional off: no CSIDriver (managed elsewhere), no priority classes, no selectors.
    "minimal": {
        "csiDriver": {"create": False},
        "controller": {"priorityClassName": "", "nodeSelector": None},
        "node": {"priorityClassName": "", "nodeSelector": None, "tolerations": [], "updateStrategy": "OnDelete"},
    },
}


@pytest.fixture(scope="session")
def mirrorfs_bin() -> Path:
    """The built `mirrorfs` binary (run.sh builds it and sets MIRRORFS_BIN)."""
    path = os.environ.get("MIRRORFS_BIN")
    if not path:
        pytest.fail("MIRRORFS_BIN is not set: run the chart tests through charts/tests/run.sh")
    binary = Path(path)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"MIRRORFS_BIN={binary} is not an executable: cargo build --release -p mirrorfs")
    return binary


def help_text(binary: Path, *subcommand: str) -> str:
    """`mirrorfs <subcommand> --help`, failing the test with the binary's stderr if it fails."""
    done = subprocess.run([binary, *subcommand, "--help"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"mirrorfs {' '.join(subcommand)} --help failed ({done.returncode}): {done.stderr}")
    return done.stdout
