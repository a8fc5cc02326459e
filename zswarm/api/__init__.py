"""zswarm.api: an OpenAI-compatible HTTP server on a swarm client (the `zswarm-api` command).

    config.py         ApiConfig: every knob and its default
    schema.py         the request bodies (pydantic), bounds checked on the way in
    served.py         ServedModel(s): a swarm client and tokenizer per model; text -> prompt ids
    generation.py     one request's run: seeded sampling, stop strings, streamed text, one session
    openai_shapes.py  the JSON OpenAI's clients expect back
    reports.py        the swarm as zswarm-inspect reports it, cached (/v1/models, /health)
    app.py            the FastAPI app: routes, streaming, OpenAI-shaped errors
    cli.py            zswarm-api: arguments, the listening socket, uvicorn

The health page itself is zswarm.inspect.health_page (zswarm-inspect can serve it too).
"""
