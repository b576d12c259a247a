"""The cheap paths against a real hub: publish_nowait, and subscriptions that
take the messages already waiting in batches (order, no loss, overflow and
max_messages unchanged)."""

import asyncio

import pytest

import switchboard
from switchboard import ClientClosed

WAIT = 10  # seconds: upper bound of any single step


def connect(hub, client_id, **kw):
    return switchboard.connect(client_id, addr=hub.addr, token=hub.token, **kw)


async def take(sub, n):
    """The next n messages of sub, within WAIT seconds."""
    got = []

    async def run():
        async for msg in sub:
            got.append(msg)
            if len(got) == n:
                return

    await asyncio.wait_for(run(), WAIT)
    return got


async def test_publish_nowait_in_order_without_loss(hub):
    async with connect(hub, "fp-sub") as sub_client, connect(hub, "fp-pub") as pub:
        sub = await sub_client.subscribe("fp.order")
        n = 5000
        for i in range(n):
            await pub.publish_nowait("fp.order", str(i))
            if i % 100 == 0:
                await asyncio.sleep(0)
        got = await take(sub, n)
        assert [int(m.payload) for m in got] == list(range(n))
        assert all(m.topic == "fp.order" and m.sender == "fp-pub" for m in got)
        assert all(m.kind == "publish" for m in got)


async def test_publish_nowait_and_publish_keep_order(hub):
    async with connect(hub, "fp-mix-sub") as sub_client, connect(hub, "fp-mix-pub") as pub:
        sub = await sub_client.subscribe("fp.mix")
        for i in range(100):
            if i % 3 == 0:
                await pub.publish("fp.mix", str(i))
            else:
                await pub.publish_nowait("fp.mix", str(i))
        got = await take(sub, 100)
        assert [int(m.payload) for m in got] == list(range(100))


async def test_batches_left_in_python_are_returned_first(hub):
    async with connect(hub, "fp-batch-sub") as sub_client, connect(hub, "fp-batch-pub") as pub:
        sub = await sub_client.subscribe("fp.batch.*")
        for i in range(600):
            await pub.publish_nowait(f"fp.batch.{i % 2}", str(i))
        # a confirmed publish after them: once it arrives, all did
        await pub.publish("fp.batch.end", b"end")
        got = await take(sub, 601)
        assert [m.payload for m in got[:600]] == [str(i).encode() for i in range(600)]
        assert got[600].topic == "fp.batch.end"
        # nothing more is waiting: the next message is waited for
        it = sub.__aiter__()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(it.__anext__(), 0.2)
        await pub.publish_nowait("fp.batch.late", b"late")
        assert (await asyncio.wait_for(it.__anext__(), WAIT)).payload == b"late"


async def test_block_overflow_pushes_back_and_loses_nothing(hub):
    async with connect(hub, "fp-bp-sub") as sub_client, connect(hub, "fp-bp-pub") as pub:
        sub = await sub_client.subscribe("fp.bp", capacity=4, overflow="block")
        n = 2000

        async def publish():
            for i in range(n):
                await pub.publish_nowait("fp.bp", str(i))
                if i % 50 == 0:
                    await asyncio.sleep(0)

        publisher = asyncio.create_task(publish())
        got = []
        async for msg in sub:
            got.append(int(msg.payload))
            if len(got) % 200 == 0:
                await asyncio.sleep(0.01)  # a slow consumer
            if len(got) == n:
                break
        await asyncio.wait_for(publisher, WAIT)
        assert got == list(range(n))


async def test_drop_newest_still_drops_and_counts(hub):
    async with connect(hub, "fp-drop-sub") as sub_client, connect(hub, "fp-drop-pub") as pub:
        events = sub_client.events()
        sub = await sub_client.subscribe("fp.drop", capacity=4, overflow="drop_newest")
        end = await sub_client.subscribe("fp.drop.end")
        for i in range(50):
            await pub.publish("fp.drop", str(i))
        await pub.publish("fp.drop.end", b"x")  # routed after the 50
        # it arrives after them on the same connection: all 50 reached the
        # subscriber's stream (or were dropped there) before it
        await asyncio.wait_for(end.__aiter__().__anext__(), WAIT)
        got = []
        it = sub.__aiter__()
        while True:
            try:
                got.append(int((await asyncio.wait_for(it.__anext__(), 0.3)).payload))
            except asyncio.TimeoutError:
                break
        # the oldest four were kept, the rest dropped
        assert got == [0, 1, 2, 3]

        async def slow_consumer_event():
            async for ev in events:
                if ev.kind == "slow_consumer":
                    return ev

        assert (await asyncio.wait_for(slow_consumer_event(), WAIT)).kind == "slow_consumer"


async def test_max_messages_ends_iteration_after_a_batch(hub):
    async with connect(hub, "fp-max-sub") as sub_client, connect(hub, "fp-max-pub") as pub:
        sub = await sub_client.subscribe("fp.max", max_messages=10)
        for i in range(30):
            await pub.publish_nowait("fp.max", str(i))
        got = [int(m.payload) async for m in sub]  # ends by itself
        assert got == list(range(10))
        # ended: stays ended
        assert [m async for m in sub] == []


async def test_unsubscribe_discards_what_python_holds(hub):
    async with connect(hub, "fp-unsub-sub") as sub_client, connect(hub, "fp-unsub-pub") as pub:
        sub = await sub_client.subscribe("fp.unsub")
        for i in range(20):
            await pub.publish_nowait("fp.unsub", str(i))
        await pub.publish("fp.unsub", b"last")
        await take(sub, 1)
        await sub.unsubscribe()
        assert [m async for m in sub] == []


async def test_publish_nowait_bad_input_and_closed(hub):
    client = await connect(hub, "fp-bad")
    with pytest.raises(TypeError):
        await client.publish_nowait("fp.bad", 42)  # type: ignore[arg-type]
    await client.publish_nowait("fp.bad", bytearray(b"ok"))
    await client.close()
    with pytest.raises(ClientClosed):
        await client.publish_nowait("fp.bad", b"x")
