"""A stand-alone echo RpcServer for fault tests: `python echo_server_process.py PORT`.
Prints "ready tcp://..." once listening, then serves until killed."""
import asyncio
import os
import sys

from wire import RpcServer


async def main(port: int) -> None:
    async def echo(request):
        return {**request.meta, "pid": os.getpid()}, request.tensors
    server = RpcServer({"echo": echo}, port=port)
    await server.start()
    print("ready", server.address, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
