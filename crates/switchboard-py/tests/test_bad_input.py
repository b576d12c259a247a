"""Bad input raises clear exceptions and leaves the client usable.

Invalid ids, oversized payloads, wrong types, use after close and double
close, each against a real hub process. Rules: an argument of the wrong
Python type is a ``TypeError`` raised at the call (before anything is
sent); a value the client or hub rejects is :class:`InvalidArgument` (also
a ``ValueError``) with the Rust client's message (headers over their 64 KiB
limit: :class:`LimitExceeded`); every call on a closed
client raises :class:`ClientClosed`; ``close()`` a second time does nothing.
"""

import asyncio

import pytest

import switchboard
from switchboard import ClientClosed, InvalidArgument, LimitExceeded

WAIT = 10
TOO_BIG = b"x" * (17 * 1024 * 1024)  # over the hub's 16 MiB frame limit


def connect(hub, client_id, **kw):
    return switchboard.connect(client_id, addr=hub.addr, token=hub.token, **kw)


@pytest.mark.parametrize(
    "bad_id, says",
    [
        ("", "client id is empty"),
        ("x" * 257, "client id is 257 bytes, more than 256"),
        ("a\nb", "control character"),
        ("nul\x00", "control character"),
    ],
)
async def test_invalid_client_ids(hub, bad_id, says):
    with pytest.raises(InvalidArgument) as e:
        await connect(hub, bad_id)
    assert says in str(e.value)
    assert isinstance(e.value, ValueError)


async def test_longest_id_is_accepted(hub):
    async with connect(hub, "y" * 256) as client:
        assert client.id == "y" * 256


async def test_invalid_targets_and_names(hub):
    async with connect(hub, "py-bad-target") as client:
        with pytest.raises(InvalidArgument):
            await client.request("", b"x", timeout=WAIT)
        with pytest.raises(InvalidArgument):
            await client.send("a\nb", b"x")
        with pytest.raises(InvalidArgument):
            await client.publish("", b"x")
        with pytest.raises(InvalidArgument):
            await client.subscribe("a.>.b")
        # the client is still fine
        await client.publish("still.fine", b"x")


async def test_oversized_payloads(hub):
    async with connect(hub, "py-big-all") as client, connect(hub, "py-big-peer") as peer:
        await peer.serve(lambda req: req.payload)
        await peer.messages()
        calls = {
            "publish": lambda: client.publish("big", TOO_BIG),
            "send": lambda: client.send("py-big-peer", TOO_BIG),
            "request": lambda: client.request("py-big-peer", TOO_BIG, timeout=WAIT),
            "kv.set": lambda: client.kv.set("py.big", TOO_BIG),
        }
        for name, call in calls.items():
            with pytest.raises(InvalidArgument) as e:
                await asyncio.wait_for(call(), WAIT)
            assert "exceeds the hub's limit" in str(e.value), name
        # headers have their own, smaller limit
        with pytest.raises(LimitExceeded) as e:
            await client.publish("big", b"", headers={"h": b"x" * 70_000})
        assert str(e.value) == "headers of 70001 bytes exceed the limit of 65536 bytes"
        assert await client.request("py-big-peer", b"small", timeout=WAIT) == b"small"


async def test_wrong_types_raise_type_error(hub):
    async with connect(hub, "py-types") as client:
        calls = [
            lambda: client.publish(b"topic", b"x"),  # type: ignore[arg-type]
            lambda: client.publish("t", None),  # type: ignore[arg-type]
            lambda: client.send("py-types", 3.5),  # type: ignore[arg-type]
            lambda: client.request(7, b"x"),  # type: ignore[arg-type]
            lambda: client.request("py-types", b"x", timeout="soon"),  # type: ignore[arg-type]
            lambda: client.publish("t", b"x", headers=42),  # type: ignore[arg-type]
            lambda: client.publish("t", b"x", headers={"k": 1}),  # type: ignore[dict-item]
            lambda: client.publish("t", b"x", headers={1: b"v"}),  # type: ignore[dict-item]
            lambda: client.kv.set("k", ["list"]),  # type: ignore[arg-type]
            lambda: client.kv.get(None),  # type: ignore[arg-type]
        ]
        for i, call in enumerate(calls):
            with pytest.raises(TypeError):
                await call()
        for bad in (float("nan"), float("inf"), -0.5):
            with pytest.raises(ValueError) as e:
                await client.request("py-types", b"x", timeout=bad)
            assert "timeout must be a finite number of seconds" in str(e.value)
        with pytest.raises(ValueError):
            await client.drain(timeout=float("nan"))


async def test_every_call_after_close_raises_client_closed(hub):
    client = await connect(hub, "py-closed")
    await client.close()
    calls = {
        "publish": lambda: client.publish("t", b"x"),
        "send": lambda: client.send("x", b"x"),
        "request": lambda: client.request("x", b"x", timeout=WAIT),
        "request_service": lambda: client.request_service("svc", b"x", timeout=WAIT),
        "subscribe": lambda: client.subscribe("t"),
        "serve": lambda: client.serve(lambda req: b""),
        "messages": lambda: client.messages(),
        "kv.get": lambda: client.kv.get("k"),
        "kv.set": lambda: client.kv.set("k", b"v"),
        "kv.delete": lambda: client.kv.delete("k"),
        "kv.watch": lambda: client.kv.watch("k"),
        "presence": lambda: client.presence(),
        "clients": lambda: client.clients(),
        "status": lambda: client.status(),
    }
    for name, call in calls.items():
        with pytest.raises(ClientClosed) as e:
            await asyncio.wait_for(_run(call), WAIT)
        assert str(e.value) == "the client is closed", name
    # the calls that return at once raise at once
    sync_calls = {
        "events": lambda: client.events(),
        "session_manager": lambda: client.session_manager(),
        "session_agent": lambda: client.session_agent("m", lambda method, payload: b""),
    }
    for name, call in sync_calls.items():
        with pytest.raises(ClientClosed):
            call()


async def _run(call):
    return await call()


async def test_double_close_and_drain_after_close_are_harmless(hub):
    client = await connect(hub, "py-twice")
    await client.close()
    await client.close()  # a second close does nothing
    async with client:  # nor does the one at the end of `async with`
        pass
    assert await client.drain(timeout=1) in (True, False)
    # the id is free again
    async with connect(hub, "py-twice") as again:
        await again.publish("t", b"x")
