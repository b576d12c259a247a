"""A client that answers requests, subscribes, and asks itself.

Start a hub first (`switchboard hub`), then run `python request_reply.py`:
the client finds the hub by discovery with the per-user secret. Set
SWITCHBOARD_ADDR and SWITCHBOARD_TOKEN to connect by address instead.
"""

import asyncio
import os

import switchboard


async def main() -> None:
    addr = os.environ.get("SWITCHBOARD_ADDR")
    token = os.environ.get("SWITCHBOARD_TOKEN")
    async with switchboard.connect("py-example", addr=addr, token=token) as client:

        async def shout(req: switchboard.Request) -> switchboard.Reply:
            # a reply with headers; returning just bytes or str works too
            return switchboard.Reply(req.payload.upper(), headers={"shouted": "yes"})

        await client.serve(shout)
        print(await client.request("py-example", "hello", timeout=5))  # b'HELLO'
        reply = await client.request("py-example", "hi", timeout=5, full=True)
        print(reply.payload, reply.header("shouted"))  # b'HI' b'yes'

        orders = await client.subscribe("orders.>")
        await client.publish("orders.eu", b"{}")
        async for msg in orders:
            print(msg.topic, msg.sender, msg.payload)
            break

        await client.kv.set("config.mode", "fast")
        print(await client.kv.get("config.mode"))  # b'fast'


if __name__ == "__main__":
    asyncio.run(main())
