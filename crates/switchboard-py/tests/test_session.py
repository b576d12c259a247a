"""The session engine from Python: a manager pushes ordered RPCs to an agent
whose handler is a Python coroutine."""

import asyncio
import gc

import pytest

import switchboard
from switchboard import Fault

WAIT = 10


async def test_manager_and_agent(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs") as acs, connect("py-cpe") as cpe:
        manager = acs.session_manager()
        ran = []

        async def methods(method, payload):
            ran.append(method)
            if method == "GetParameterValues":
                await asyncio.sleep(0.01)
                return payload + b"=42"
            if method == "Reboot":
                raise Fault("not now", fault_code=8001)
            raise ValueError(f"unknown {method}")

        agent = cpe.session_agent("py-acs", methods)
        # pushed back to back: run in this order
        first = asyncio.ensure_future(manager.rpc("py-cpe", "GetParameterValues", "Device.Uptime"))
        second = asyncio.ensure_future(manager.rpc("py-cpe", "Reboot"))
        third = asyncio.ensure_future(manager.rpc("py-cpe", "Unknown", b""))
        assert await asyncio.wait_for(first, WAIT) == b"Device.Uptime=42"
        with pytest.raises(Fault) as e:
            await asyncio.wait_for(second, WAIT)
        assert e.value.fault_code == 8001 and "not now" in str(e.value)
        with pytest.raises(Fault) as e:
            await asyncio.wait_for(third, WAIT)
        assert e.value.fault_code == 8002 and "ValueError: unknown Unknown" in str(e.value)
        assert ran == ["GetParameterValues", "Reboot", "Unknown"]
        await agent.close()
        await manager.close()


async def _next_of(events, kind):
    """The next event of ``kind`` (others skipped), within WAIT seconds."""

    async def find():
        async for e in events:
            if e.kind == kind:
                return e
        raise AssertionError(f"events ended before {kind}")

    return await asyncio.wait_for(find(), WAIT)


async def test_agent_options_and_events_on_both_sides(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs-ev") as acs, connect("py-cpe-ev") as cpe:
        manager = acs.session_manager()
        manager_events = manager.events()
        agent = cpe.session_agent(
            "py-acs-ev",
            lambda method, payload: b"ok",
            device_id="dev-42",
            parameters={"Device.SoftwareVersion": "1.2.3"},
            response_timeout=5,
        )
        agent_events = agent.events()
        assert await asyncio.wait_for(manager.rpc("py-cpe-ev", "Ping"), WAIT) == b"ok"

        # an event of the agent's opens a session that carries it
        await agent.add_event("4 VALUE CHANGE", "key-1")
        started = await _next_of(agent_events, "session_started")
        while ("4 VALUE CHANGE", "key-1") not in started.data["events"]:
            started = await _next_of(agent_events, "session_started")  # "1 BOOT" came first
        seen = await _next_of(manager_events, "session_started")
        while ("4 VALUE CHANGE", "key-1") not in seen.data["events"]:
            seen = await _next_of(manager_events, "session_started")
        assert seen.data["agent"] == "py-cpe-ev"
        assert seen.data["device_id"] == "dev-42"
        assert seen.data["parameters"] == {"Device.SoftwareVersion": "1.2.3"}
        await _next_of(agent_events, "session_ended")

        # a connection request from the manager opens a session too
        await _next_of(manager_events, "session_ended")
        assert await asyncio.wait_for(manager.connection_request("py-cpe-ev"), WAIT) is True
        await _next_of(agent_events, "connection_requested")
        assert await asyncio.wait_for(manager.connection_request("nobody"), WAIT) is False

        with pytest.raises(ValueError):
            cpe.session_agent("py-acs-ev", lambda m, p: b"", response_timeout=-1)
        await agent.close()
        # an agent's events end once it stopped
        rest = await asyncio.wait_for(_drain(agent_events), WAIT)
        assert all(e.kind != "lagged" for e in rest)
        await manager.close()


async def _drain(events):
    return [e async for e in events]


async def test_manager_events_end_when_closed_or_dropped(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs-end") as acs, connect("py-cpe-end") as cpe:
        manager = acs.session_manager()
        events = manager.events()
        agent = cpe.session_agent("py-acs-end", lambda method, payload: b"ok")
        assert await asyncio.wait_for(manager.rpc("py-cpe-end", "Ping"), WAIT) == b"ok"
        await manager.close()
        # the events sent before close are still read, then the stream ends
        kinds = [e.kind for e in await asyncio.wait_for(_drain(events), WAIT)]
        assert "session_started" in kinds
        # a stream taken after close ends at once; rpc fails
        assert await asyncio.wait_for(_drain(manager.events()), WAIT) == []
        with pytest.raises(switchboard.SessionError):
            await asyncio.wait_for(manager.rpc("py-cpe-end", "Ping"), WAIT)
        await agent.close()

        # a manager dropped without close: its streams end too
        other = acs.session_manager()
        orphan = other.events()
        del other
        gc.collect()
        assert await asyncio.wait_for(_drain(orphan), WAIT) == []


async def test_agent_requests_of_its_own(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs-req") as acs, connect("py-cpe-req") as cpe:
        manager = acs.session_manager()
        events = manager.events()
        agent = cpe.session_agent("py-acs-req", lambda method, payload: b"ok")
        # the manager answers with an empty result and reports the request
        answer = await asyncio.wait_for(agent.request("TransferComplete", "cmd-7"), WAIT)
        assert answer == b""
        seen = await _next_of(events, "agent_request")
        assert (seen.data["agent"], seen.data["method"], seen.data["payload"]) == (
            "py-cpe-req",
            "TransferComplete",
            b"cmd-7",
        )
        assert await asyncio.wait_for(agent.request("Kicked"), WAIT) == b""
        await agent.close()
        with pytest.raises(switchboard.SessionError):
            await agent.request("TransferComplete", b"")
        await manager.close()


async def test_agent_request_queue_limit_and_close_while_waiting(hub):
    async with switchboard.connect("py-cpe-lonely", addr=hub.addr, token=hub.token) as cpe:
        # no such manager: requests wait for a session that never succeeds
        agent = cpe.session_agent(
            "py-acs-missing", lambda m, p: b"", max_requests=1, response_timeout=0.5, retry_min_wait=0.1
        )
        first = asyncio.ensure_future(agent.request("TransferComplete", b"1"))
        await asyncio.sleep(0.05)
        with pytest.raises(switchboard.SessionError) as e:
            await asyncio.wait_for(agent.request("TransferComplete", b"2"), WAIT)
        assert "1" in str(e.value)  # the limit
        assert not first.done()
        # close does not wait for the pending request, which fails
        await asyncio.wait_for(agent.close(), WAIT)
        with pytest.raises(switchboard.SessionError):
            await asyncio.wait_for(first, WAIT)


async def test_agent_retry_policy(hub):
    async with switchboard.connect("py-cpe-retry", addr=hub.addr, token=hub.token) as cpe:
        agent = cpe.session_agent(
            "py-acs-absent",
            lambda m, p: b"",
            response_timeout=0.3,
            retry_min_wait=0.05,
            retry_multiplier=3.0,
        )
        events = agent.events()
        waits = []
        while len(waits) < 2:
            failed = await _next_of(events, "session_failed")
            waits.append((failed.data["retry"], failed.data["wait"]))
        await agent.close()
        # retry n waits within [m·k^(n-1), m·k^n] (the default would be 5 s and more)
        for retry, wait in waits:
            low, high = 0.05 * 3.0 ** (retry - 1), 0.05 * 3.0**retry
            assert low - 0.001 <= wait <= high + 0.001, (retry, wait)
        with pytest.raises(ValueError):
            cpe.session_agent("x", lambda m, p: b"", retry_multiplier=0.5)
        with pytest.raises(ValueError):
            cpe.session_agent("x", lambda m, p: b"", max_queue=0)


async def test_queue_limits_and_pipelining(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs-lim") as acs, connect("py-cpe-lim") as cpe:
        # the manager queues at most 2 RPCs per agent
        small = acs.session_manager(max_queue=2, response_timeout=5)
        queued = [asyncio.ensure_future(small.rpc("py-nobody", "Ping")) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(switchboard.SessionError):
            await asyncio.wait_for(small.rpc("py-nobody", "Ping"), WAIT)
        await small.close()
        for q in queued:
            with pytest.raises(switchboard.SessionError):
                await asyncio.wait_for(q, WAIT)
        with pytest.raises(ValueError):
            acs.session_manager(max_in_flight=0)

    async with connect("py-acs-pipe") as acs, connect("py-cpe-pipe") as cpe:
        # three RPCs in flight at once; the agent holds one: the others are
        # refused with fault 8004
        manager = acs.session_manager(max_in_flight=3)

        async def slow(method, payload):
            await asyncio.sleep(0.3)
            return b"done"

        agent = cpe.session_agent("py-acs-pipe", slow, max_queue=1)
        assert await asyncio.wait_for(manager.rpc("py-cpe-pipe", "Warmup"), WAIT) == b"done"
        rpcs = [asyncio.ensure_future(manager.rpc("py-cpe-pipe", f"M{i}")) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*rpcs, return_exceptions=True), WAIT)
        assert results[0] == b"done"
        faults = [r for r in results[1:] if isinstance(r, Fault)]
        assert faults and all(f.fault_code == 8004 for f in faults), results
        await agent.close()
        await manager.close()


async def test_agent_task_timeout_and_no_boot_event(hub):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    async with connect("py-acs-task") as acs, connect("py-cpe-task") as cpe:
        manager = acs.session_manager()
        events = manager.events()

        async def handler(method, payload):
            if method == "Slow":
                await asyncio.sleep(30)
            return b"quick"

        agent = cpe.session_agent("py-acs-task", handler, task_timeout=0.3, boot_event=False)
        # without the boot event no session opens by itself; the manager
        # learns of the agent at its first event
        with pytest.raises(asyncio.TimeoutError):
            await _next_of_within(events, "session_started", 0.5)
        await agent.add_event("4 VALUE CHANGE")
        started = await _next_of(events, "session_started")
        assert started.data["events"] == [("4 VALUE CHANGE", "")]
        # a handler running past task_timeout: fault 8002, and the queue goes on
        slow = asyncio.ensure_future(manager.rpc("py-cpe-task", "Slow"))
        quick = asyncio.ensure_future(manager.rpc("py-cpe-task", "Quick"))
        with pytest.raises(Fault) as e:
            await asyncio.wait_for(slow, 5)
        assert e.value.fault_code == 8002
        assert await asyncio.wait_for(quick, WAIT) == b"quick"
        with pytest.raises(ValueError):
            cpe.session_agent("x", handler, reconnect_min=2, reconnect_max=1)
        await agent.close()
        await manager.close()


async def _next_of_within(events, kind, seconds):
    async def find():
        async for e in events:
            if e.kind == kind:
                return e

    return await asyncio.wait_for(find(), seconds)


async def test_agent_journal_keeps_persistent_events_across_restarts(hub, tmp_path):
    def connect(cid):
        return switchboard.connect(cid, addr=hub.addr, token=hub.token)

    journal = tmp_path / "agent.journal"
    async with connect("py-cpe-journal") as cpe:
        # no manager yet: the event waits, and is journaled
        agent = cpe.session_agent(
            "py-acs-journal", lambda m, p: b"", journal=journal, response_timeout=0.3, retry_min_wait=5
        )
        await asyncio.wait_for(agent.add_event("M Download", "cmd-9"), WAIT)
        for _ in range(100):
            if journal.exists() and "M Download" in journal.read_text():
                break
            await asyncio.sleep(0.05)
        assert "M Download" in journal.read_text()
        await agent.close()

    async with connect("py-acs-journal") as acs, connect("py-cpe-journal") as cpe:
        manager = acs.session_manager()
        events = manager.events()
        # a restarted agent with the same journal delivers the event
        agent = cpe.session_agent("py-acs-journal", lambda m, p: b"", journal=str(journal))
        started = await _next_of(events, "session_started")
        while ("M Download", "cmd-9") not in started.data["events"]:
            started = await _next_of(events, "session_started")
        await agent.close()
        await manager.close()
