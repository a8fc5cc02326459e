"""A lying server, for tests only (it is no part of zswarm-server or its --help):

    python -m zswarm.testing.liar ZSWARM-SERVER-ARGS... --lie LIE [--lie-after N]

(`--lie` and `--lie-after` may stand anywhere.) LIE is how its hidden states are wrong:
`perturb` (noise of a fifth of their RMS: plausible in scale, wrong in value, so only spot
checks catch it), `zero`, `nan`, or `honest` (right answers: only the record lies). Every liar announces an inflated record (throughput 1e12 tokens/s, so
every client prefers it until it has measured it) and answers the protocol correctly. With
`--lie-after N` its first N inference steps (all sessions together) are honest.
"""
from __future__ import annotations

import sys

import torch

from zswarm.server.handlers import ServerRPC
from zswarm.server.server import Server

LIES = ("perturb", "zero", "nan", "honest")
INFLATED_THROUGHPUT = "1e12"


def corrupt(tensor: torch.Tensor, lie: str, generator: torch.Generator) -> torch.Tensor:
    if lie == "zero":
        return torch.zeros_like(tensor)
    if lie == "nan":
        return torch.full_like(tensor, float("nan"))
    if lie == "perturb":
        scale = tensor.float().pow(2).mean().sqrt()
        noise = torch.randn(tensor.shape, generator=generator) * scale * 0.2
        return (tensor.float() + noise).to(tensor.dtype)
    return tensor


def lying_rpc(lie: str, lie_after: int) -> type:
    class LyingServerRPC(ServerRPC):
        steps = 0
        generator = torch.Generator().manual_seed(0)

        def _lie(self, reply):
            meta, tensors = reply
            LyingServerRPC.steps += 1
            if LyingServerRPC.steps <= lie_after:
                return reply
            return meta, [corrupt(t, lie, self.generator) for t in tensors]

        async def rpc_inference_step(self, request):
            return self._lie(await super().rpc_inference_step(request))

        async def rpc_forward(self, request):
            return self._lie(await super().rpc_forward(request))

    return LyingServerRPC


def _pop(argv: list, flag: str):
    if flag not in argv:
        return None
    at = argv.index(flag)
    value = argv[at + 1] if at + 1 < len(argv) else None
    del argv[at:at + 2]
    return value


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lie, lie_after = _pop(argv, "--lie"), _pop(argv, "--lie-after")
    if lie not in LIES or (lie_after is not None and not lie_after.isdigit()):
        print(__doc__, file=sys.stderr)
        return 2
    lie_after = int(lie_after or 0)
    from zswarm.server import cli

    class LyingServer(Server):
        rpc_class = lying_rpc(lie, lie_after)

    # the last --throughput given wins: the inflated one
    return cli.main(argv + ["--throughput", INFLATED_THROUGHPUT], server_class=LyingServer)


if __name__ == "__main__":
    sys.exit(main())
