"""A hub started with ``--policy FILE`` (docs/POLICY.md): what the policy
denies raises :class:`switchboard.Forbidden` with the hub's message, and the
connection stays usable."""

import json
import os
import subprocess
import tempfile
from typing import Iterator, NamedTuple

import pytest

import switchboard
from switchboard import Forbidden

from conftest import TOKEN, switchboard_bin

WAIT = 10
LIMITED_TOKEN = "py-limited-token"


class PolicyHub(NamedTuple):
    addr: str


def _policy(binary: str) -> str:
    digest = subprocess.run(
        [binary, "policy", "hash-token"],
        input=LIMITED_TOKEN + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"""
owner = "all"

[[principal]]
name = "limited"
token_sha256 = ["{digest}"]
ids = ["py-lim-*"]
publish = {{ allow = ["ok.>"] }}
subscribe = {{ allow = ["ok.>"] }}
send = ["py-owner-*"]
"""


@pytest.fixture(scope="module")
def policy_hub() -> Iterator[PolicyHub]:
    binary = switchboard_bin()
    with tempfile.TemporaryDirectory() as runtime:
        path = os.path.join(runtime, "policy.toml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_policy(binary))
        env = dict(os.environ, SWITCHBOARD_TOKEN=TOKEN, SWITCHBOARD_RUNTIME_DIR=runtime)
        proc = subprocess.Popen(
            [binary, "hub", "--listen", "127.0.0.1:0", "--json", "--policy", path],
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
            yield PolicyHub(addr=ready["addr"])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_denied_publish_raises_forbidden(policy_hub):
    async with switchboard.connect("py-lim-pub", addr=policy_hub.addr, token=LIMITED_TOKEN) as c:
        await c.publish("ok.fine", b"allowed")
        with pytest.raises(Forbidden) as e:
            await c.publish("secret.x", b"denied")
        assert str(e.value) == "forbidden: principal 'limited' may not publish to 'secret.x'"
        assert e.value.code == "FORBIDDEN"
        with pytest.raises(Forbidden) as e:
            await c.subscribe("secret.>")
        assert "may not subscribe" in str(e.value)
        await c.publish("ok.after", b"the connection stays up")


async def test_denied_request_raises_forbidden(policy_hub):
    async with switchboard.connect(
        "py-owner-srv", addr=policy_hub.addr, token=TOKEN
    ) as owner, switchboard.connect("py-lim-req", addr=policy_hub.addr, token=LIMITED_TOKEN) as c:
        await owner.serve(lambda req: b"hi " + req.payload)
        await owner.serve(lambda req: b"svc", service="other-svc")
        assert await c.request("py-owner-srv", b"me", timeout=WAIT) == b"hi me"
        with pytest.raises(Forbidden) as e:
            await c.request("py-lim-req", b"x", timeout=WAIT)
        assert "principal 'limited' may not" in str(e.value) and "py-lim-req" in str(e.value)
        with pytest.raises(Forbidden):
            await c.request_service("other-svc", b"x", timeout=WAIT)
        with pytest.raises(Forbidden):
            await c.send("py-lim-req", b"x")
        assert await c.request("py-owner-srv", b"again", timeout=WAIT) == b"hi again"


async def test_denied_client_id_is_refused(policy_hub):
    with pytest.raises(Forbidden) as e:
        await switchboard.connect("not-mine", addr=policy_hub.addr, token=LIMITED_TOKEN)
    assert "may not register client id 'not-mine'" in str(e.value)
