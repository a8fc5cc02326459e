"""A stand-alone echo RpcServer for fault tests: `python echo_server_process.py PORT SECRET`
(SECRET: its CURVE secret key, base32, so a restart keeps its address). Prints "ready tcp://..."
once listening, then serves until killed."""
import asyncio
import os
import sys

from wire import CurveKeys, RpcServer
from wire.endpoint import parse_key


async def main(port: int, secret: bytes) -> None:
    async def echo(request):
        return {**request.meta, "pid": os.getpid()}, request.tensors
    async def hang(request):  # a call that stays in flight until the process is killed
        await asyncio.Event().wait()
    server = RpcServer({"echo": echo, "hang": hang}, port=port, keys=CurveKeys.from_secret(secret))
    await server.start()
    print("ready", server.address, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), parse_key(sys.argv[2])))
