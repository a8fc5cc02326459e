"""Spot checks of `forward` calls (training, `model(input_ids)`): a call in 1 / spot_check_rate,
drawn at random, is computed again on a replica of the same blocks and compared.

A forward call carries its whole input and has no session, so a check needs no history: the
replica gets the same request. The comparison is the one inference spot checks make
(`relative_errors` against `tolerance`, per position), and so is a dispute: a third server
breaks the tie (`verification.tiebreak`), whoever lost is distrusted and reported, and a route
server found lying fails its call (WrongResultsError), so the forward runs again on a route
without it. The replica's answer is never used in place of the route's: what the client gets
always comes from a server that stood the check.

Not checked: `backward`. Its gradients depend on the forward outputs a route gave, and their
honest spread across replicas has not been measured, so no tolerance can be stated for them yet.
"""
from __future__ import annotations

import logging
import random
from typing import Awaitable, Callable

import torch

from zswarm.blocks import format_blocks
from zswarm.client.verification import LieReport, peer_tolerance, relative_errors, tiebreak, usable_replica
from zswarm.errors import WrongResultsError, describe_error

logger = logging.getLogger(__name__)

Forward = Callable[[str], Awaitable[torch.Tensor]]  # peer id -> that server's output of the same request


class ForwardChecks:
    def __init__(self, manager, rate: float, wire_dtype: torch.dtype, rng: random.Random | None = None):
        self.manager, self.rate, self.wire_dtype = manager, rate, wire_dtype
        self.rng = rng or random.Random()
        self.checks = 0  # for tools and tests

    def due(self) -> bool:
        return self.rate > 0 and self.rng.random() < self.rate

    async def check(self, peer_id: str, start: int, end: int, claimed: torch.Tensor, forward: Forward) -> None:
        """Compare `claimed` (peer_id's output of blocks [start, end)) with a replica's; raises
        WrongResultsError if peer_id is found lying. A replica that fails is skipped."""
        checker = usable_replica(self.manager, start, end, {peer_id}, self.rng)
        if checker is None:
            return
        try:
            mine = await forward(checker)
        except Exception as exc:
            logger.info("forward spot check of blocks %s on %s failed (%s); the call goes on unchecked",
                        format_blocks(start, end), checker, describe_error(exc))
            self.manager.on_failure(checker, exc)
            return
        self.checks += 1
        tol = self._tolerance(peer_id, checker)
        errors = relative_errors(claimed, mine)
        if not bool((errors > tol).any()):
            return
        worst = float(errors.max())
        third = usable_replica(self.manager, start, end, {peer_id, checker}, self.rng)
        found = {peer_id: ("no_majority", {checker}), checker: ("no_majority", {peer_id})}
        if third is not None:
            try:
                theirs = await forward(third)
                found = tiebreak(peer_id, checker, third, bool((relative_errors(theirs, claimed) <= tol).all()),
                                bool((relative_errors(theirs, mine) <= tol).all()))
            except Exception as exc:
                self.manager.on_failure(third, exc)
        first = int((errors > tol).nonzero()[0])
        detail = f"forward of {claimed.shape[1]} positions differs from position {first} beyond tolerance {tol:g} " \
                 f"(worst relative error {worst:.3g})"
        for peer, (said, witnesses) in found.items():
            report = LieReport(peer_id=peer, model_id=self.manager.model_id, start=start, end=end, verdict=said,
                               position=first, relative_error=worst, tolerance=tol,
                               witnesses=sorted(witnesses - {peer}), detail=detail)
            self.manager.distrust(peer, WrongResultsError(peer, f"{said}: {detail}", blocks=(start, end)), report)
        if peer_id in found:
            raise WrongResultsError(peer_id, f"{found[peer_id][0]}: {detail}", blocks=(start, end))

    def _tolerance(self, *peers: str) -> float:
        return peer_tolerance(self.manager, self.wire_dtype, *peers)
