"""The README's walkthrough in Python: serve, request, pub/sub, key/value.

Start a hub first (`switchboard hub`), then run `python walkthrough.py`.
Each client finds the hub by service name and proves the per-user secret,
like the CLI; set SWITCHBOARD_ADDR and SWITCHBOARD_TOKEN to connect by
address with a shared token instead.
"""

import asyncio
import os

import switchboard


def connect(client_id: str) -> switchboard.Connecting:
    return switchboard.connect(
        client_id,
        addr=os.environ.get("SWITCHBOARD_ADDR"),
        token=os.environ.get("SWITCHBOARD_TOKEN"),
    )


async def main() -> None:
    async with connect("upper") as upper, connect("walker") as me:
        # switchboard serve --id upper --exec 'tr a-z A-Z'
        async def shout(req: switchboard.Request) -> bytes:
            return req.payload.upper()

        await upper.serve(shout)

        # switchboard request --to upper 'hello'
        print((await me.request("upper", "hello", timeout=5)).decode())  # HELLO

        # switchboard sub 'orders.>' & switchboard pub orders.eu.created '{"id":1}'
        orders = await upper.subscribe("orders.>")
        await me.publish("orders.eu.created", '{"id":1}')
        async for msg in orders:
            print(msg.topic, msg.payload.decode())  # orders.eu.created {"id":1}
            break

        # switchboard kv set login.token abc123 && switchboard kv watch login.token
        await me.kv.set("login.token", "abc123")
        async with await upper.kv.watch("login.token") as changes:
            async for change in changes:
                print(change.key, change.value.decode())  # login.token abc123
                break


if __name__ == "__main__":
    asyncio.run(main())
