"""active_adapter on the client: every request names it, routes use only servers whose record
lists it, and a swarm where no one serves it fails with a NoRouteError that names it.
In-process servers (the client's own logic); the end-to-end proof with real LoRA servers is the
server side's test."""
import dataclasses

import pytest
import torch

from zswarm.errors import NoRouteError

IDS = torch.tensor([[1, 5, 9, 33, 7, 2]])


@pytest.fixture
def adapter_swarm(swarm):
    """Two servers of all blocks: `with_x` serves adapter "x", `plain` serves none. Each
    remembers the meta of the requests it got."""
    with_x, plain = swarm.add(0, 6, peer_id="with-x", adapters=("x",)), swarm.add(0, 6, peer_id="plain")
    adapters = {with_x.peer_id: ("x",), plain.peer_id: ()}
    seen: dict[str, list[tuple[str, dict]]] = {with_x.peer_id: [], plain.peer_id: []}
    for server in (with_x, plain):
        handlers = swarm.transport.servers[server.address]
        for method in ("open_session", "inference_step", "forward", "backward"):
            handlers[method] = _recording(handlers[method], method, seen[server.peer_id])
    listed = swarm.fetch_records

    async def fetch_records():
        return [{peer: dataclasses.replace(rec, adapters=adapters[peer]) for peer, rec in block.items()}
                for block in await listed()]

    swarm.fetch_records = fetch_records
    return swarm, seen


def _recording(handler, method, log):
    async def recorded(request):
        log.append((method, dict(request.meta)))
        return await handler(request)
    return recorded


def test_requests_carry_the_adapter_and_go_only_to_servers_that_list_it(adapter_swarm, connect):
    swarm, seen = adapter_swarm
    model = connect(active_adapter="x")
    for _ in range(4):  # forward routes are drawn at random: several draws, none may reach `plain`
        logits = model(IDS).logits
        logits.sum().backward() if logits.requires_grad else None
    model.generate(IDS, max_new_tokens=3)
    assert seen["plain"] == []
    methods = {method for method, _ in seen["with-x"]}
    assert {"inference_step", "forward"} <= methods
    assert all(meta.get("adapter") == "x" for _, meta in seen["with-x"])
    # a session opens inside its first step: that step's `open` names the adapter too
    opens = [meta["open"] for method, meta in seen["with-x"] if "open" in meta]
    assert opens and all(o.get("adapter") == "x" for o in opens)


def test_without_an_adapter_requests_name_none(adapter_swarm, connect):
    swarm, seen = adapter_swarm
    model = connect()
    model.generate(IDS, max_new_tokens=2)
    assert all("adapter" not in meta for log in seen.values() for _, meta in log)


def test_an_adapter_no_server_has_is_a_no_route_error_that_names_it(adapter_swarm, connect):
    model = connect(active_adapter="missing-adapter", max_retries=0)
    with pytest.raises(NoRouteError, match="missing-adapter") as caught:
        model(IDS)
    assert caught.value.missing == [(0, 6)]
    with pytest.raises(NoRouteError, match="missing-adapter"):
        model.generate(IDS, max_new_tokens=2)


def test_active_adapter_must_be_a_name():
    from zswarm.client import ClientConfig

    with pytest.raises(ValueError, match="active_adapter"):
        ClientConfig(active_adapter="")
