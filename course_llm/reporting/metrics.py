"""Prometheus metrics from call records, and the `GET /metrics` route that serves them.

The llm_calls table answers questions after the fact; a scraper wants running totals it can rate()
and alert on. `MetricsRecorder.observe` folds each `CallRecord` into counters and a latency
histogram as the row is logged, so /metrics never touches the database.

Every series is labelled by action, strategy (the one the caller asked for, like the table's
`strategy` column), provider and model (the registry model id). Those values come from the registry,
so the number of series stays bounded.

    course_llm_calls_total                 attempts, successful or not
    course_llm_call_failures_total         failed attempts
    course_llm_tokens_total{direction}     tokens in / out
    course_llm_cost_usd_total              USD, from the registry prices
    course_llm_call_latency_seconds        histogram of attempt wall time

and, read from the row writer at each scrape (`watch_writer`), how recording itself is doing:

    course_llm_rows_written_total          rows inserted into llm_calls by this process
    course_llm_rows_rejected_total         rows (or damaged journal lines) set aside in .rejected.jsonl
    course_llm_rows_lost_total             rows that could not be kept anywhere (disk and memory full)
    course_llm_journal_failures_total      journal appends that failed (full or read-only disk)
    course_llm_rows_pending                rows not yet in the database
    course_llm_database_available          1 while the database takes writes
    course_llm_recording_healthy           1 while every row is journaled before its answer leaves

and, from the registry's budgets and circuit breaker at each scrape (`watch_controls`;
course_llm/control/controls.py):

    course_llm_budget_spent_usd{budget}              spend of the budget's current period
    course_llm_budget_limit_usd{budget}              its limit
    course_llm_budget_exceeded{budget}               1 once the spend reached the limit
    course_llm_budget_downgraded{budget}             1 while requests are served by the budget chain
    course_llm_budget_refusals_total{budget}         requests refused because the budget is spent

    course_llm_circuit_open{model_id,state}          1 per model whose circuit is open or half-open
    course_llm_circuit_reopens_in_seconds{model_id}  time until an open circuit lets a trial through
    course_llm_circuit_skips_total                   attempts skipped because their circuit was open
    course_llm_circuit_opened_total                  times a circuit opened (or re-opened)

Each recorder owns its `CollectorRegistry`: the global default registry would make two recorders
(two tests, two apps in one process) collide on metric names.

Every figure is this process's own (a scrape of a port served by `--workers N` reaches one
worker). The proxy labels every sample with `replica` (COURSE_LLM_REPLICA, default the host name)
and `pid`, so a scraper that reaches each process can tell them apart and sum them; the dashboard
and the usage API read the database, which holds every replica's rows.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from course_llm.recording.records import CallRecord

__all__ = ["LABELS", "LATENCY_BUCKETS", "MetricsRecorder", "bearer_key_matches", "create_metrics_router"]

log = structlog.get_logger()

LABELS = ("action", "strategy", "provider", "model")

#: LLM attempts run from a cached 100 ms answer to a two-minute video analysis; the buckets are dense
#: where interactive calls land (under 10 s) and sparse in the long tail.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)


@dataclass(slots=True, frozen=True)
class _Series:
    """The bound children of one label combination, so `observe` skips the `.labels()` lookups."""

    calls: Counter
    failures: Counter
    tokens_in: Counter
    tokens_out: Counter
    cost: Counter
    latency: Histogram


def _amount(value: float | None) -> float | None:
    """`value` if it can be added to a counter; counters refuse negatives and a NaN would poison one."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        return None
    return number


class MetricsRecorder:
    """Running Prometheus totals of every observed call record.

    `observe` is called on the logging hot path for every row: it never raises (a bad record is
    counted in `dropped` and logged) and, after the first record of a label combination, costs a
    dict lookup and six lock-protected additions.
    """

    def __init__(
        self, buckets: Iterable[float] = LATENCY_BUCKETS, *, process_labels: Mapping[str, str] | None = None
    ) -> None:
        """`process_labels` are added to every sample at each scrape (the proxy's replica and pid)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._exposed: Any = _Labelled(self.registry, process_labels) if process_labels else self.registry
        self.dropped = 0
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        self._series_lock = threading.Lock()
        registry = self.registry
        self._calls = Counter(
            "course_llm_calls", "LLM attempts, successful or not.", LABELS, registry=registry
        )
        self._failures = Counter(
            "course_llm_call_failures", "Failed LLM attempts.", LABELS, registry=registry
        )
        self._tokens = Counter(
            "course_llm_tokens",
            "Tokens sent (in) and received (out).",
            (*LABELS, "direction"),
            registry=registry,
        )
        self._cost = Counter(
            "course_llm_cost_usd", "Cost in USD, from the registry prices.", LABELS, registry=registry
        )
        self._latency = Histogram(
            "course_llm_call_latency_seconds",
            "Wall time of one LLM attempt.",
            LABELS,
            registry=registry,
            buckets=tuple(buckets),
        )

    def _children(self, key: tuple[str, str, str, str]) -> _Series:
        series = self._series.get(key)
        if series is not None:
            return series
        # Two threads may race to create the same children; prometheus_client hands both the same
        # objects, and the lock only keeps the cache dict consistent.
        with self._series_lock:
            series = self._series.get(key)
            if series is None:
                series = _Series(
                    calls=self._calls.labels(*key),
                    failures=self._failures.labels(*key),
                    tokens_in=self._tokens.labels(*key, "in"),
                    tokens_out=self._tokens.labels(*key, "out"),
                    cost=self._cost.labels(*key),
                    latency=self._latency.labels(*key),
                )
                self._series[key] = series
        return series

    def observe(self, record: CallRecord) -> None:
        """Add one attempt to the totals. Never raises."""
        try:
            key = (
                str(record.action),
                str(record.strategy),
                str(record.provider),
                str(record.model_id),
            )
            series = self._children(key)
            series.calls.inc()
            if not record.success:
                series.failures.inc()
            tokens_in = _amount(record.tokens_in)
            if tokens_in is not None:
                series.tokens_in.inc(tokens_in)
            tokens_out = _amount(record.tokens_out)
            if tokens_out is not None:
                series.tokens_out.inc(tokens_out)
            cost = _amount(record.cost_usd)
            if cost is not None:
                series.cost.inc(cost)
            latency_ms = _amount(record.latency_ms)
            if latency_ms is not None:
                series.latency.observe(latency_ms / 1000.0)
        except Exception as exc:
            # Metrics are a side channel: losing one observation must not lose the row or the call.
            self.dropped += 1
            log.warning(
                "metrics_observation_dropped",
                error_class=type(exc).__name__,
                error=str(exc),
                request_id=getattr(record, "request_id", None),
                dropped=self.dropped,
            )

    def watch_writer(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Expose the row writer's own counters (`RecordWriter.stats`), read at each scrape."""
        self.registry.register(_WriterCollector(stats))

    def watch_controls(self, controls: Callable[[], Any]) -> None:
        """Expose the budgets and breaker of the `Controls` that `controls()` returns at each scrape."""
        self.registry.register(_ControlsCollector(controls))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST


class _Labelled(Collector):
    """A registry whose samples all carry the same extra labels, after their own (which win)."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self._registry = registry
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [
                sample._replace(
                    labels=sample.labels | {k: v for k, v in self._labels.items() if k not in sample.labels}
                )
                for sample in metric.samples
            ]
            yield metric


class _WriterCollector(Collector):
    _COUNTERS = (
        ("rows_written", "rows inserted into llm_calls by this process"),
        ("rows_rejected", "rows or damaged journal lines set aside in the .rejected.jsonl file"),
        ("rows_lost", "rows that could be kept neither in the journal, nor in memory, nor set aside"),
        ("journal_failures", "journal appends that failed (full or read-only disk)"),
    )

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, help_text in self._COUNTERS:
            yield CounterMetricFamily(f"course_llm_{name}", help_text, value=float(stats.get(name) or 0))
        yield GaugeMetricFamily(
            "course_llm_rows_pending", "rows not yet in the database", value=stats["pending"]
        )
        yield GaugeMetricFamily(
            "course_llm_database_available",
            "1 while the database takes writes",
            value=int(stats["database_available"]),
        )
        yield GaugeMetricFamily(
            "course_llm_recording_healthy",
            "1 while every row is journaled before its answer leaves",
            value=int(stats["degraded"] is None),
        )


class _ControlsCollector(Collector):
    def __init__(self, controls: Callable[[], Any]) -> None:
        self._controls = controls

    def collect(self) -> Iterator[Metric]:
        controls = self._controls()
        yield from self._budgets(controls)
        yield from self._circuits(controls.breaker)

    @staticmethod
    def _budgets(controls: Any) -> Iterator[Metric]:
        statuses = controls.budget_statuses()
        gauges: list[tuple[str, str, Callable[[Any], Any]]] = [
            ("course_llm_budget_spent_usd", "spend of the budget's current period", lambda s: s.spent_usd),
            ("course_llm_budget_limit_usd", "the budget's limit", lambda s: s.limit_usd),
            (
                "course_llm_budget_exceeded",
                "1 once the spend reached the limit",
                lambda s: s.state == "exceeded",
            ),
            (
                "course_llm_budget_downgraded",
                "1 while requests go to the budget chain",
                lambda s: s.state == "downgraded",
            ),
        ]
        for name, help_text, value in gauges:
            gauge = GaugeMetricFamily(name, help_text, labels=["budget"])
            for status in statuses:
                gauge.add_metric([status.name], float(value(status)))
            yield gauge
        refusals = CounterMetricFamily(
            "course_llm_budget_refusals", "requests refused because the budget is spent", labels=["budget"]
        )
        for status in statuses:
            refusals.add_metric([status.name], controls.refusals.get(status.name, 0))
        yield refusals

    @staticmethod
    def _circuits(breaker: Any) -> Iterator[Metric]:
        circuits = breaker.open_circuits() if breaker is not None else []
        state = GaugeMetricFamily(
            "course_llm_circuit_open",
            "1 per model whose circuit is open or half-open",
            labels=["model_id", "state"],
        )
        reopens = GaugeMetricFamily(
            "course_llm_circuit_reopens_in_seconds",
            "seconds until an open circuit lets one trial request through",
            labels=["model_id"],
        )
        for circuit in circuits:
            state.add_metric([circuit.model_id, circuit.state], 1)
            reopens.add_metric([circuit.model_id], circuit.reopens_in_s)
        yield state
        yield reopens
        skips, opened = (breaker.skips_total, breaker.opened_total) if breaker is not None else (0, 0)
        yield CounterMetricFamily(
            "course_llm_circuit_skips", "attempts skipped because their model's circuit was open", value=skips
        )
        yield CounterMetricFamily(
            "course_llm_circuit_opened", "times a circuit opened or re-opened", value=opened
        )


def bearer_key_matches(authorization: str | None, master_key: str | None) -> bool:
    """Whether an `Authorization` header carries `Bearer <master_key>`.

    No configured key means no access: the routes expose spend and traffic, so they fail closed.
    """
    if not master_key or not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(token.strip().encode(), master_key.encode())


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _disabled() -> JSONResponse:
    # 503 rather than 401 (as the usage API does): no key the client could send would be right.
    return JSONResponse(
        {"error": "metrics are disabled: no master key is configured (set LITELLM_MASTER_KEY)"},
        status_code=503,
    )


def create_metrics_router(recorder: MetricsRecorder, get_master_key: Callable[[], str | None]) -> APIRouter:
    """A router serving `GET /metrics` from `recorder`, behind `Authorization: Bearer <master key>`.

    A missing or wrong key is a 401 and no configured key a 503, both JSON `{"error": ...}` like the
    usage API's. `get_master_key` is called per request, so a rotated key takes effect at once.
    """
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        master_key = get_master_key()
        if not master_key:
            return _disabled()
        authorization = request.headers.get("authorization")
        if not authorization:
            return _unauthorized("missing Authorization header; send 'Bearer <master key>'")
        if not bearer_key_matches(authorization, master_key):
            return _unauthorized("invalid master key")
        body, content_type = recorder.render()
        return Response(content=body, media_type=content_type)

    return router
