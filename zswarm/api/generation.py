"""One API request's generation: the request's sampling as transformers' generate arguments, the
completions' text as it grows, and the run itself, on a worker thread, as one swarm session.

    run = Generation(model, tokenizer, prompt_ids, settings, on_event=...)
    rows = run.run()        # blocking; each row: .text, .finish_reason, .tokens

Sampling does not go through torch's global generator: concurrent requests would share (and
reorder) it, so a seed would not reproduce. `SeededSampler` draws the token with the request's
own `torch.Generator` and leaves only it standing, and generate runs greedy on top (do_sample
False): with temperature 0 there is no sampler and the run is plain greedy, the same as
`model.generate(..., do_sample=False)`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from zswarm.errors import (ApiBadRequest, ApiError, ApiSwarmUnavailable, SessionLengthError, TooManyTokensError,
                           ZswarmError)

REPLACEMENT = "\ufffd"  # what a byte-level decode shows for a character whose bytes have not all come


@dataclass(frozen=True)
class Sampling:
    """What a request asks of the tokens: how many, how drawn, where to stop, how many rows."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class SeededSampler(LogitsProcessor):
    """Draws each row's next token from temperature/top-k/top-p-warped probabilities with its own
    generator, then sets every other token to -inf, so greedy search picks the drawn one."""

    def __init__(self, sampling: Sampling):
        self.warpers = [TemperatureLogitsWarper(sampling.temperature)]
        if sampling.top_k:
            self.warpers.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))
        self.generator = torch.Generator(device="cpu")
        if sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(sampling.seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float().cpu(), dim=-1)
        drawn = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)


@dataclass
class CompletionText:
    """One completion (a row of the batch) as its tokens come: its text, cut before the first stop
    string, and how much of it is safe to send (`ready`): a trailing half-character, or an end
    that may yet become a stop string, is held back until the next tokens settle it."""

    decode: Callable[[list[int]], str]
    stop: Sequence[str]
    eos: frozenset
    max_tokens: int
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None  # "stop" | "length" once finished
    sent: int = 0  # characters of `text` handed out by `take`

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def add(self, token: int) -> None:
        if self.finish_reason is not None:
            return
        self.ids.append(token)
        if token in self.eos:
            self.finish_reason = "stop"
            return
        text = self.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = text[:cut], "stop"
        else:
            self.text = text
            if len(self.ids) >= self.max_tokens:
                self.finish_reason = "length"

    def ready(self) -> int:
        """How many characters of `text` no later token can change."""
        if self.finish_reason is not None:
            return len(self.text)
        end = len(self.text)
        while end and self.text[end - 1] == REPLACEMENT:
            end -= 1
        held = max((k for s in self.stop for k in range(1, len(s)) if self.text[:end].endswith(s[:k])), default=0)
        return end - held

    def take(self) -> str:
        """The text not handed out yet that is safe to send."""
        ready = self.ready()
        if ready <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:ready], ready
        return delta


class _Watch(StoppingCriteria):
    """Called by generate after every new token: feeds each row its token, reports what changed,
    and stops the rows that finished (or every row once the request was cancelled)."""

    def __init__(self, rows: list[CompletionText], prompt_length: int, on_token: Callable[[], None],
                 cancelled: threading.Event):
        self.rows, self.prompt_length, self.on_token, self.cancelled = rows, prompt_length, on_token, cancelled

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if input_ids.shape[1] > self.prompt_length:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                row.add(token)
            self.on_token()
        done = [row.finish_reason is not None or self.cancelled.is_set() for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def public_api_error(exc: BaseException, model_id: str) -> ApiError | None:
    """The API's error for what a generation raised: the swarm's faults are 503, a request too long
    for the servers' caps 400; None for a bug of ours (the app answers 500 and logs it)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (TooManyTokensError, SessionLengthError)):
        return ApiBadRequest(f"the request is too long for the swarm: {exc}", code="context_length_exceeded")
    if isinstance(exc, ZswarmError):
        return ApiSwarmUnavailable(f"the swarm cannot serve {model_id} now: {exc}", code="swarm_unavailable")
    return None


class Generation:
    """One request's run through the swarm. `on_update()` is called on the worker thread after each
    step (read `rows`' `take()` then); `cancel()` from any thread ends it after the current step."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], sampling: Sampling, *, eos: Sequence[int] = (),
                 on_update: Callable[[], None] = lambda: None):
        self.model, self.tokenizer = model, tokenizer
        self.prompt_ids, self.sampling = list(prompt_ids), sampling
        self.eos = frozenset(int(e) for e in eos)
        self.on_update = on_update
        self.cancelled = threading.Event()
        decode = self._decode
        self.rows = [CompletionText(decode, sampling.stop, self.eos, sampling.max_tokens) for _ in range(sampling.n)]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def cancel(self) -> None:
        self.cancelled.set()

    def run(self) -> list[CompletionText]:
        prompt, n, sampling = self.prompt_ids, self.sampling.n, self.sampling
        ids = torch.tensor([prompt] * n, dtype=torch.long)
        kwargs = dict(max_new_tokens=sampling.max_tokens, do_sample=False, attention_mask=torch.ones_like(ids),
                      stopping_criteria=StoppingCriteriaList([_Watch(self.rows, len(prompt), self.on_update,
                                                                     self.cancelled)]))
        if self.eos:
            kwargs["eos_token_id"] = sorted(self.eos)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos, default=0)
        kwargs["pad_token_id"] = pad
        if not sampling.greedy:
            kwargs["logits_processor"] = [SeededSampler(sampling)]
        with self.model.inference_session(max_length=len(prompt) + sampling.max_tokens) as session:
            self.model.generate(ids, session=session, **kwargs)
        for row in self.rows:  # generate ended on max_new_tokens or every row's end: nothing is pending
            if row.finish_reason is None:
                row.finish_reason = "length"
        return self.rows
