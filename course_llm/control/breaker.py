"""The circuit breaker: after `failures` consecutive transient failures a model is skipped for
`cooldown_s`, then exactly one trial request is let through, and its outcome closes or re-opens it.

Why not LiteLLM's cooldowns (litellm 1.106.2, `litellm/router_utils/cooldown_handlers.py`,
`cooldown_cache.py`, `router.py`): they cool down a *deployment*, and course_llm compiles one
deployment per action×strategy×model (`<action>/<strategy>/<model>`), so a dead model would be
counted and skipped separately in every chain it sits in. The count is not "consecutive": it is a
per-deployment counter that expires `cooldown_time` after its last increment and that no success
resets (`should_cooldown_based_on_allowed_fails_policy`, `_increment_allowed_fails`). It counts
by exception class and status the wrong way for us: 401 and 404 cool down, a connection error
never does (`_is_cooldown_required` ignores any "APIConnectionError"). A cooldown is a cache entry
with a TTL (`CooldownCache.add_deployment_to_cooldown`): when it expires every waiting request
goes through at once, there is no half-open trial, and a failure afterwards needs `allowed_fails`
more before it opens again. Above all, a cooled-down deployment is filtered out of the candidates
silently (`Router._filter_cooldown_deployments`): no hook runs for the skip, so it could never be
the `CircuitOpen` row the contract asks for. Measured: four requests through a two-model group
with `allowed_fails=1`, the first model answering 500; the third and fourth never called it and
produced no event at all. So course_llm keeps `disable_cooldowns: True` (compiler.py) and does it
here, per registry model id, with the skip reported by whoever calls `allow()`.

States per model: closed (counting consecutive transient failures), open (every `allow()` is
False until `cooldown_s` after it opened), half-open (the first `allow()` is the trial; the others
are False until the trial's outcome is recorded). Decisions the contract leaves open:
- A permanent error (400, 401, 403, 404: `transient=False`) neither counts nor resets the count:
  it says something about the request, not about whether the model is up, and an outage whose
  transient errors are interleaved with a few requests' 400s is still an outage. A trial that ends
  in a permanent error frees the trial slot: the next caller becomes the trial.
- A trial whose outcome never comes (a cancelled request, a lost hook) blocks other trials for one
  `cooldown_s` only; then the next caller gets a new trial.
- Outcomes of calls that started before the circuit opened and end while it is open (stragglers)
  change nothing: the cooldown runs its course. In half-open, any success closes the circuit and
  any transient failure re-opens it for a new `cooldown_s`: `allow()` hands out no token to tell
  the trial from a straggler, and either outcome is fresh news about the model.

Threads: the facade and the proxy call this from one event loop, but LiteLLM runs the sync hooks
of sync calls and some success events in worker threads. State changes therefore take one
`threading.Lock`, held for a few dictionary operations and never across I/O. `allow()` for a model
that has no open circuit (the usual case) reads without the lock: one dict lookup and an attribute
read, which at worst lets through one request that raced the opening, as an in-flight request is.
State lives in this process. A `listener` (control/redis_circuits.py, with COURSE_LLM_REDIS_URL)
is told of each opening and closing, after the lock is released, and tells the breaker what other
processes opened (`adopt`) and closed (`forget`): one circuit across workers and replicas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from course_llm.control.sections import CircuitBreakerConfig
from course_llm.errors import AttemptSkippedError
from course_llm.recording.records import CLIENT_DISCONNECTED, CONTEXT_WINDOW_SKIPPED, CallRecord

__all__ = ["CIRCUIT_OPEN", "CircuitBreaker", "CircuitState", "OpenCircuit"]

#: The `error_class` of the row of an attempt skipped because its model's circuit is open.
CIRCUIT_OPEN = "CircuitOpen"
#: Rows that say nothing about whether their model is up: attempts not made (an open circuit, a
#: prompt over the context window) and streams the client hung up on.
_NOT_OUTCOMES = frozenset(
    {CIRCUIT_OPEN, CONTEXT_WINDOW_SKIPPED, CLIENT_DISCONNECTED, AttemptSkippedError.__name__}
)

CircuitState = Literal["open", "half_open"]


class CircuitListener(Protocol):
    """Told of every change this process makes (never while the breaker's lock is held)."""

    def opened(
        self, model_id: str, reopens_at: float, reopens_in_s: float, status_code: int | None, failures: int
    ) -> None:
        """`reopens_at` is on the breaker's clock (what `forget` compares); `reopens_in_s` from now."""

    def closed(self, model_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class OpenCircuit:
    """One model whose circuit is not closed, as `/metrics` and the dashboard show it.

    `opened_at` and `reopens_at` are readings of the breaker's clock (`time.monotonic` unless one
    was injected): good for ordering and differences only. `reopens_in_s` is how long until the
    next trial may start, 0 once half-open.
    """

    model_id: str
    state: CircuitState
    opened_at: float
    reopens_at: float
    reopens_in_s: float
    consecutive_failures: int
    last_status_code: int | None
    trial_in_flight: bool
    skipped: int


class _Circuit:
    """The mutable state of one model. Only touched under the breaker's lock (see module docstring)."""

    __slots__ = ("failures", "last_status_code", "opened_at", "reopens_at", "skipped", "trial_started")

    def __init__(self) -> None:
        self.failures = 0
        self.last_status_code: int | None = None
        self.opened_at: float | None = None  # None: closed
        self.reopens_at = 0.0
        self.trial_started: float | None = None  # half-open: when the trial in flight was let through
        self.skipped = 0  # attempts refused since the circuit opened from closed


class CircuitBreaker:
    """Per-model circuits over one `circuit_breaker:` section of the registry."""

    def __init__(self, config: CircuitBreakerConfig, now: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._now = now
        self._lock = threading.Lock()
        # Only models that failed since they last succeeded have an entry (bounded by the registry).
        self._circuits: dict[str, _Circuit] = {}
        #: Attempts refused since the breaker was made, all models (a `/metrics` counter).
        self.skips_total = 0
        #: How many times a circuit opened (or re-opened after a failed trial), all models.
        self.opened_total = 0
        #: Told of each opening and closing (the circuits shared through Redis).
        self.listener: CircuitListener | None = None

    # -- the request path --------------------------------------------------------------------

    def allow(self, model_id: str) -> bool:
        """May an attempt on `model_id` go upstream now? False means: skip it, record a CircuitOpen row.

        In half-open exactly one caller gets True (the trial) until an outcome is recorded or, if
        none ever is, until `cooldown_s` has passed since the trial started.
        """
        circuit = self._circuits.get(model_id)
        if circuit is None or circuit.opened_at is None:
            return True  # closed: the lock-free fast path (module docstring)
        with self._lock:
            circuit = self._circuits.get(model_id)  # again: it may have closed while we waited
            if circuit is None or circuit.opened_at is None:
                return True
            trial = circuit.trial_started
            now = self._now()
            if now >= circuit.reopens_at and (trial is None or now >= trial + self.config.cooldown_s):
                circuit.trial_started = now
                return True
            circuit.skipped += 1
            self.skips_total += 1
            return False

    def record_success(self, model_id: str) -> None:
        """An attempt on `model_id` answered: a closed circuit's count restarts, a half-open one closes."""
        if model_id not in self._circuits:
            return  # nothing counted, nothing to reset: no lock on the usual path
        with self._lock:
            circuit = self._circuits.get(model_id)
            if circuit is None:
                return
            if circuit.opened_at is not None and self._now() < circuit.reopens_at:
                return  # a straggler that started before the circuit opened (module docstring)
            del self._circuits[model_id]
            was_open = circuit.opened_at is not None
        if was_open and self.listener is not None:
            self.listener.closed(model_id)

    def record_failure(self, model_id: str, status_code: int | None, transient: bool) -> None:
        """An attempt on `model_id` failed. Only transient failures (429, 5xx, timeouts, connection
        errors) count; `status_code` is kept for `open_circuits()` (None: no HTTP status)."""
        if not transient and model_id not in self._circuits:
            return  # a permanent error of a model with nothing counted: nothing to do
        with self._lock:
            circuit = self._circuits.get(model_id)
            if not transient:
                if circuit is not None and circuit.trial_started is not None:
                    circuit.trial_started = None  # the model answered the trial: let another try
                return
            if circuit is None:
                circuit = self._circuits[model_id] = _Circuit()
            circuit.last_status_code = status_code
            now = self._now()
            opened = False
            if circuit.opened_at is None:
                circuit.failures += 1
                if circuit.failures >= self.config.failures:
                    opened = self._open(circuit, now)
            elif now >= circuit.reopens_at:
                circuit.failures += 1
                opened = self._open(circuit, now)  # half-open: the trial failed, a new cooldown
            # else: open, a straggler's failure: the cooldown already running is enough
            failures, reopens_at = circuit.failures, circuit.reopens_at
        if opened and self.listener is not None:
            self.listener.opened(model_id, reopens_at, self.config.cooldown_s, status_code, failures)

    def observe(self, record: CallRecord) -> None:
        """Feed one attempt's row: a success, a transient failure (429, 5xx, or no HTTP status:
        timeouts, connection errors, a stream cut short), or neither (any other 4xx, an attempt
        not made, a client that hung up, an answer from the response cache)."""
        if not record.model_id or record.error_class in _NOT_OUTCOMES:
            return
        if record.cache_hit:
            # Answered from the cache: the model was not called. LiteLLM's gate (the pre-call
            # hook) runs before its cache lookup, so such a request may hold the half-open trial.
            self.release_trial(record.model_id)
        elif record.success:
            self.record_success(record.model_id)
        else:
            status = record.status_code
            transient = status is None or status == 429 or status >= 500
            self.record_failure(record.model_id, status, transient)

    def release_trial(self, model_id: str) -> None:
        """The trial let through on `model_id` ended without news of the model: let another try."""
        if model_id not in self._circuits:
            return
        with self._lock:
            circuit = self._circuits.get(model_id)
            if circuit is not None:
                circuit.trial_started = None

    def skip_reason(self, model_id: str) -> tuple[str, str] | None:
        """None when an attempt on `model_id` may go now; else the skip row's error class and message."""
        if self.allow(model_id):
            return None
        circuit = self._circuits.get(model_id)
        wait = max((circuit.reopens_at if circuit else 0.0) - self._now(), 0.0)
        when = f"a trial in {wait:.1f} s" if wait > 0 else "its trial request is in flight"
        return (
            CIRCUIT_OPEN,
            f"circuit open after {self.config.failures} transient failures: not sent ({when})",
        )

    def _open(self, circuit: _Circuit, now: float, cooldown_s: float | None = None) -> Literal[True]:
        """Open (or re-open) `circuit`; `cooldown_s` is given for an opening adopted from another
        process, which `opened_total` does not count (summed over processes, it counts each once)."""
        if circuit.opened_at is None:
            circuit.skipped = 0
        circuit.opened_at = now
        circuit.reopens_at = now + (self.config.cooldown_s if cooldown_s is None else cooldown_s)
        circuit.trial_started = None
        self.opened_total += cooldown_s is None
        return True

    # -- what other processes decided (control/redis_circuits.py) -------------------------------

    def adopt(self, model_id: str, reopens_in_s: float, status_code: int | None, failures: int) -> float:
        """Another process opened `model_id`'s circuit until `reopens_in_s` from now (≤ 0: it is
        half-open there). Open it here too, unless it is open here until later already. Returns
        the circuit's `reopens_at` here, for `forget`."""
        with self._lock:
            circuit = self._circuits.get(model_id)
            if circuit is None:
                circuit = self._circuits[model_id] = _Circuit()
            now = self._now()
            reopens_in_s = min(reopens_in_s, self.config.cooldown_s)  # never longer than ours
            if circuit.opened_at is None or now + reopens_in_s > circuit.reopens_at:
                self._open(circuit, now, cooldown_s=reopens_in_s)
                circuit.failures = max(circuit.failures, failures)
                circuit.last_status_code = status_code
            return circuit.reopens_at

    def forget(self, model_id: str, reopens_at: float) -> None:
        """Another process closed `model_id`'s circuit (its trial answered): close it here, unless
        it opened here again since (its `reopens_at` is no longer the one `adopt` returned)."""
        with self._lock:
            circuit = self._circuits.get(model_id)
            if circuit is not None and circuit.opened_at is not None and circuit.reopens_at == reopens_at:
                del self._circuits[model_id]

    # -- reporting ---------------------------------------------------------------------------

    def state(self, model_id: str) -> Literal["closed", "open", "half_open"]:
        """The circuit's state now (half-open once the cooldown is over, trial or not)."""
        with self._lock:
            circuit = self._circuits.get(model_id)
            if circuit is None or circuit.opened_at is None:
                return "closed"
            return "open" if self._now() < circuit.reopens_at else "half_open"

    def open_circuits(self) -> list[OpenCircuit]:
        """Every circuit that is not closed, longest-open first."""
        with self._lock:
            now = self._now()
            found = [
                OpenCircuit(
                    model_id=model_id,
                    state="open" if now < c.reopens_at else "half_open",
                    opened_at=c.opened_at,
                    reopens_at=c.reopens_at,
                    reopens_in_s=max(c.reopens_at - now, 0.0),
                    consecutive_failures=c.failures,
                    last_status_code=c.last_status_code,
                    trial_in_flight=c.trial_started is not None
                    and now < c.trial_started + self.config.cooldown_s,
                    skipped=c.skipped,
                )
                for model_id, c in self._circuits.items()
                if c.opened_at is not None
            ]
        return sorted(found, key=lambda c: (c.opened_at, c.model_id))
