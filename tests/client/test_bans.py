"""BanList: exponential backoff of failing servers, forgiven on success."""
from zswarm.client.bans import BanList


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_ban_doubles_with_each_failure_in_a_row_up_to_the_max():
    clock = Clock()
    bans = BanList(base=1.0, max=5.0, clock=clock)
    assert [bans.ban("a") for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert bans.failures("a") == 5


def test_ban_expires_after_its_duration():
    clock = Clock()
    bans = BanList(base=2.0, max=60.0, clock=clock)
    bans.ban("a")
    assert bans.is_banned("a") and bans.active() == {"a"}
    clock.now += 2.5
    assert not bans.is_banned("a") and bans.active() == set()


def test_success_clears_the_failure_count():
    bans = BanList(base=1.0, max=60.0, clock=Clock())
    bans.ban("a")
    bans.ban("a")
    bans.clear("a")
    assert not bans.is_banned("a")
    assert bans.ban("a") == 1.0
