"""zswarm.inspect: the operator's view of a swarm (the `zswarm-inspect` command).

    views.py   plain data (ModelHealth, RouteView, RawView...) and the pure judgements on it
    render.py  views -> text, pure
    fetch.py   Inspector: DHT lookups and pings that produce the views
    cli.py     zswarm-inspect: arguments, --json, --watch, exit status

From Python::

    from zswarm.inspect import Inspector
    with Inspector(["127.0.0.1:31337"]) as inspector:
        for model in inspector.swarm().models:
            print(model.model_id, model.status, model.gaps)
"""

from zswarm.errors import InspectError, SwarmUnreachable
from zswarm.inspect.views import ModelHealth, RawView, RouteView, ServerRow, SwarmReport, assess_model, plan_route

__all__ = ["Inspector", "InspectError", "SwarmUnreachable", "ModelHealth", "RawView", "RouteView", "ServerRow",
           "SwarmReport", "assess_model", "plan_route"]


def __getattr__(name):  # Inspector's transport imports torch: only on use, not for `zswarm-inspect --help`
    if name == "Inspector":
        from zswarm.inspect.fetch import Inspector

        return Inspector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
