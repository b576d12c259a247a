"""The session engine from Python: a manager pushes ordered RPCs to an agent
whose handler is a Python coroutine."""

import asyncio

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
