"""A real hub process per test module, on a loopback port with a token."""

import json
import os
import pathlib
import subprocess
import tempfile
from typing import Iterator, NamedTuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TOKEN = "py-test-token"


def switchboard_bin() -> str:
    """The `switchboard` binary: $SWITCHBOARD_BIN, or the workspace's debug build (built if missing)."""
    explicit = os.environ.get("SWITCHBOARD_BIN")
    if explicit:
        return explicit
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / "switchboard"
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "-p", "switchboard", "--bin", "switchboard"],
            cwd=REPO,
            check=True,
        )
    return str(path)


class Hub(NamedTuple):
    addr: str
    token: str
    env: dict  # for CLI commands against this hub
    bin: str


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    binary = switchboard_bin()
    with tempfile.TemporaryDirectory() as runtime:
        env = dict(os.environ, SWITCHBOARD_TOKEN=TOKEN, SWITCHBOARD_RUNTIME_DIR=runtime)
        proc = subprocess.Popen(
            [binary, "hub", "--listen", "127.0.0.1:0", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, "the hub exited before its ready line"
            ready = json.loads(line)
            assert ready["event"] == "ready"
            yield Hub(addr=ready["addr"], token=TOKEN, env=env, bin=binary)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
