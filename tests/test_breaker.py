"""The circuit breaker (course_llm/control/breaker.py): when a model's circuit opens, what is
skipped, the one trial after the cooldown, and what /metrics sees. Time is an injected clock."""

from __future__ import annotations

import threading
import time

import pytest

from course_llm.control.breaker import CircuitBreaker
from course_llm.control.sections import CircuitBreakerConfig

FAILURES = 3
COOLDOWN = 30.0
MODEL = "gemini-2.5-flash"
OTHER = "deepseek-chat"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(failures=FAILURES, cooldown_s=COOLDOWN), now=clock)


def fail(breaker: CircuitBreaker, times: int, model: str = MODEL, status: int | None = 503) -> None:
    for _ in range(times):
        breaker.record_failure(model, status, transient=True)


def open_circuit(breaker: CircuitBreaker, model: str = MODEL) -> None:
    fail(breaker, FAILURES, model)
    assert not breaker.allow(model)


def half_open(breaker: CircuitBreaker, clock: Clock, model: str = MODEL) -> None:
    """Open the circuit and let its cooldown pass; the next allow() is the trial."""
    open_circuit(breaker, model)
    clock.advance(COOLDOWN)


# -- opening -----------------------------------------------------------------------------------


def test_a_new_breaker_allows_every_model(breaker: CircuitBreaker) -> None:
    assert breaker.allow(MODEL)
    assert breaker.state(MODEL) == "closed"
    assert breaker.open_circuits() == []


def test_the_circuit_opens_after_n_consecutive_transient_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES)
    assert breaker.state(MODEL) == "open"
    assert not breaker.allow(MODEL)


def test_the_circuit_stays_closed_after_n_minus_one_transient_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES - 1)
    assert breaker.state(MODEL) == "closed"
    assert breaker.allow(MODEL)


def test_a_success_between_failures_restarts_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES - 1)
    breaker.record_success(MODEL)
    fail(breaker, FAILURES - 1)
    assert breaker.allow(MODEL)
    fail(breaker, 1)
    assert not breaker.allow(MODEL)


def test_permanent_errors_never_open_the_circuit(breaker: CircuitBreaker) -> None:
    for status in (400, 401, 403, 404) * FAILURES:
        breaker.record_failure(MODEL, status, transient=False)
    assert breaker.allow(MODEL)
    assert breaker.state(MODEL) == "closed"


def test_a_permanent_error_does_not_restart_the_count_of_transient_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES - 1)
    breaker.record_failure(MODEL, 400, transient=False)
    fail(breaker, 1)
    assert not breaker.allow(MODEL)


def test_failures_without_a_status_code_count_like_any_transient_failure(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES, status=None)  # a timeout or a refused connection
    assert not breaker.allow(MODEL)


# -- open and the cooldown ---------------------------------------------------------------------


def test_an_open_circuit_skips_every_attempt_until_the_cooldown_ends(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    open_circuit(breaker)
    clock.advance(COOLDOWN - 0.001)
    assert [breaker.allow(MODEL) for _ in range(5)] == [False] * 5
    assert breaker.state(MODEL) == "open"


def test_a_success_of_a_call_started_before_the_opening_leaves_the_circuit_open(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    open_circuit(breaker)
    clock.advance(1)
    breaker.record_success(MODEL)
    assert not breaker.allow(MODEL)


def test_a_failure_while_open_does_not_extend_the_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    open_circuit(breaker)
    clock.advance(COOLDOWN / 2)
    fail(breaker, 1)
    clock.advance(COOLDOWN / 2)
    assert breaker.allow(MODEL)


# -- half-open: the one trial ------------------------------------------------------------------


def test_after_the_cooldown_exactly_one_trial_goes_through(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)
    assert [breaker.allow(MODEL) for _ in range(4)] == [True, False, False, False]
    assert breaker.state(MODEL) == "half_open"


def test_a_successful_trial_closes_the_circuit(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)
    breaker.record_success(MODEL)
    assert [breaker.allow(MODEL) for _ in range(3)] == [True, True, True]
    assert breaker.state(MODEL) == "closed"
    assert breaker.open_circuits() == []


def test_a_closed_circuit_needs_n_new_failures_to_open_again(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)
    breaker.record_success(MODEL)
    fail(breaker, FAILURES - 1)
    assert breaker.allow(MODEL)


def test_a_failed_trial_reopens_the_circuit_for_a_new_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)
    clock.advance(5)
    fail(breaker, 1)
    assert breaker.state(MODEL) == "open"
    clock.advance(COOLDOWN - 0.001)
    assert not breaker.allow(MODEL)
    clock.advance(0.001)
    assert [breaker.allow(MODEL) for _ in range(2)] == [True, False]


def test_a_trial_lost_without_an_outcome_is_retried_after_a_cooldown(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)  # the trial, whose request is then cancelled: no outcome ever
    clock.advance(COOLDOWN - 0.001)
    assert not breaker.allow(MODEL)
    clock.advance(0.001)
    assert [breaker.allow(MODEL) for _ in range(2)] == [True, False]


def test_a_trial_ending_in_a_permanent_error_lets_the_next_caller_try(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)
    breaker.record_failure(MODEL, 400, transient=False)
    assert breaker.state(MODEL) == "half_open"
    assert [breaker.allow(MODEL) for _ in range(2)] == [True, False]


class SlowClock(Clock):
    """A clock that takes a millisecond to read: threads asking at once overlap inside allow()."""

    def __call__(self) -> float:
        time.sleep(0.001)
        return self.t


def test_only_one_of_many_threads_gets_the_trial() -> None:
    clock = SlowClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=FAILURES, cooldown_s=COOLDOWN), now=clock)
    threads_per_round = 8
    winners: list[int] = []
    for _ in range(10):
        half_open(breaker, clock)
        barrier = threading.Barrier(threads_per_round)
        granted: list[bool] = []

        def ask(barrier: threading.Barrier = barrier, granted: list[bool] = granted) -> None:
            barrier.wait()
            granted.append(breaker.allow(MODEL))

        threads = [threading.Thread(target=ask) for _ in range(threads_per_round)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners.append(granted.count(True))
        fail(breaker, 1)  # the trial failed: open again for the next round
    assert winners == [1] * 10


# -- per model and reporting -------------------------------------------------------------------


def test_each_model_has_its_own_circuit(breaker: CircuitBreaker) -> None:
    fail(breaker, FAILURES - 1, MODEL)
    fail(breaker, 1, OTHER)
    assert breaker.allow(MODEL)
    assert breaker.allow(OTHER)
    fail(breaker, 1, MODEL)
    assert not breaker.allow(MODEL)
    assert breaker.allow(OTHER)
    breaker.record_success(OTHER)
    assert not breaker.allow(MODEL)


def test_open_circuits_lists_open_and_half_open_models_but_not_closed_ones(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    fail(breaker, FAILURES, MODEL, status=429)
    assert not breaker.allow(MODEL)
    assert not breaker.allow(MODEL)
    clock.advance(10)
    fail(breaker, FAILURES, OTHER, status=None)
    fail(breaker, FAILURES - 1, "claude-sonnet")  # counting, still closed
    clock.advance(COOLDOWN - 10)

    first, second = breaker.open_circuits()

    assert (first.model_id, first.state) == (MODEL, "half_open")
    assert (first.opened_at, first.reopens_at, first.reopens_in_s) == (1000.0, 1000.0 + COOLDOWN, 0.0)
    assert (first.consecutive_failures, first.last_status_code, first.skipped) == (FAILURES, 429, 2)
    assert not first.trial_in_flight
    assert (second.model_id, second.state, second.reopens_in_s) == (OTHER, "open", 10.0)
    assert second.last_status_code is None


def test_open_circuits_shows_the_trial_in_flight(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)
    assert breaker.allow(MODEL)
    (circuit,) = breaker.open_circuits()
    assert circuit.trial_in_flight


def test_the_breaker_counts_skips_and_openings(breaker: CircuitBreaker, clock: Clock) -> None:
    half_open(breaker, clock)  # one skip inside
    assert breaker.allow(MODEL)
    fail(breaker, 1)  # the trial failed: opened a second time
    assert not breaker.allow(MODEL)
    assert (breaker.skips_total, breaker.opened_total) == (2, 2)
