"""The retry budget's last word: when the servers of some blocks were full, the caller hears
CacheFullError naming the blocks and what the server said, not "served by no one" (issue 14)."""
import pytest

from zswarm.client.config import ClientConfig
from zswarm.client.failures import RetryBudget
from zswarm.errors import CacheFullError, NoRouteError


def test_a_budget_spent_on_a_full_server_then_on_no_route_says_cache_full():
    budget = RetryBudget(ClientConfig(max_retries=2), "tiny")
    budget.fail(CacheFullError("cache full: 1 sessions hold 512 of 512 tokens (0 of them yours)"), 0, 6)
    budget.fail(NoRouteError([(0, 6)], "tiny"), 0, 6)  # the full server is banned now
    with pytest.raises(CacheFullError) as raised:
        budget.fail(NoRouteError([(0, 6)], "tiny"), 0, 6)
    message = str(raised.value)
    assert "blocks 0:6 of tiny are served" in message and "1 sessions hold 512 of 512 tokens" in message
    assert "served by no one" not in message


def test_a_budget_spent_without_a_full_server_still_says_no_route():
    budget = RetryBudget(ClientConfig(max_retries=0), "tiny")
    with pytest.raises(NoRouteError, match="served by no one"):
        budget.fail(NoRouteError([(0, 6)], "tiny"), 0, 6)
