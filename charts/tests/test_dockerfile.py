"""What can be checked of the Dockerfile without a container engine: its stages and base images,
that the Debian packages it installs exist in the base image's release and hold the files it
relies on, that it copies the binary `cargo build --release -p mirrorfs` produces, and that the
entrypoint's and the chart's subcommands exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chartlib import REPO
from conftest import help_text

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; line continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert m, f"cannot read {line!r}"
            stages.append(Stage(m.group(1), m.group(2)))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def apt_packages(stage: Stage) -> list[str]:
    packages: list[str] = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


def json_array(instruction: str) -> list[str]:
    value = json.loads(instruction)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), "use the exec (JSON) form"
    return value


def workspace() -> dict:
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)


def test_two_stages_rust_builder_and_debian_runtime(stages: list[Stage]) -> None:
    assert len(stages) == 2
    builder, runtime = stages
    assert builder.name == "builder"
    m = re.fullmatch(r"rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)", builder.base)
    assert m, f"the builder should be an official rust image pinned to a version: {builder.base}"
    assert runtime.base == "debian:bookworm-slim"
    # Same Debian release in both stages: the binary links against the builder's glibc.
    assert m.group(3) == "bookworm"
    rust_version = re.search(r'(?m)^rust-version\s*=\s*"(\d+)\.(\d+)"', (REPO / "Cargo.toml").read_text())
    assert rust_version, "Cargo.toml has no rust-version"
    assert (int(m.group(1)), int(m.group(2))) >= (int(rust_version.group(1)), int(rust_version.group(2)))


def test_runtime_installs_fuse_and_certificates(stages: list[Stage]) -> None:
    packages = apt_packages(stages[1])
    assert {"fuse3", "ca-certificates"} <= set(packages)
    assert any("rm -rf /var/lib/apt/lists" in run for run in stages[1].all("RUN")), "keep the image small"


def run_apt(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.fail(f"{args[0]} is not installed: these checks need Debian's apt tools")


@pytest.mark.parametrize("stage_index", [0, 1], ids=["builder", "runtime"])
def test_every_apt_package_exists_in_debian(stages: list[Stage], stage_index: int) -> None:
    release = open("/etc/os-release").read()
    if "VERSION_CODENAME=bookworm" not in release:
        pytest.fail("the package check answers for this machine's Debian release, which is not bookworm")
    for package in apt_packages(stages[stage_index]):
        done = run_apt("apt-cache", "show", "--no-all-versions", package)
        assert done.returncode == 0 and f"Package: {package}" in done.stdout, (
            f"apt-cache show {package} failed (run apt-get update first if the package lists are empty): {done.stderr}"
        )


def package_files(package: str) -> set[str]:
    """The files of a Debian package, from its .deb (apt-get download; needs no root)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"apt-get download {package}: {done.stderr}"
        (deb,) = Path(tmp).glob("*.deb")
        listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].lstrip(".") for line in listing.splitlines() if line}


def test_entrypoint_files_come_from_the_installed_packages(stages: list[Stage]) -> None:
    runtime = stages[1]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    argv = json_array(entrypoint)
    copied = {shlex.split(c)[-1] for c in runtime.all("COPY")}
    packages = apt_packages(runtime)
    for path in argv:
        if not path.startswith("/"):
            continue
        if path in copied:
            continue
        owners = [p for p in packages if path in package_files(p)]
        assert owners, f"{path} is neither copied nor shipped by {packages}"
    # Non-root FUSE mounts go through fusermount3 (/bin is /usr/bin on bookworm: usrmerge).
    assert {"/bin/fusermount3", "/usr/bin/fusermount3"} & package_files("fuse3")


def test_it_copies_what_cargo_build_release_produces(stages: list[Stage]) -> None:
    builder, runtime = stages
    (workdir,) = builder.all("WORKDIR")
    assert "COPY . ." in [f"COPY {c}" for c in builder.all("COPY")], "the whole workspace is the build input"
    builds = [r for r in builder.all("RUN") if "cargo build" in r]
    assert len(builds) == 1
    words = shlex.split(builds[0])
    assert {"--release", "--locked"} <= set(words) and words[words.index("-p") + 1] == "mirrorfs"

    meta = workspace()
    root = Path(meta["workspace_root"])
    target = Path(meta["target_directory"])
    package = next(p for p in meta["packages"] if p["name"] == "mirrorfs")
    bins = [t["name"] for t in package["targets"] if "bin" in t["kind"]]
    assert bins == ["mirrorfs"]
    # Inside the image the workspace sits at WORKDIR and the target directory at its default place.
    relative_target = target.relative_to(root) if str(target).startswith(str(root)) else Path("target")
    expected = f"{workdir.rstrip('/')}/{relative_target}/release/{bins[0]}"
    copies = [shlex.split(c) for c in runtime.all("COPY")]
    from_builder = [c for c in copies if c[0] == "--from=builder"]
    assert [c[1] for c in from_builder] == [expected]
    destination = from_builder[0][2]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert destination in json_array(entrypoint)


def test_dockerignore_keeps_outputs_out_and_sources_in() -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "target" in patterns and ".git" in patterns
    meta = workspace()
    root = Path(meta["workspace_root"])
    members = [str(Path(p["manifest_path"]).parent.relative_to(root)) for p in meta["packages"]]
    needed = ["Cargo.toml", "Cargo.lock", "proto", *members]
    for path in needed:
        assert path not in patterns, f".dockerignore drops {path}, which the build needs"
        assert (REPO / path).exists(), f"{path} is missing from the workspace"


def test_entrypoint_and_chart_subcommands_exist(stages: list[Stage], mirrorfs_bin: Path) -> None:
    runtime = stages[1]
    argv = json_array(runtime.all("ENTRYPOINT")[0])
    cmd = json_array(runtime.all("CMD")[0])
    assert argv[-1] == "/usr/local/bin/mirrorfs" and cmd == ["csi"]
    assert "Usage: mirrorfs csi" in help_text(mirrorfs_bin, *cmd)
    # The chart's other roles.
    assert "Usage: mirrorfs meta serve" in help_text(mirrorfs_bin, "meta", "serve")
    # The node plugin starts mount processes with the same binary.
    assert "Usage: mirrorfs mount" in help_text(mirrorfs_bin, "mount")
    assert "Usage: mirrorfs umount" in help_text(mirrorfs_bin, "umount")
