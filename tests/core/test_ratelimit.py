"""The in-memory sliding-window rate limiter, driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from finsecure.core.ratelimit import InMemoryRateLimiter, RateLimiter

WINDOW = 60.0


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> InMemoryRateLimiter:
    return InMemoryRateLimiter(clock=clock)


def test_inmemory_ratelimiter__is_a_ratelimiter(limiter: InMemoryRateLimiter) -> None:
    assert isinstance(limiter, RateLimiter)


def test_hit__counts_up(limiter: InMemoryRateLimiter, clock: FakeClock) -> None:
    assert [limiter.hit("alice", WINDOW) for _ in range(3)] == [1, 2, 3]
    clock.advance(1)
    assert limiter.hit("alice", WINDOW) == 4
    assert limiter.count("alice", WINDOW) == 4


def test_count__keys_are_independent(limiter: InMemoryRateLimiter) -> None:
    limiter.hit("alice", WINDOW)
    limiter.hit("alice", WINDOW)
    limiter.hit("bob", WINDOW)
    assert limiter.count("alice", WINDOW) == 2
    assert limiter.count("bob", WINDOW) == 1
    assert limiter.count("carol", WINDOW) == 0


def test_count__does_not_record(limiter: InMemoryRateLimiter) -> None:
    for _ in range(5):
        assert limiter.count("alice", WINDOW) == 0
    assert limiter.hit("alice", WINDOW) == 1
    assert limiter.count("alice", WINDOW) == 1


def test_count__events_leave_the_window(limiter: InMemoryRateLimiter, clock: FakeClock) -> None:
    limiter.hit("k", WINDOW)  # t=0
    clock.advance(10)
    limiter.hit("k", WINDOW)  # t=10
    clock.advance(49.999)  # t=59.999: both inside
    assert limiter.count("k", WINDOW) == 2
    clock.advance(0.001)  # t=60: the first hit is exactly one window old and leaves
    assert limiter.count("k", WINDOW) == 1
    clock.advance(10)  # t=70: the second leaves too
    assert limiter.count("k", WINDOW) == 0
    assert limiter.hit("k", WINDOW) == 1  # counting starts afresh


def test_hit__sliding_not_fixed_window(limiter: InMemoryRateLimiter, clock: FakeClock) -> None:
    # Hits spread evenly: the count never exceeds what one window holds.
    counts = []
    for _ in range(10):
        counts.append(limiter.hit("k", 30))
        clock.advance(10)
    assert counts == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]


def test_count__window_is_per_call(limiter: InMemoryRateLimiter, clock: FakeClock) -> None:
    limiter.hit("k", 100)
    clock.advance(50)
    limiter.hit("k", 100)
    assert limiter.count("k", 100) == 2
    assert limiter.count("k", 30) == 1


def test_retry_after__empty_is_zero(limiter: InMemoryRateLimiter) -> None:
    assert limiter.retry_after("nobody", WINDOW) == 0.0


def test_retry_after__until_oldest_leaves(limiter: InMemoryRateLimiter, clock: FakeClock) -> None:
    limiter.hit("k", WINDOW)  # t=0
    clock.advance(10)
    limiter.hit("k", WINDOW)  # t=10
    clock.advance(20)  # t=30
    assert limiter.retry_after("k", WINDOW) == pytest.approx(30.0)
    clock.advance(30)  # t=60: the first hit left; the second leaves at t=70
    assert limiter.retry_after("k", WINDOW) == pytest.approx(10.0)
    clock.advance(10)
    assert limiter.retry_after("k", WINDOW) == 0.0


def test_reset__forgets_key(limiter: InMemoryRateLimiter) -> None:
    for _ in range(3):
        limiter.hit("k", WINDOW)
    limiter.hit("other", WINDOW)
    limiter.reset("k")
    assert limiter.count("k", WINDOW) == 0
    assert limiter.retry_after("k", WINDOW) == 0.0
    assert limiter.count("other", WINDOW) == 1
    assert limiter.hit("k", WINDOW) == 1
    limiter.reset("never-seen")  # no error


def test_max_keys__evicts_least_recently_used(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(max_keys=2, clock=clock)
    limiter.hit("a", WINDOW)
    limiter.hit("b", WINDOW)
    assert limiter.count("a", WINDOW) == 1  # touching "a" makes "b" the least recently used
    limiter.hit("c", WINDOW)
    assert limiter.count("b", WINDOW) == 0
    assert limiter.count("a", WINDOW) == 1
    assert limiter.count("c", WINDOW) == 1


def test_max_keys__oldest_evicted_without_touch(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(max_keys=3, clock=clock)
    for key in "abcde":
        limiter.hit(key, WINDOW)
    assert [limiter.count(key, WINDOW) for key in "abcde"] == [0, 0, 1, 1, 1]
    assert len(limiter._events) == 3


def test_max_keys__lookups_of_unknown_keys_evict_nothing(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(max_keys=2, clock=clock)
    limiter.hit("a", WINDOW)
    limiter.hit("b", WINDOW)
    for i in range(10):
        assert limiter.count(f"probe{i}", WINDOW) == 0
        assert limiter.retry_after(f"probe{i}", WINDOW) == 0.0
    assert limiter.count("a", WINDOW) == 1
    assert limiter.count("b", WINDOW) == 1


def test_max_keys__bounded_memory(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(max_keys=100, clock=clock)
    for i in range(1000):
        limiter.hit(f"ip:{i}", WINDOW)
    assert len(limiter._events) == 100
    assert limiter.count("ip:999", WINDOW) == 1
    assert limiter.count("ip:0", WINDOW) == 0


def test_max_keys__must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        InMemoryRateLimiter(max_keys=0)


def test_hit__thread_safe(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    threads_n, hits_n = 8, 500
    results: list[list[int]] = [[] for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)

    def worker(out: list[int]) -> None:
        barrier.wait()
        for _ in range(hits_n):
            out.append(limiter.hit("shared", WINDOW))
            limiter.count("shared", WINDOW)

    threads = [threading.Thread(target=worker, args=(results[i],)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert limiter.count("shared", WINDOW) == threads_n * hits_n == 4000
    # Every hit saw a distinct running total: no two threads interleaved inside one update.
    assert sorted(n for out in results for n in out) == list(range(1, 4001))


def test_hit__thread_safe_with_real_clock_and_many_keys() -> None:
    limiter = InMemoryRateLimiter(max_keys=50)
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            for i in range(500):
                limiter.hit(f"k{(tid * 7 + i) % 80}", 3600)
                limiter.retry_after(f"k{i % 80}", 3600)
                if i % 50 == 0:
                    limiter.reset(f"k{i % 80}")
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(limiter._events) <= 50
