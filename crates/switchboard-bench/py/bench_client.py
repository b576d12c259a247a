"""The Python side of the binding rows of `cargo xtask bench`.

Runs one workload in this interpreter and prints one JSON line on stdout,
which the harness (crates/switchboard-bench/src/bindings.rs) reads:

    python bench_client.py sb-pubsub   --addr HOST:PORT --token T --n N --size S
    python bench_client.py sb-reqrep   --addr HOST:PORT --token T --n N --size S
    python bench_client.py nats-pubsub --addr HOST:PORT --n N --size S
    python bench_client.py nats-reqrep --addr HOST:PORT --n N --size S
    python bench_client.py check       # prints which clients import

Pub/sub: one publisher and one subscriber connection in this process;
messages are counted at the subscriber, the rate runs from the first
publish to the last arrival. Both sides publish without confirmation:
switchboard with `publish_nowait` (queued on the connection; the loop
yields to the event loop every WINDOW publishes so the subscriber's task
runs), nats-py with `publish` (buffered, flushed at the end). The
switchboard subscriber iterates the subscription, which takes the
messages already waiting in batches. Request/reply: an echoing responder and a requester, two connections
in this process, sequential requests; percentiles of the round trips.

Output: {"rate": msgs/s, "sent": N, "delivered": D} or
{"p50": us, "p99": us, "sent": N, "delivered": D}.
"""

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Dict, List

WINDOW = 64
TIMEOUT = 60.0


def percentiles(us: List[float]) -> Dict[str, float]:
    us.sort()
    return {"p50": us[len(us) // 2], "p99": us[min(len(us) - 1, int(len(us) * 0.99))]}


async def sb_pubsub(addr: str, token: str, n: int, size: int, tag: str) -> Dict[str, Any]:
    import switchboard

    pub = await switchboard.connect(f"bench-py-pub-{tag}", addr=addr, token=token)
    sub_client = await switchboard.connect(f"bench-py-sub-{tag}", addr=addr, token=token)
    topic = f"bench.py.pubsub.{tag}"
    sub = await sub_client.subscribe(topic)
    payload = b"\x07" * size

    got = 0
    last = 0.0

    async def receive() -> None:
        nonlocal got, last
        async for _ in sub:
            got += 1
            last = time.perf_counter()
            if got == n:
                break

    start = time.perf_counter()
    receiver = asyncio.ensure_future(receive())
    sent = 0
    while sent < n:
        batch = min(WINDOW, n - sent)
        for _ in range(batch):
            await pub.publish_nowait(topic, payload)
        sent += batch
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(receiver, TIMEOUT)
    except asyncio.TimeoutError:
        # Reported as delivered < sent; the rate counts what arrived.
        print(f"sb-pubsub: {got} of {n} arrived within {TIMEOUT} s", file=sys.stderr)
    elapsed = (last or time.perf_counter()) - start
    await pub.close()
    await sub_client.close()
    return {"rate": got / elapsed, "sent": sent, "delivered": got}


async def sb_reqrep(addr: str, token: str, n: int, size: int, tag: str) -> Dict[str, Any]:
    import switchboard

    server = await switchboard.connect(f"bench-py-echo-{tag}", addr=addr, token=token)

    async def echo(req: Any) -> bytes:
        return bytes(req.payload)

    serving = await server.serve(echo)
    asker = await switchboard.connect(f"bench-py-ask-{tag}", addr=addr, token=token)
    payload = b"\x07" * size
    us: List[float] = []
    ok = 0
    for _ in range(n):
        t = time.perf_counter()
        reply = await asker.request(f"bench-py-echo-{tag}", payload, timeout=TIMEOUT)
        us.append((time.perf_counter() - t) * 1e6)
        ok += reply == payload
    await serving.stop()
    await asker.close()
    await server.close()
    return {**percentiles(us), "sent": n, "delivered": ok}


async def nats_pubsub(addr: str, n: int, size: int, tag: str) -> Dict[str, Any]:
    import nats

    pub = await nats.connect(f"nats://{addr}")
    sub_conn = await nats.connect(f"nats://{addr}")
    subject = f"bench.py.pubsub.{tag}"
    done = asyncio.get_running_loop().create_future()
    got = 0

    async def on_msg(_msg: Any) -> None:
        nonlocal got
        got += 1
        if got == n and not done.done():
            done.set_result(None)

    # Raise the pending limits so nothing is dropped as a slow consumer.
    await sub_conn.subscribe(subject, cb=on_msg, pending_msgs_limit=n + 1, pending_bytes_limit=-1)
    await sub_conn.flush()
    payload = b"\x07" * size
    start = time.perf_counter()
    for _ in range(n):
        await pub.publish(subject, payload)
    await pub.flush()
    try:
        await asyncio.wait_for(done, TIMEOUT)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    await pub.close()
    await sub_conn.close()
    return {"rate": got / elapsed, "sent": n, "delivered": got}


async def nats_reqrep(addr: str, n: int, size: int, tag: str) -> Dict[str, Any]:
    import nats

    server = await nats.connect(f"nats://{addr}")
    asker = await nats.connect(f"nats://{addr}")
    subject = f"bench.py.echo.{tag}"

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await server.subscribe(subject, cb=echo)
    await server.flush()
    payload = b"\x07" * size
    us: List[float] = []
    ok = 0
    for _ in range(n):
        t = time.perf_counter()
        reply = await asker.request(subject, payload, timeout=TIMEOUT)
        us.append((time.perf_counter() - t) * 1e6)
        ok += reply.data == payload
    await asker.close()
    await server.close()
    return {**percentiles(us), "sent": n, "delivered": ok}


def check() -> Dict[str, Any]:
    found: Dict[str, Any] = {"python": sys.version.split()[0]}
    for name in ("switchboard", "nats"):
        try:
            mod = __import__(name)
            found[name] = getattr(mod, "__version__", "yes")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            found[name] = None
            found[name + "_error"] = str(e)
    return found


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["sb-pubsub", "sb-reqrep", "nats-pubsub", "nats-reqrep", "check"])
    p.add_argument("--addr", default="")
    p.add_argument("--token", default="")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tag", default="0", help="keeps client ids and topics of runs apart")
    a = p.parse_args()
    if a.mode == "check":
        out = check()
    elif a.mode == "sb-pubsub":
        out = asyncio.run(sb_pubsub(a.addr, a.token, a.n, a.size, a.tag))
    elif a.mode == "sb-reqrep":
        out = asyncio.run(sb_reqrep(a.addr, a.token, a.n, a.size, a.tag))
    elif a.mode == "nats-pubsub":
        out = asyncio.run(nats_pubsub(a.addr, a.n, a.size, a.tag))
    else:
        out = asyncio.run(nats_reqrep(a.addr, a.n, a.size, a.tag))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
