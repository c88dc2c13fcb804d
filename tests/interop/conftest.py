"""Fixtures for the interoperability tests: a Node.js install of ``ali-ons`` to talk to.

The tests in this directory need ``node`` and ``npm`` on PATH (or in $NODE / $NPM). They
are never skipped: a missing tool is a test failure with a message saying what to install.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
ALI_ONS_VERSION = "3.12.0"  # keep in step with node/package.json
NPM_INSTALL_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class NodeEnv:
    """Where the Node.js side of the interop tests lives."""

    node: str  # the node executable
    npm: str  # the npm executable
    directory: Path  # tests/interop/node (holds package.json and node_modules)
    script: Path  # tests/interop/node/ons_echo_client.js
    ali_ons_version: str  # the version found in node_modules/ali-ons


def _find_tool(name: str) -> str:
    path = os.environ.get(name.upper()) or shutil.which(name)
    if not path:
        pytest.fail(
            f"the interop tests need `{name}` (Node.js >= 8 with npm) on PATH, or its path in "
            f"${name.upper()}; it was not found. Install Node.js, or deselect these tests "
            "with `-m 'not interop'`.",
            pytrace=False,
        )
    return path


def _installed_version() -> str | None:
    manifest = NODE_DIR / "node_modules" / "ali-ons" / "package.json"
    try:
        version = json.loads(manifest.read_text("utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if isinstance(version, str) else None


@pytest.fixture(scope="session")
def ali_ons() -> NodeEnv:
    """``node``, ``npm`` and tests/interop/node with ``ali-ons`` installed in it.

    Runs ``npm install --no-audit --no-fund`` there when node_modules/ali-ons is missing
    (or holds another version than the pinned one). An flock on package.json keeps
    concurrent test sessions from installing at the same time.
    """
    node = _find_tool("node")
    npm = _find_tool("npm")
    with open(NODE_DIR / "package.json", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed_version() != ALI_ONS_VERSION:
                try:
                    done = subprocess.run(
                        [npm, "install", "--no-audit", "--no-fund"],
                        cwd=NODE_DIR,
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        text=True,
                        timeout=NPM_INSTALL_TIMEOUT,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    pytest.fail(
                        f"`npm install` in {NODE_DIR} took more than {NPM_INSTALL_TIMEOUT} s",
                        pytrace=False,
                    )
                if done.returncode != 0:
                    pytest.fail(
                        f"`npm install` in {NODE_DIR} failed with status {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}",
                        pytrace=False,
                    )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    version = _installed_version()
    if version != ALI_ONS_VERSION:
        pytest.fail(
            f"npm install left ali-ons {version!r} in {NODE_DIR / 'node_modules'}, "
            f"expected {ALI_ONS_VERSION}",
            pytrace=False,
        )
    return NodeEnv(
        node=node,
        npm=npm,
        directory=NODE_DIR,
        script=NODE_DIR / "ons_echo_client.js",
        ali_ons_version=version,
    )
