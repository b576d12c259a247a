"""Reply headers, both sides: a serve handler returns ``switchboard.Reply``
with headers; ``request(..., full=True)`` gives the whole reply."""

import asyncio
import json
import subprocess

import pytest

import switchboard
from switchboard import RemoteError, Reply

WAIT = 10


def connect(hub, client_id):
    return switchboard.connect(client_id, addr=hub.addr, token=hub.token)


async def test_handler_reply_headers_reach_the_requester(hub):
    async with connect(hub, "py-hdr-server") as server, connect(hub, "py-hdr-client") as client:

        async def handler(req):
            if req.payload == b"plain":
                return b"no headers"
            if req.payload == b"pairs":
                # pairs keep their order, and a key may repeat
                return Reply("many", headers=[("tag", "a"), ("tag", b"b"), ("x", "1")])
            return Reply(b"got " + req.payload, headers={"content-type": "text/plain", "echo": req.payload})

        await server.serve(handler)

        reply = await client.request("py-hdr-server", "hi", timeout=WAIT, full=True)
        assert isinstance(reply, Reply)
        assert reply.payload == b"got hi"
        assert reply.sender == "py-hdr-server"
        assert sorted(reply.headers) == [("content-type", b"text/plain"), ("echo", b"hi")]
        assert reply.header("echo") == b"hi"
        assert reply.header("missing") is None

        # the same reply without full=True: its payload, as before
        assert await client.request("py-hdr-server", "hi", timeout=WAIT) == b"got hi"

        many = await client.request("py-hdr-server", "pairs", timeout=WAIT, full=True)
        assert many.headers == [("tag", b"a"), ("tag", b"b"), ("x", b"1")]
        assert many.header("tag") == b"a"

        # a handler returning bytes: a full reply without headers
        plain = await client.request("py-hdr-server", "plain", timeout=WAIT, full=True)
        assert (plain.payload, plain.headers, plain.sender) == (b"no headers", [], "py-hdr-server")


async def test_service_reply_headers_and_responder(hub):
    async with connect(hub, "py-hdr-svc") as server, connect(hub, "py-hdr-svc-client") as client:
        await server.serve(lambda req: Reply(req.payload, headers={"served-by": "svc"}), service="hdr.echo")
        reply = await client.request_service("hdr.echo", b"abc", timeout=WAIT, full=True)
        assert (reply.payload, reply.headers, reply.sender) == (b"abc", [("served-by", b"svc")], "py-hdr-svc")
        assert await client.request_service("hdr.echo", b"abc", timeout=WAIT) == b"abc"


async def test_refused_reply_headers_become_an_error_reply(hub):
    async with connect(hub, "py-hdr-bad") as server, connect(hub, "py-hdr-bad-client") as client:
        # an empty key is refused (by the hub too): the requester learns why
        await server.serve(lambda req: Reply("x", headers={"": "v"}))
        with pytest.raises(RemoteError) as e:
            await client.request("py-hdr-bad", "x", timeout=WAIT)
        assert "header" in str(e.value).lower()


def test_reply_rejects_bad_arguments():
    with pytest.raises(TypeError):
        Reply(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Reply("x", headers={"k": 1})
    with pytest.raises(TypeError):
        Reply("x", headers=5)
    made = Reply("x", headers={"k": "v"})
    assert (made.payload, made.headers, made.sender) == (b"x", [("k", b"v")], "")
    assert "Reply(" in repr(made)


async def test_cli_request_to_python_server_returning_a_reply(hub):
    # the Rust client on the other end (the CLI prints the payload)
    async with connect(hub, "py-hdr-for-cli") as server:
        await server.serve(lambda req: Reply(b"py says " + req.payload, headers={"k": "v"}))
        proc = await asyncio.create_subprocess_exec(
            hub.bin, "--addr", hub.addr, "request", "--to", "py-hdr-for-cli", "--timeout", "5", "ping",
            env=hub.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, err
        assert out.decode().strip() == "py says ping"


async def test_full_reply_from_cli_server(hub):
    proc = await asyncio.create_subprocess_exec(
        hub.bin, "--addr", hub.addr, "--json", "serve", "--id", "cli-hdr-echo", "--echo",
        env=hub.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        ready = json.loads(await asyncio.wait_for(proc.stderr.readline(), WAIT))
        assert ready["event"] == "ready"
        async with connect(hub, "py-hdr-to-cli") as client:
            reply = await client.request("cli-hdr-echo", "echo me", timeout=WAIT, full=True)
            assert (reply.payload, reply.headers, reply.sender) == (b"echo me", [], "cli-hdr-echo")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)
