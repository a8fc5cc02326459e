"""The JSON OpenAI's clients expect back: completions, their streamed chunks, usage, errors.
Pure: results in, dicts out."""
from __future__ import annotations

import uuid

from zswarm.errors import ApiError


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def error_body(message: str, type_: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def api_error_body(exc: ApiError) -> dict:
    return error_body(str(exc), exc.type, code=exc.code, param=exc.param)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Shapes:
    """The objects of one request, chat or text completion: same id, model and time in each."""

    def __init__(self, chat: bool, model_id: str, created: int):
        self.chat, self.model_id, self.created = chat, model_id, created
        self.id = new_id("chatcmpl" if chat else "cmpl")

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_id,
                "system_fingerprint": None}

    def completion(self, rows, prompt_tokens: int) -> dict:
        """The whole answer: one choice per row."""
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": row.text},
                        "finish_reason": row.finish_reason, "logprobs": None} for i, row in enumerate(rows)]
        else:
            choices = [{"index": i, "text": row.text, "finish_reason": row.finish_reason, "logprobs": None}
                       for i, row in enumerate(rows)]
        return dict(self._head("chat.completion" if self.chat else "text_completion"), choices=choices,
                    usage=usage(prompt_tokens, sum(row.tokens for row in rows)))

    def chunk(self, choices: list[dict], **extra) -> dict:
        return dict(self._head("chat.completion.chunk" if self.chat else "text_completion"), choices=choices, **extra)

    def choice_delta(self, index: int, text: str | None, finish_reason: str | None, *, first: bool = False) -> dict:
        """A streamed choice: chat's carries a `delta` (the role in the first), a completion's its `text`."""
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """stream_options.include_usage: a last chunk with no choices and the usage."""
        return self.chunk([], usage=usage(prompt_tokens, completion_tokens))
