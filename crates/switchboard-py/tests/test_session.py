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
