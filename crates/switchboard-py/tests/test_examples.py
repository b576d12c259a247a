"""The examples in examples/python run against the test hub and print what
their comments say."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples" / "python"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("walkthrough.py", ["HELLO", 'orders.eu.created {"id":1}', "login.token abc123"]),
        ("request_reply.py", ["b'HELLO'", "b'HI' b'yes'", "orders.eu py-example b'{}'", "b'fast'"]),
    ],
)
def test_example(hub, name, expected):
    env = dict(os.environ, SWITCHBOARD_ADDR=hub.addr, SWITCHBOARD_TOKEN=hub.token)
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected
