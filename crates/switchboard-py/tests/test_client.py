"""The Python client against a real hub process: every call, errors, CLI interop."""

import asyncio
import json
import subprocess

import pytest

import switchboard
from switchboard import (
    AuthFailed,
    ClientClosed,
    InvalidArgument,
    NoSuchClient,
    RemoteError,
    RequestTimeout,
    SwitchboardError,
)

WAIT = 10  # seconds: upper bound of any single step


def connect(hub, client_id, **kw):
    return switchboard.connect(client_id, addr=hub.addr, token=hub.token, **kw)


async def test_connect_async_with_and_close(hub):
    async with connect(hub, "py-ctx") as client:
        assert client.id == "py-ctx"
        await client.publish("nobody.listens", b"x")
    with pytest.raises(ClientClosed) as e:
        await client.publish("t", b"x")
    assert str(e.value) == "the client is closed"

    client = await connect(hub, "py-plain")
    async with client:
        await client.publish("t", "x")
    with pytest.raises(ClientClosed):
        await client.request("py-plain", b"x")


async def test_invalid_id_is_refused(hub):
    with pytest.raises(InvalidArgument) as e:
        await connect(hub, "")
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, SwitchboardError)
    assert str(e.value).startswith("invalid argument:")


async def test_wrong_token_is_auth_failed(hub):
    with pytest.raises(AuthFailed) as e:
        await switchboard.connect("py-badtoken", addr=hub.addr, token="wrong")
    # the client checks the hub's proof first: a wrong token shows there
    assert "wrong token" in str(e.value)
    assert e.value.code == "AUTH_FAILED"


async def test_publish_subscribe(hub):
    async with connect(hub, "py-sub") as sub_client, connect(hub, "py-pub") as pub:
        sub = await sub_client.subscribe("orders.>")
        assert sub.pattern == "orders.>"
        await pub.publish("orders.new", b"\x00\x01bin")
        await pub.publish("other.topic", b"not for us")
        await pub.publish("orders.eu.paid", "caf\u00e9")
        got = []
        async for msg in sub:
            got.append(msg)
            if len(got) == 2:
                break
        assert [m.topic for m in got] == ["orders.new", "orders.eu.paid"]
        assert got[0].payload == b"\x00\x01bin"
        assert got[1].payload == "caf\u00e9".encode()
        assert all(m.sender == "py-pub" for m in got)
        assert all(isinstance(m.payload, bytes) for m in got)


async def test_subscribe_lazily_in_async_for(hub):
    async with connect(hub, "py-lazy") as client:
        received = asyncio.get_running_loop().create_future()

        async def reader():
            async for msg in client.subscribe("lazy.*"):
                received.set_result(msg)
                return

        task = asyncio.create_task(reader())
        # publish until the subscription is in place
        while not received.done():
            await client.publish("lazy.x", b"hi")
            await asyncio.wait([received], timeout=0.05)
        await asyncio.wait_for(task, WAIT)
        assert received.result().payload == b"hi"


async def test_cancelled_next_leaves_subscription_usable(hub):
    async with connect(hub, "py-cancel") as client:
        sub = await client.subscribe("cancel.t")
        it = sub.__aiter__()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(it.__anext__(), 0.2)
        await client.publish("cancel.t", b"after")
        msg = await asyncio.wait_for(it.__anext__(), WAIT)
        assert msg.payload == b"after"
        await sub.unsubscribe()


async def test_request_and_serve(hub):
    async with connect(hub, "py-server") as server, connect(hub, "py-asker") as asker:

        async def handler(req):
            assert isinstance(req.payload, bytes)
            if req.payload == b"fail":
                raise ValueError("boom")
            if req.payload == b"bytes":
                return b"\xffraw"
            return f"{req.sender}:{req.payload.decode().upper()}"

        serving = await server.serve(handler, concurrency=4)
        assert await asker.request("py-server", "hello", timeout=WAIT) == b"py-asker:HELLO"
        assert await asker.request("py-server", b"bytes") == b"\xffraw"
        with pytest.raises(RemoteError) as e:
            await asker.request("py-server", "fail", timeout=WAIT)
        assert "ValueError: boom" in str(e.value)
        # concurrent requests
        replies = await asyncio.gather(*(asker.request("py-server", str(i)) for i in range(20)))
        assert replies == [f"py-asker:{i}".encode() for i in range(20)]
        await serving.stop()


async def test_sync_handler(hub):
    async with connect(hub, "py-sync-server") as server, connect(hub, "py-sync-asker") as asker:
        await server.serve(lambda req: req.payload[::-1])
        assert await asker.request("py-sync-server", b"abc", timeout=WAIT) == b"cba"


async def test_handler_that_awaits_a_request(hub):
    async with connect(hub, "py-backend") as backend, connect(hub, "py-front") as front, connect(
        hub, "py-caller"
    ) as caller:
        await backend.serve(lambda req: b"backend(" + req.payload + b")")

        async def forward(req):
            inner = await front.request("py-backend", req.payload, timeout=WAIT)
            return b"front(" + inner + b")"

        await front.serve(forward)
        reply = await caller.request("py-front", b"x", timeout=WAIT)
        assert reply == b"front(backend(x))"


async def test_unknown_target_and_timeout(hub):
    async with connect(hub, "py-errs") as client, connect(hub, "py-slow") as slow:
        with pytest.raises(NoSuchClient) as e:
            await client.request("nobody-here", b"x", timeout=WAIT)
        assert e.value.code == "NO_SUCH_CLIENT"

        async def sleepy(req):
            await asyncio.sleep(1.5)  # close() waits for running handlers
            return b"late"

        await slow.serve(sleepy)
        with pytest.raises(RequestTimeout) as e:
            await client.request("py-slow", b"x", timeout=0.3)
        assert isinstance(e.value, TimeoutError)
        assert e.value.code == "TIMEOUT"
        assert str(e.value).startswith("timed out:")


async def test_bad_arguments(hub):
    async with connect(hub, "py-bad") as client:
        with pytest.raises(TypeError):
            await client.publish("t", 42)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await client.request("py-bad", b"x", timeout=-1)
        with pytest.raises(InvalidArgument):
            await client.subscribe("bad..pattern")
        with pytest.raises(UnicodeEncodeError):
            await client.publish("t", "\ud800")  # a lone surrogate is not UTF-8
    with pytest.raises(TypeError):
        await switchboard.connect(123, addr=hub.addr, token=hub.token)  # type: ignore[arg-type]


async def test_cancelled_request_leaves_client_usable(hub):
    async with connect(hub, "py-cancel-req") as client, connect(hub, "py-cancel-slow") as slow:

        async def handler(req):
            if req.payload == b"slow":
                await asyncio.sleep(1.5)  # close() waits for running handlers
            return req.payload

        await slow.serve(handler)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.request("py-cancel-slow", b"slow", timeout=WAIT), 0.2)
        assert await client.request("py-cancel-slow", b"fast", timeout=WAIT) == b"fast"


async def test_kv(hub):
    async with connect(hub, "py-kv") as client, connect(hub, "py-kv2") as other:
        assert await client.kv.get("py.k") is None
        assert await client.kv.set("py.k", b"v1") == 1
        assert await client.kv.set("py.k", "v2") == 2
        assert await other.kv.get("py.k") == b"v2"
        assert await client.kv.delete("py.k") is True
        assert await client.kv.delete("py.k") is False
        assert await other.kv.get("py.k") is None


async def test_cli_request_to_python_server(hub):
    async with connect(hub, "py-for-cli") as server:
        await server.serve(lambda req: b"py says " + req.payload)
        proc = await asyncio.create_subprocess_exec(
            hub.bin, "--addr", hub.addr, "request", "--to", "py-for-cli", "--timeout", "5", "ping",
            env=hub.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, err
        assert out.decode().strip() == "py says ping"


async def test_python_request_to_cli_server(hub):
    proc = await asyncio.create_subprocess_exec(
        hub.bin, "--addr", hub.addr, "--json", "serve", "--id", "cli-echo", "--echo",
        env=hub.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        ready = json.loads(await asyncio.wait_for(proc.stderr.readline(), WAIT))
        assert ready["event"] == "ready"
        async with connect(hub, "py-to-cli") as client:
            assert await client.request("cli-echo", "echo me", timeout=WAIT) == b"echo me"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


async def test_send_with_headers_to_inbox(hub):
    async with connect(hub, "py-inbox") as receiver, connect(hub, "py-sender") as sender:
        with pytest.raises(switchboard.NotListening):
            await sender.send("py-inbox", b"too early")
        inbox = await receiver.messages()
        await sender.send("py-inbox", "hello", headers={"trace-id": "abc"})
        await sender.send("py-inbox", b"two", headers=[("tag", b"a"), ("tag", "b")])
        first = await asyncio.wait_for(inbox.__anext__(), WAIT)
        assert (first.kind, first.sender, first.payload) == ("direct", "py-sender", b"hello")
        assert first.headers == [("trace-id", b"abc")]
        second = await asyncio.wait_for(inbox.__anext__(), WAIT)
        assert second.headers == [("tag", b"a"), ("tag", b"b")]
        await inbox.close()


async def test_kv_watch(hub):
    async with connect(hub, "py-watcher") as watcher, connect(hub, "py-writer") as writer:
        await writer.kv.set("watch.a", b"0")
        async with await watcher.kv.watch("watch.", prefix=True) as changes:
            current = await asyncio.wait_for(changes.__anext__(), WAIT)
            assert (current.key, current.value, current.by) == ("watch.a", b"0", "")
            await writer.kv.set("watch.b", "1")
            await writer.kv.delete("watch.a")
            set_b = await asyncio.wait_for(changes.__anext__(), WAIT)
            assert (set_b.key, set_b.value, set_b.by, set_b.deleted) == ("watch.b", b"1", "py-writer", False)
            deleted = await asyncio.wait_for(changes.__anext__(), WAIT)
            assert (deleted.key, deleted.deleted) == ("watch.a", True)


async def test_drain(hub):
    client = await connect(hub, "py-drain")
    await client.serve(lambda req: req.payload)
    for i in range(50):
        await client.publish("drain.t", str(i))
    assert await client.drain(timeout=WAIT) is True
    with pytest.raises(ClientClosed):
        await client.publish("drain.t", b"x")


async def test_presence_and_clients(hub):
    async with connect(hub, "py-presence") as watcher:
        presence = await watcher.presence()
        assert "py-presence" in [c.client_id for c in presence.current]
        async with connect(hub, "py-joiner") as joiner:
            joined = await asyncio.wait_for(presence.__anext__(), WAIT)
            assert (joined.kind, joined.client.client_id) == ("joined", "py-joiner")
            ids = [c.client_id for c in await watcher.clients()]
            assert {"py-presence", "py-joiner"} <= set(ids)
            info = next(c for c in await watcher.clients() if c.client_id == "py-joiner")
            assert info.transport == "tcp" and info.reliable is True
            await joiner.publish("t", b"x")
        left = await asyncio.wait_for(presence.__anext__(), WAIT)
        assert (left.kind, left.client.client_id) == ("left", "py-joiner")
        await presence.close()


async def test_events_end_with_closed(hub):
    client = await connect(hub, "py-events")
    events = client.events()
    await client.close()
    kinds = [e.kind async for e in events]
    assert kinds[-1] == "closed"


async def _settles(client, key, want, done=None):
    """Polls the hub's status until `key` equals `want` (or `done(value)`
    holds, if given), bounded by WAIT; the last value."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        got = (await client.status())[key]
        if (done(got) if done else got == want) or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_cancellation_leaves_nothing_registered(hub):
    async with connect(hub, "py-cancel-obs") as observer, connect(hub, "py-cancel-c") as client, connect(
        hub, "py-cancel-srv"
    ) as server:

        release = asyncio.Event()

        async def slow(req):
            await asyncio.wait_for(release.wait(), WAIT)  # close() waits for running handlers
            return b"late"

        await server.serve(slow)
        base = await observer.status()
        # subscribe calls cancelled at every point of their way
        for delay in [0, 0.0001, 0.001, 0.005, 0.02] * 4:
            try:
                await asyncio.wait_for(client.subscribe("cancel.obs.>"), delay)
            except asyncio.TimeoutError:
                pass
        assert await _settles(observer, "subscriptions", base["subscriptions"]) == base["subscriptions"]
        # a request cancelled while the target handles it
        task = asyncio.create_task(client.request("py-cancel-srv", b"x", timeout=WAIT))
        want = base["pending_requests"] + 1
        assert await _settles(observer, "pending_requests", want, lambda n: n >= want) >= want
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await _settles(observer, "pending_requests", base["pending_requests"]) == base["pending_requests"]


async def test_oversized_payload_is_refused(hub):
    async with connect(hub, "py-big") as client:
        with pytest.raises(InvalidArgument) as e:
            await client.publish("big", b"x" * (17 * 1024 * 1024))
        assert "exceeds the hub's limit" in str(e.value)
        await client.publish("big", b"still works")


async def test_headers_and_method_on_publish_and_request(hub):
    async with connect(hub, "py-h-server") as server, connect(hub, "py-h-client") as client:
        seen = []

        async def handler(req):
            seen.append((req.method, req.headers, req.service))
            return b"ok"

        await server.serve(handler)
        reply = await client.request(
            "py-h-server", b"x", timeout=WAIT, headers={"trace": "t1"}, method="Get"
        )
        assert reply == b"ok"
        assert seen == [("Get", [("trace", b"t1")], None)]

        sub = await server.subscribe("h.topic")
        await client.publish("h.topic", b"p", headers=[("k", "v")])
        msg = await asyncio.wait_for(sub.__anext__(), WAIT)
        assert (msg.kind, msg.headers) == ("publish", [("k", b"v")])


async def test_service_requests(hub):
    async with connect(hub, "py-svc-a") as a, connect(hub, "py-svc-b") as b, connect(
        hub, "py-svc-client"
    ) as client:
        with pytest.raises(switchboard.NoResponders):
            await client.request_service("py.echo", b"x", timeout=WAIT)
        await a.serve(lambda req: b"a:" + req.service.encode(), service="py.echo")
        await b.serve(lambda req: b"b:" + req.service.encode(), service="py.echo")
        replies = {await client.request_service("py.echo", b"x", timeout=WAIT) for _ in range(6)}
        assert replies == {b"a:py.echo", b"b:py.echo"}, "round-robin over both servers"


async def test_subscribe_options(hub):
    async with connect(hub, "py-q1") as q1, connect(hub, "py-q2") as q2, connect(hub, "py-qpub") as pub:
        s1 = await q1.subscribe("q.work", queue_group="workers")
        s2 = await q2.subscribe("q.work", queue_group="workers")
        limited = await q1.subscribe("q.work", max_messages=3)
        for i in range(10):
            await pub.publish("q.work", str(i))
        got = [m async for m in limited]  # ends by itself after 3
        assert [m.payload for m in got] == [b"0", b"1", b"2"]
        # each message to exactly one member of the group
        received = []
        while len(received) < 10:
            done, _ = await asyncio.wait(
                [asyncio.ensure_future(s1.__anext__()), asyncio.ensure_future(s2.__anext__())],
                timeout=WAIT,
                return_when=asyncio.ALL_COMPLETED,
            )
            assert done, "the group stopped receiving"
            received += [int(t.result().payload) for t in done]
            if len(received) >= 10:
                break
        assert sorted(received) == list(range(10))
        with pytest.raises(ValueError):
            await q1.subscribe("q.x", overflow="sometimes")
