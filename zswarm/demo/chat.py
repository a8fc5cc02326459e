"""The demo's client side: the chat template, streaming with timings, one-shot and conversation."""

from __future__ import annotations

import sys
import time
from typing import Sequence

from zswarm.blocks import format_blocks
from zswarm.demo.config import DemoConfig, DemoError


def continuation(held: Sequence[int], full: Sequence[int]) -> tuple[int, list[int]]:
    """How to extend a session holding token ids `held` so it holds `full`: (how many of `held` to
    keep, the ids to send). Usually `held` is a prefix of `full`; where the reply re-tokenizes
    differently, the session rolls back to the common prefix."""
    keep = 0
    for a, b in zip(held, full):
        if a != b:
            break
        keep += 1
    if keep == len(full):  # always send at least one token, so there are logits to sample from
        keep -= 1
    return keep, list(full[keep:])


def speed_line(ttft: float | None, tokens: int, decode_seconds: float, route: str = "") -> str:
    if ttft is None or tokens == 0:
        return "no tokens generated"
    rate = (tokens - 1) / decode_seconds if tokens > 1 and decode_seconds > 0 else float("nan")
    text = f"time to first token {ttft:.2f} s, {tokens} tokens, {rate:.1f} tokens/s"
    return text + (f", route {route}" if route else "")


def make_streamer(tokenizer, out):
    """transformers' TextStreamer, also timing the first token and counting tokens."""
    from transformers import TextStreamer

    class TimedStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.started = time.perf_counter()
            self.first_at = self.last_at = None
            self.tokens = 0

        def put(self, value):
            if not self.next_tokens_are_prompt:
                now = time.perf_counter()
                self.first_at = self.first_at or now
                self.last_at = now
                self.tokens += value.numel()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

        def stats(self, route: str = "") -> str:
            ttft = None if self.first_at is None else self.first_at - self.started
            decode = 0.0 if self.first_at is None else self.last_at - self.first_at
            return speed_line(ttft, self.tokens, decode, route)

    return TimedStreamer()


def route_text(session) -> str:
    return " -> ".join(format_blocks(s.start, s.end) for s in getattr(session, "spans", []))


class Chat:
    def __init__(self, config: DemoConfig, initial_peers: list[str]):
        import torch
        from transformers import AutoTokenizer

        from zswarm import AutoDistributedModelForCausalLM
        from zswarm.models import resolve_model

        self.config, self.torch = config, torch
        source = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        if not getattr(self.tokenizer, "chat_template", None):
            raise DemoError(f"{config.model} has no chat template; the demo needs a chat (instruct) model")
        self.model = AutoDistributedModelForCausalLM.from_pretrained(config.model, initial_peers=initial_peers,
                                                                     show_route=config.verbose)

    def close(self) -> None:
        self.model.close()

    def _generate(self, ids: list[int], session, out) -> tuple[list[int], object]:
        streamer = make_streamer(self.tokenizer, out)
        kwargs = dict(max_new_tokens=self.config.max_new_tokens, streamer=streamer, session=session,
                      pad_token_id=self.tokenizer.eos_token_id)
        if self.config.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.config.temperature, top_p=0.9)
        else:
            kwargs.update(do_sample=False)
        input_ids = self.torch.tensor([ids])
        out_ids = self.model.generate(input_ids, attention_mask=self.torch.ones_like(input_ids), **kwargs)
        return out_ids[0, len(ids):].tolist(), streamer

    def ask(self, prompt: str, out=sys.stdout) -> str:
        """One question, one streamed answer; returns the answer's text."""
        ids = self._template([{"role": "user", "content": prompt}])
        with self.model.inference_session(max_length=len(ids) + self.config.max_new_tokens) as session:
            reply, streamer = self._generate(ids, session, out)
            route = route_text(session)
        out.write(f"[{streamer.stats(route)}]\n")
        out.flush()
        return self.tokenizer.decode(reply, skip_special_tokens=True)

    def converse(self, read=input, out=sys.stdout, first: str | None = None) -> int:
        """A prompt loop in one inference session: the servers keep the whole conversation, each
        turn sends only its new tokens. `first` is the first turn's prompt, if given. Ends on an
        empty line or end of input; returns the number of turns."""
        messages: list[dict] = []
        turns = 0
        out.write(f"Chat with {self.config.model} through the swarm; an empty line ends it.\n")
        with self.model.inference_session(max_length=self.config.max_length) as session:
            while True:
                try:
                    if first:
                        line, first = first.strip(), None
                        out.write(f"you> {line}\n")
                    else:
                        line = read("you> ").strip()
                except EOFError:
                    break
                if not line:
                    break
                messages.append({"role": "user", "content": line})
                full = self._template(messages)
                if len(full) + self.config.max_new_tokens > self.config.max_length:
                    out.write(f"(the conversation would outgrow --max-length {self.config.max_length}; ending it)\n")
                    break
                held = [] if session.output_ids is None else session.output_ids[0].tolist()
                keep, new = continuation(held, full)
                if keep < len(held):
                    session.rollback(min(session.position, keep))
                    session.output_ids = session.output_ids[:, :keep] if keep else None
                out.write("assistant> ")
                out.flush()
                reply, streamer = self._generate(new, session, out)
                text = self.tokenizer.decode(reply, skip_special_tokens=True)
                messages.append({"role": "assistant", "content": text})
                out.write(f"[{streamer.stats(route_text(session))}, conversation {session.output_ids.shape[1]} tokens]\n")
                out.flush()
                turns += 1
        return turns

    def _template(self, messages: list[dict]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)
