"""Fixtures for the container tests: buildah with a storage of its own, the locally made base image
(cached across runs), the agent image built from device_agent/deploy/Dockerfile (once per session,
removed at its end), and the compressed digits model it serves (tests/agent's ``digits_dir``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent.conftest import digits_dir  # noqa: F401 - the `edgekit compress --int8` output the image serves
from tests.container.buildah import Buildah, base_image, build_agent_image, build_context, cache_dir, prune_stale_agent_images
from tests.services import need


@dataclass(frozen=True)
class AgentImage:
    tag: str
    base: str
    build_seconds: float


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    need(shutil.which("buildah"), "buildah is not installed", "run 'make test-debs' (Debian package buildah)")
    need(shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").is_file(), "debootstrap is not installed",
         "run 'make test-debs' (Debian package debootstrap)")
    need(os.geteuid() == 0, "the container tests need root (debootstrap, buildah's chroot isolation)", "run them as root, as CI does")
    b = Buildah(cache_dir())
    prune_stale_agent_images(b)
    return b


@pytest.fixture(scope="session")
def agent_image(buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentImage]:
    """The agent image on the local Debian base; deleted after the session (the base stays cached)."""
    base = base_image(buildah)
    context = build_context(tmp_path_factory.mktemp("container") / "context")
    tag, seconds = build_agent_image(buildah, base, context)
    yield AgentImage(tag, base, seconds)
    buildah("rmi", "--force", tag)
