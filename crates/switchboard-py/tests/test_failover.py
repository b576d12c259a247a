"""Failover from Python: the primary hub killed with SIGKILL mid-stream, its
standby takes over, and every confirmed publish arrives once, in order."""

import asyncio
import json
import os
import signal
import subprocess
import tempfile

import pytest

import switchboard
from conftest import TOKEN, switchboard_bin

WAIT = 30
MESSAGES = int(os.environ.get("SWITCHBOARD_PY_FAILOVER_MESSAGES", "3000"))


class HubProc:
    """`switchboard hub` (or `--standby`) with its JSON event lines."""

    def __init__(self, binary: str, runtime: str, service: str, standby: bool) -> None:
        args = [binary, "--json", "--service", service, "--token", TOKEN, "hub"]
        if standby:
            args.append("--standby")
        self.proc = subprocess.Popen(
            args,
            env=dict(os.environ, SWITCHBOARD_RUNTIME_DIR=runtime, RUST_LOG="warn"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    async def event(self, name: str) -> dict:
        """The next event named `name` (blocking reads run in a thread)."""
        assert self.proc.stdout is not None

        def read() -> dict:
            while True:
                line = self.proc.stdout.readline()
                assert line, f"the hub exited before a {name!r} event"
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == name:
                    return ev

        return await asyncio.wait_for(asyncio.to_thread(read), WAIT)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_sigkill_of_the_primary_loses_and_duplicates_nothing():
    binary = switchboard_bin()
    with tempfile.TemporaryDirectory() as runtime:
        primary = HubProc(binary, runtime, "py-failover", standby=False)
        standby = None
        try:
            addr = (await primary.event("ready"))["addr"]
            standby = HubProc(binary, runtime, "py-failover", standby=True)
            assert (await standby.event("standby"))["primary"] == addr

            def client(cid):
                return switchboard.connect(
                    cid, addr=addr, token=TOKEN, resume_wait=20, stream_capacity=1 << 20
                )

            async with client("py-fo-pub") as pub, client("py-fo-sub") as sub_client:
                sub = await sub_client.subscribe("fo.numbers")

                async def receive():
                    got = []
                    async for msg in sub:
                        got.append(int(msg.payload))
                        if len(got) == MESSAGES:
                            return got

                receiver = asyncio.create_task(receive())
                events = pub.events()
                for i in range(MESSAGES // 3):
                    await pub.publish("fo.numbers", str(i))
                primary.kill9()
                for i in range(MESSAGES // 3, MESSAGES):
                    await pub.publish("fo.numbers", str(i))  # confirmed, across the failover
                took = await standby.event("ready")
                assert took["addr"] == addr and took["epoch"] == 2

                async def resumed():
                    kinds = []
                    async for ev in events:
                        kinds.append(ev.kind)
                        if ev.kind == "resumed":
                            return kinds
                    return kinds

                kinds = await asyncio.wait_for(resumed(), WAIT)
                assert kinds[0] == "disconnected" and kinds[-1] == "resumed", kinds

                got = await asyncio.wait_for(receiver, WAIT)
                assert got == list(range(MESSAGES)), "a loss, a duplicate or a reordering"
                # nothing more (no late duplicate)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(sub.__anext__(), 0.5)
        finally:
            primary.stop()
            if standby is not None:
                standby.stop()
