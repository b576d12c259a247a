"""A process that ends right after an await exits cleanly.

The Rust thread that resolves an awaitable may still be in Python when the
main thread runs on and the interpreter finalizes; entering a finalizing
interpreter from a Rust thread aborts the process. The package's atexit
hook (``_native.exiting``) waits for such threads and keeps them out.
Without it about one run in eight of this script aborted or crashed.
"""

import subprocess
import sys

SCRIPT = """
import asyncio, atexit, os, sys
import switchboard

async def main():
    c = await switchboard.connect("py-exit-%d" % os.getpid(), addr=sys.argv[1], token=sys.argv[2])
    await c.serve(lambda r: r.payload)
    for _ in range(3):
        await c.request(c.id, b"x")
    await c.publish("t", b"x")  # and end right after it, the client left open

asyncio.run(main())
"""


def test_ending_right_after_an_await_never_aborts(hub):
    for _ in range(25):
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, hub.addr, hub.token],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
