"""Interop with a non-Python client: the ``switchboard`` CLI.

The CLI is a Rust program on the same client (``switchboard::Client``, the
facade crate), so these tests are the Rust client on the other end. With
test_client.py's CLI tests (``request`` to a Python server, a Python request
to ``serve --echo``) every direction is covered:

- request/reply: CLI ``request`` → Python ``serve``; Python ``request`` → CLI ``serve``
- pub/sub: CLI ``pub`` → Python ``subscribe``; Python ``publish`` → CLI ``sub``
- direct messages: CLI ``send`` → Python ``messages()``; Python ``send`` → CLI ``listen``
- kv: CLI ``kv set`` → Python ``kv.watch``; Python ``kv.set`` → CLI ``kv get``
"""

import asyncio
import json
import subprocess

import switchboard

WAIT = 10


def connect(hub, client_id):
    return switchboard.connect(client_id, addr=hub.addr, token=hub.token)


async def cli(hub, *args, stdout=subprocess.PIPE):
    return await asyncio.create_subprocess_exec(
        hub.bin, "--addr", hub.addr, "--json", *args,
        env=hub.env, stdout=stdout, stderr=subprocess.PIPE,
    )


async def run_cli(hub, *args) -> str:
    proc = await cli(hub, *args)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err
    return out.decode()


async def ready(proc) -> None:
    line = await asyncio.wait_for(proc.stderr.readline(), WAIT)
    assert json.loads(line)["event"] == "ready", line


async def test_cli_publish_to_python_subscriber(hub):
    async with connect(hub, "py-interop-sub") as client:
        sub = await client.subscribe("interop.cli.>")
        await run_cli(hub, "pub", "interop.cli.one", "from rust")
        msg = await asyncio.wait_for(sub.__anext__(), WAIT)
        assert (msg.topic, msg.payload, msg.kind) == ("interop.cli.one", b"from rust", "publish")
        assert msg.sender.startswith("cli-")


async def test_python_publish_to_cli_subscriber(hub):
    proc = await cli(hub, "sub", "interop.py.>", "--count", "1")
    try:
        await ready(proc)
        async with connect(hub, "py-interop-pub") as client:
            await client.publish("interop.py.two", "from python")
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, err
        got = json.loads(out.decode().splitlines()[0])
        assert got == {
            "kind": "publish",
            "from": "py-interop-pub",
            "topic": "interop.py.two",
            "payload": "from python",
        }
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_direct_messages_both_ways(hub):
    async with connect(hub, "py-interop-inbox") as client:
        inbox = await client.messages()
        await run_cli(hub, "send", "--to", "py-interop-inbox", "hello python")
        msg = await asyncio.wait_for(inbox.__anext__(), WAIT)
        assert (msg.kind, msg.payload) == ("direct", b"hello python")

        proc = await cli(hub, "listen", "--id", "cli-interop-listen", "--count", "1")
        try:
            await ready(proc)
            await client.send("cli-interop-listen", b"hello rust")
            out, err = await asyncio.wait_for(proc.communicate(), WAIT)
            assert proc.returncode == 0, err
            got = json.loads(out.decode().splitlines()[0])
            assert (got["kind"], got["from"], got["payload"]) == (
                "direct", "py-interop-inbox", "hello rust",
            )
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_kv_both_ways(hub):
    async with connect(hub, "py-interop-kv") as client:
        watch = await client.kv.watch("interop.kv")
        await run_cli(hub, "kv", "set", "interop.kv", "by rust")
        event = await asyncio.wait_for(watch.__anext__(), WAIT)
        assert (event.value, event.deleted) == (b"by rust", False)
        await watch.close()
        await client.kv.set("interop.kv", "by python")
        out = await run_cli(hub, "kv", "get", "interop.kv")
        assert "by python" in out
