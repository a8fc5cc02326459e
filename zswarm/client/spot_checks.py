"""Spot checks: a fraction of an inference session's steps recomputed on a replica and compared.

Each route span is checked once in every window of W = round(1 / spot_check_rate) of its steps,
at a step drawn at random inside the window, so a server cannot tell which steps are checked and
one that lies on every step is caught within W steps. A check sends the step to a *checker*: a
session on another server holding the same blocks, kept open beside the span, which first gets
the inputs it lacks from the history the session keeps for replay (`history[span.start]`). Its
outputs are compared

- at the new positions, with what the span answered now, and
- at the replayed positions, with what the route recorded at `history[span.end]` for them,
  wherever that was computed by a span of the same blocks (each position's producer is kept),

so every position since the checker opened is audited, not only the checked step: a server that
lies only now and then, or only on prefill, is caught at the next check of its span too.

The comparison is `relative_errors` against the dtype-aware `tolerance` (verification.py). On a
mismatch a third server (fresh, rebuilt from the history) breaks the tie at the disputed
positions: whoever it disagrees with is the liar, distrusted for the rest of the connection and
reported; with no third server, or one that agrees with neither, both sides are. A checker found
lying is replaced and the step goes on. A route server found lying means outputs already handed
out were wrong: the session drops its route, rolls back to the first wrong position and raises
RetractedResultsError (generate catches it and runs its call again, see model.py).

What a check costs: while it runs, the step waits for the slower of the span and the checker
(they run concurrently), and the checker computes the tokens since its last check as one
replay; the checker holds one more cache of the session's length on another server.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

import torch

from zswarm.blocks import format_blocks
from zswarm.client.verification import LieReport, peer_tolerance, relative_errors, tiebreak, usable_replica
from zswarm.errors import RetractedResultsError, WrongResultsError, describe_error

if TYPE_CHECKING:
    from zswarm.client.inference_session import InferenceSession, SpanSession

logger = logging.getLogger(__name__)


class SpotChecks:
    def __init__(self, session: "InferenceSession", rate: float, rng: random.Random | None = None):
        self.session = session
        self.window = max(1, round(1 / rate)) if rate > 0 else 0
        self.rng = rng or random.Random()
        self.checkers: dict[tuple[int, int], "SpanSession"] = {}
        self._stale: list["SpanSession"] = []  # checkers to close on the loop
        self._schedule: dict[tuple[str, int, int], list[int]] = {}  # span -> [steps seen, window start, check at]
        # For tools and tests: checks run, positions compared, and the largest relative error an
        # agreeing comparison showed (what honest replicas really differ by).
        self.checks = 0
        self.compared = 0
        self.max_agreeing_error = 0.0

    # ---- the hook the session's step loop calls -------------------------------------------------
    async def step(self, span: "SpanSession", hidden: torch.Tensor):
        """`session._step_span(span, hidden)`, checked on a replica when this step of the span is due."""
        session = self.session
        if self._stale:
            self._close(self._stale)
            self._stale = []
        checker = self._checker_for(span) if self._due(span) else None
        if checker is None:
            return await session._step_span(span, hidden)
        check = asyncio.ensure_future(session._step_span(checker, hidden))
        try:
            result = await session._step_span(span, hidden)
        except BaseException:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)
            raise
        try:
            checked = await check
        except Exception as exc:
            self._checker_failed(span, checker, exc)
            return result
        self.checks += 1
        await self._compare(span, checker, hidden, result, checked)
        return result

    def _due(self, span: "SpanSession") -> bool:
        if not self.window:
            return False
        key = (span.peer_id, span.start, span.end)
        seen, window_start, at = self._schedule.setdefault(key, [0, 0, self.rng.randrange(self.window)])
        due = seen == at
        if seen + 1 == window_start + self.window:  # the next window: a check at a random step of it
            window_start += self.window
            at = window_start + self.rng.randrange(self.window)
        self._schedule[key] = [seen + 1, window_start, at]
        return due

    # ---- checkers --------------------------------------------------------------------------------
    def _checker_for(self, span: "SpanSession") -> "SpanSession | None":
        key = (span.start, span.end)
        checker = self.checkers.get(key)
        if checker is not None and checker.peer_id != span.peer_id and self._usable(checker.peer_id):
            return checker
        if checker is not None:
            self._close([checker])
        peer = self._replica(span.start, span.end, exclude={span.peer_id})
        if peer is None:
            self.checkers.pop(key, None)
            return None
        from zswarm.client.inference_session import SpanSession

        checker = self.checkers[key] = SpanSession(peer, self.session.manager.address(peer), span.start, span.end)
        return checker

    def _usable(self, peer_id: str) -> bool:
        manager = self.session.manager
        return peer_id not in manager.distrusted and not manager.bans.is_banned(peer_id)

    def _replica(self, start: int, end: int, exclude: set[str]) -> str | None:
        return usable_replica(self.session.manager, start, end, exclude, self.rng)

    def _checker_failed(self, span: "SpanSession", checker: "SpanSession", exc: BaseException) -> None:
        logger.info("spot check of blocks %s on %s failed (%s); the step goes on unchecked",
                    format_blocks(span.start, span.end), checker.peer_id, describe_error(exc))
        self.session.manager.on_failure(checker.peer_id, exc)
        self.checkers.pop((checker.start, checker.end), None)
        self._close([checker])

    def _close(self, spans: list["SpanSession"]) -> None:
        task = asyncio.ensure_future(self.session._close_servers(spans))
        self.session._closing.add(task)
        task.add_done_callback(self.session._closing.discard)

    # ---- comparing -------------------------------------------------------------------------------
    async def _compare(self, span, checker, hidden, result, checked) -> None:
        session = self.session
        position, new = session.position, hidden.shape[1]
        out = result[2]
        checked_from, checked_replay, checked_out = checked
        recorded = session.history.get(span.end)
        audited = []  # replayed positions whose recorded output a span of these same blocks computed
        if checked_replay is not None and recorded is not None and recorded.length >= position:
            audited = [p for p in range(checked_from, position)
                       if recorded.producers[p] is not None and recorded.producers[p][1] == span.start]
        claimed, mine, producers = [], [], []
        if audited:
            index = torch.tensor(audited)
            claimed.append(recorded.read(0, position)[:, index])
            mine.append(checked_replay[:, index - checked_from])
            producers += [recorded.producers[p][0] for p in audited]
        claimed.append(out)
        mine.append(checked_out)
        producers += [span.peer_id] * new
        positions = audited + list(range(position, position + new))
        claimed, mine = torch.cat(claimed, dim=1), torch.cat(mine, dim=1)
        errors = relative_errors(claimed, mine)
        self.compared += len(positions)
        tol = self._tolerance(span.peer_id, checker.peer_id, *set(producers))
        wrong = (errors > tol).nonzero().flatten().tolist()
        if not wrong:
            self.max_agreeing_error = max(self.max_agreeing_error, float(errors.max()))
            return
        await self._judge(span, checker, hidden, [positions[i] for i in wrong], claimed[:, wrong], mine[:, wrong],
                          [producers[i] for i in wrong], errors[wrong], tol)

    async def _judge(self, span, checker, hidden, positions, claimed, mine, producers, errors, tol) -> None:
        """Disputed `positions` (claimed by `producers`, the checker says `mine`): a third server
        decides; whoever it disagrees with is distrusted and reported."""
        session = self.session
        accused = sorted(set(producers))
        third = self._replica(span.start, span.end, exclude={checker.peer_id, *accused})
        verdicts: dict[str, tuple[str, set[str]]] = {}  # peer -> (verdict, witnesses)
        opinion = None
        if third is not None:
            try:
                opinion = await self._third_opinion(third, span, hidden)
            except Exception as exc:
                session.manager.on_failure(third, exc)
        if opinion is not None:
            theirs = opinion[:, torch.tensor(positions)]
            with_claim = (relative_errors(theirs, claimed) <= tol).tolist()
            with_checker = (relative_errors(theirs, mine) <= tol).tolist()
            for producer, claim_ok, checker_ok in zip(producers, with_claim, with_checker):
                for peer, found in tiebreak(producer, checker.peer_id, third, claim_ok, checker_ok).items():
                    verdicts.setdefault(peer, found)
        else:  # no one to break the tie: trust neither side
            verdicts = {peer: ("no_majority", {checker.peer_id}) for peer in accused}
            verdicts[checker.peer_id] = ("no_majority", set(accused))
        detail = (f"{len(positions)} positions from {positions[0]} differ beyond tolerance {tol:g} "
                  f"(worst relative error {float(errors.max()):.3g})")
        for peer, (verdict, witnesses) in verdicts.items():
            report = LieReport(peer_id=peer, model_id=session.manager.model_id, start=span.start, end=span.end,
                               verdict=verdict, position=positions[0], relative_error=float(errors.max()),
                               tolerance=tol, witnesses=sorted(witnesses - {peer}), detail=detail)
            session.manager.distrust(peer, WrongResultsError(peer, f"{verdict}: {detail}",
                                                             blocks=(span.start, span.end)), report)
        if checker.peer_id in verdicts:
            self.checkers.pop((checker.start, checker.end), None)
            self._close([checker])
        wrong_claims = [p for p, producer in zip(positions, producers) if producer in verdicts]
        if wrong_claims:
            raise RetractedResultsError(min(wrong_claims), sorted(set(verdicts) & set(producers)),
                                        f"spot check of blocks {format_blocks(span.start, span.end)}")

    async def _third_opinion(self, peer: str, span, hidden) -> torch.Tensor:
        """Blocks [span.start, span.end) on `peer` from position 0: its outputs at every position."""
        from zswarm.client.inference_session import SpanSession

        session = self.session
        third = SpanSession(peer, session.manager.address(peer), span.start, span.end)
        try:
            _, replayed, out = await session._step_span(third, hidden)
        finally:
            self._close([third])
        return out if replayed is None else torch.cat([replayed, out], dim=1)

    def _tolerance(self, *peers: str) -> float:
        return peer_tolerance(self.session.manager, self.session.wire_dtype, *peers)

    # ---- the session's own changes ---------------------------------------------------------------
    def rollback(self, position: int) -> None:
        for checker in self.checkers.values():
            checker.position = min(checker.position, position)

    def forget(self) -> None:
        """Rows were reordered (beam search): checkers rebuild from the reordered history. Called
        off the client's loop (transformers reorders the cache), so they are closed at the next step."""
        self._stale += self.checkers.values()
        self.checkers = {}

    def close(self) -> list["SpanSession"]:
        """The checkers' sessions, for the session to close with its own."""
        checkers, self.checkers, self._stale = [*self.checkers.values(), *self._stale], {}, []
        return checkers

