"""Verification of results: what the client checks of the hidden states servers send back, and
how it reports a server that lied. Pure functions and plain records (no I/O but the report file).

Every reply (`check_reply`): one tensor of the shape and dtype that was sent, finite, and of a
plausible scale: each position's RMS within `RMS_RATIO` of its input's. A transformer block adds
to its input (the residual stream), so no honest span returns zeros or a thousandth of what it
got; the bounds are wide on purpose: they catch junk (zeros, NaN, a scaled tensor), not subtle
lies. Those are for spot checks (zswarm.client.spot_checks), which compare replicas with
`relative_errors` against `tolerance`.

A liar found is distrusted for the rest of the client's connection (SequenceManager.distrust),
logged in one line and reported (zswarm.reports).
"""
from __future__ import annotations

import torch

from zswarm.errors import ImplausibleReplyError
from zswarm.reports import LieReport, ReportLog, read_reports  # noqa: F401 (the client's names for them)

# A reply position's RMS over its input's RMS: outside these bounds no span of real blocks computes.
RMS_RATIO = (1e-3, 1e4)

# The relative error (per position: ||a - b|| / ||b|| over the hidden size, the worst row) two honest
# replicas may show, by the least precise dtype involved (the wire's, each server's). Measured on
# honest replicas of the tiny llama over 1000 decode steps each (decode steps on one side, chunked
# replays on the other; tests/client/test_verification.py prints it): fp32 servers and wire 2.9e-6,
# fp16 servers and wire 2.7e-3. The bounds keep a wide margin (340x, 11x) over that, since real
# models' deeper spans and other kernels (GPU, other batch sizes) differ more.
TOLERANCE = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 6e-2}
# Servers of different quantisation compute different functions; unmeasured, so loose.
QUANTIZED_TOLERANCE = 0.25

def check_reply(inputs: torch.Tensor, out: torch.Tensor, *, peer_id: str, start: int, end: int) -> None:
    """Raise ImplausibleReplyError unless `out` could be blocks [start, end)'s answer to `inputs`."""
    def bad(why: str) -> ImplausibleReplyError:
        return ImplausibleReplyError(peer_id, why, blocks=(start, end))

    if tuple(out.shape) != tuple(inputs.shape):
        raise bad(f"answered shape {tuple(out.shape)}, expected {tuple(inputs.shape)}")
    if out.dtype != inputs.dtype:
        raise bad(f"answered {out.dtype}, sent {inputs.dtype}")
    if not bool(torch.isfinite(out).all()):
        raise bad(f"answered {int((~torch.isfinite(out)).sum())} NaN/inf values")
    rms_in = inputs.float().pow(2).mean(dim=-1).sqrt()
    rms_out = out.float().pow(2).mean(dim=-1).sqrt()
    known = rms_in > 0
    ratio = rms_out[known] / rms_in[known]
    low, high = RMS_RATIO
    if ratio.numel() and not bool(((ratio >= low) & (ratio <= high)).all()):
        raise bad(f"answered hidden states of RMS {float(ratio.min()):.3g}..{float(ratio.max()):.3g} times "
                  f"their inputs', outside [{low:g}, {high:g}]")


def check_gradient(grad: torch.Tensor, expected: torch.Size, *, peer_id: str, start: int, end: int) -> None:
    """A backward reply: the shape asked for and finite (a gradient's scale says nothing)."""
    if tuple(grad.shape) != tuple(expected) or not bool(torch.isfinite(grad).all()):
        raise ImplausibleReplyError(peer_id, f"answered a gradient of shape {tuple(grad.shape)} (expected "
                                    f"{tuple(expected)}) or with NaN/inf", blocks=(start, end))


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per position of `[batch, positions, hidden]` tensors: max over rows of ||a - b|| / ||b||."""
    a, b = a.float(), b.float()
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).amax(dim=0)


def tolerance(dtypes, quants=()) -> float:
    """The largest relative error honest replicas may show, given every dtype and quantisation involved."""
    if any(q not in ("none", "") for q in quants):
        return QUANTIZED_TOLERANCE
    return max(TOLERANCE.get(str(d).replace("torch.", ""), TOLERANCE["bfloat16"]) for d in dtypes)


def usable_replica(manager, start: int, end: int, exclude: set, rng) -> str | None:
    """A random server of `manager`'s view holding all of blocks [start, end), neither distrusted
    nor banned, not in `exclude` (the replica a check or a tiebreak asks)."""
    blocks = manager.blocks[start:end]
    holders = set(blocks[0]) if blocks else set()
    for block in blocks[1:]:
        holders &= set(block)
    choices = sorted(p for p in holders - exclude
                     if p not in manager.distrusted and not manager.bans.is_banned(p))
    return rng.choice(choices) if choices else None


def tiebreak(producer: str, checker: str, third: str, claim_ok: bool, checker_ok: bool) -> dict:
    """Who lied about one disputed output, by a third server's opinion of it: {peer: (verdict,
    witnesses)}. The side the third one sides with alone is right; siding with both or neither
    leaves no majority, and both sides are distrusted."""
    if checker_ok and not claim_ok:
        return {producer: ("outvoted", {checker, third})}
    if claim_ok and not checker_ok:
        return {checker: ("outvoted", {producer, third})}
    return {producer: ("no_majority", {checker, third}), checker: ("no_majority", {producer, third})}


def peer_tolerance(manager, wire_dtype, *peers: str) -> float:
    """`tolerance` for outputs of `peers` (their records' dtypes and quantisation) over `wire_dtype`."""
    dtypes, quants = [wire_dtype], []
    for peer in peers:
        try:
            record = manager.record(peer)
        except KeyError:  # distrusted meanwhile: its record is gone; assume the loosest dtype
            dtypes.append("bfloat16")
            continue
        dtypes.append(record.dtype)
        quants.append(record.quant)
    return tolerance(dtypes, quants)
