"""The zswarm-api HTTP app (FastAPI on uvicorn): OpenAI's /v1/chat/completions, /v1/completions and
/v1/models, and the swarm health page (/health, /health.json).

Each completion request is one `Generation` on a worker thread (at most `max_concurrent` at
once; anyio's limiter queues the rest) and one inference session in the swarm, so requests run
side by side. A streamed request waits for its first tokens before it answers: a swarm that
cannot serve gets a 503 with a JSON error, not a 200 stream that breaks; an error after that
arrives as a last `data: {"error": ...}` event. A client that hangs up cancels its generation
after the current step, freeing its servers' cache.

Every error is OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad
body (pydantic names the field), 404 for a model this API does not serve, 503 when the swarm
cannot serve; a bug of ours is a 500 with no traceback in the body (the log has it).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import anyio
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException as StarletteHTTPException

from zswarm.api.config import ApiConfig
from zswarm.api.generation import Generation, Sampling, public_api_error
from zswarm.api.openai_shapes import Shapes, api_error_body, error_body
from zswarm.api.reports import SwarmReports
from zswarm.api.schema import ChatCompletionRequest, CompletionRequest, SamplingRequest
from zswarm.api.served import ServedModel, ServedModels
from zswarm.errors import ApiBadRequest, ApiError
from zswarm.inspect.health_page import health_json, render_health_html

logger = logging.getLogger(__name__)

DONE = format_sse_event(data_str="[DONE]")


def _sse(data: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False))


def create_app(config: ApiConfig, served: ServedModels, reports: SwarmReports) -> FastAPI:
    app = FastAPI(title="zswarm-api", docs_url=None, redoc_url=None)
    limiter = anyio.CapacityLimiter(config.max_concurrent)

    # ---- errors ------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(api_error_body(exc), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in exc.errors()[:5])
        return JSONResponse(error_body(message or "invalid request body", "invalid_request_error",
                                       param=".".join(where) or None, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", code=str(exc.status_code)),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body("internal error in zswarm-api (its log has the details)", "server_error"),
                            status_code=500)

    # ---- models and health ---------------------------------------------------------------------------
    async def report():
        return await to_thread.run_sync(reports.latest)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": models_list(await report(), served)}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        for entry in models_list(await report(), served):
            if entry["id"] == model_id:
                return entry
        served.get(model_id)  # raises the 404
        raise AssertionError("unreachable: every served model is listed")

    @app.get("/health", response_class=HTMLResponse)
    async def health_page():
        return render_health_html(await report(), refresh_s=config.health_refresh_s, served=tuple(served.by_id))

    @app.get("/health.json")
    async def health_data():
        return health_json(await report())

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/health")

    # ---- completions -----------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        model = served.get(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = await to_thread.run_sync(model.chat_prompt, messages)
        return await complete(model, body, prompt, Shapes(True, model.model_id, int(time.time())))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        model = served.get(body.model)
        prompt = await to_thread.run_sync(model.text_prompt, body.prompt)
        return await complete(model, body, prompt, Shapes(False, model.model_id, int(time.time())))

    async def complete(model: ServedModel, body: SamplingRequest, prompt: list[int], shapes: Shapes):
        if body.n > config.max_n:
            raise ApiBadRequest(f"n is at most {config.max_n} here", param="n")
        sampling = Sampling(max_tokens=model.max_tokens_for(len(prompt), body.max_tokens, config.default_max_tokens),
                            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                            stop=tuple(body.stop), n=body.n)
        generation = Generation(model.model, model.tokenizer, prompt, sampling, eos=model.eos_ids)
        if body.stream:
            return await stream(model, generation, shapes, body.include_usage)
        began = time.monotonic()
        try:
            rows = await to_thread.run_sync(generation.run, limiter=limiter)
        except Exception as exc:
            raise _public(exc, model) from exc
        _log(model, generation, began)
        return shapes.completion(rows, len(prompt))

    async def stream(model: ServedModel, generation: Generation, shapes: Shapes, include_usage: bool):
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        reported = [False] * len(generation.rows)

        def changes():  # on the worker thread after each step; at the end on the loop
            out = []
            for i, row in enumerate(generation.rows):
                text = row.take()
                finish = row.finish_reason if row.finish_reason is not None and not reported[i] else None
                if finish is not None and row.sent == len(row.text):
                    reported[i] = True
                if text or finish:
                    out.append((i, text, finish))
            return out

        generation.on_update = lambda: loop.call_soon_threadsafe(updates.put_nowait, changes())
        began = time.monotonic()
        task = asyncio.ensure_future(to_thread.run_sync(generation.run, limiter=limiter))
        getter = asyncio.ensure_future(updates.get())
        await asyncio.wait([task, getter], return_when=asyncio.FIRST_COMPLETED)
        if not getter.done() and task.exception() is not None:  # failed before its first token
            getter.cancel()
            raise _public(task.exception(), model) from task.exception()

        async def events():
            try:
                yield _sse(shapes.chunk([shapes.choice_delta(i, "", None, first=True)
                                         for i in range(len(generation.rows))]))
                pending = getter
                while True:
                    if pending is None:
                        pending = asyncio.ensure_future(updates.get())
                    await asyncio.wait([task, pending], return_when=asyncio.FIRST_COMPLETED)
                    if pending.done():
                        batch, pending = pending.result(), None
                    elif task.done():
                        pending.cancel()
                        batch = []
                        while not updates.empty():
                            batch += updates.get_nowait()
                        if task.exception() is None:
                            batch += changes()  # the worker is done: flush what it held back
                        for chunk in _chunks(shapes, batch):
                            yield chunk
                        break
                    for chunk in _chunks(shapes, batch):
                        yield chunk
                if task.exception() is not None:
                    error = _public(task.exception(), model)
                    yield _sse(api_error_body(error) if isinstance(error, ApiError) else
                               error_body("internal error in zswarm-api", "server_error"))
                    return
                _log(model, generation, began)
                if include_usage:
                    yield _sse(shapes.usage_chunk(len(generation.prompt_ids), sum(r.tokens for r in generation.rows)))
                yield DONE
            finally:
                generation.cancel()  # the client hung up (or we are done): stop after this step

        return EventSourceResponse(events())

    return app


def _chunks(shapes: Shapes, batch):
    for i, text, finish in batch:
        yield _sse(shapes.chunk([shapes.choice_delta(i, text, finish)]))


def _public(exc: BaseException, model: ServedModel) -> BaseException:
    error = public_api_error(exc, model.model_id)
    if error is None:
        return exc
    logger.warning("a request to %s failed: %s", model.model_id, exc)
    return error


def _log(model: ServedModel, generation: Generation, began: float) -> None:
    tokens = sum(r.tokens for r in generation.rows)
    logger.info("%s: %d prompt + %d completion tokens (n=%d) in %.2f s", model.model_id,
                len(generation.prompt_ids), tokens, len(generation.rows), time.monotonic() - began)


def models_list(report, served: ServedModels) -> list[dict]:
    """OpenAI's model objects: every model the swarm announces, complete or not, and every model this
    API serves, each with its coverage under "zswarm"."""
    out = {}
    for health in report.models:
        covered = sum(1 for c in health.blocks if c.servers)
        out[health.model_id] = {
            "id": health.model_id, "object": "model", "owned_by": "zswarm",
            "created": served.by_id[health.model_id].created if health.model_id in served.by_id else 0,
            "zswarm": {"num_blocks": health.num_blocks, "blocks_served": covered, "healthy": health.healthy,
                       "gaps": [list(g) for g in health.gaps], "servers": sum(1 for r in health.servers if r.serving),
                       "served_here": health.model_id in served.by_id}}
    for model_id, model in served.by_id.items():
        if model_id not in out:  # loaded here, but no server announces it
            blocks = model.model.swarm.num_blocks
            out[model_id] = {"id": model_id, "object": "model", "owned_by": "zswarm", "created": model.created,
                             "zswarm": {"num_blocks": blocks, "blocks_served": 0, "healthy": False,
                                        "gaps": [[0, blocks]], "servers": 0, "served_here": True}}
    return [out[k] for k in sorted(out)]
