"""Tests for course_llm.reporting.metrics: records in, Prometheus text out, and the keyed /metrics route.

The exposition is read back with prometheus_client's own parser rather than matched as text, so
label order and float spelling do not matter; the expected values are worked out by hand from the
records below.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from course_llm.recording.records import CallRecord
from course_llm.reporting.metrics import (
    LATENCY_BUCKETS,
    MetricsRecorder,
    bearer_key_matches,
    create_metrics_router,
)

KEY = "sk-test-master-key"
VIDEO = {"action": "video_analysis", "strategy": "quality", "provider": "gemini", "model": "gemini-2.5-flash"}
TEXT = {"action": "text_processing", "strategy": "budget", "provider": "deepseek", "model": "deepseek-chat"}


def record(labels: dict[str, str], *, success: bool = True, **values: Any) -> CallRecord:
    return CallRecord(
        request_id=values.pop("request_id", "req-1"),
        attempt=values.pop("attempt", 1),
        action=labels["action"],
        strategy=labels["strategy"],
        served_strategy=labels["strategy"],
        provider=labels["provider"],
        model_id=labels["model"],
        success=success,
        source="sdk",
        **values,
    )


def samples(recorder: MetricsRecorder) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = recorder.render()
    return scraped(body.decode(), process_labels=())


#: The labels the proxy adds to every sample of a process (`replica`, `pid`).
PROCESS_LABELS = ("replica", "pid")


def scraped(
    text: str, process_labels: tuple[str, ...] = PROCESS_LABELS
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A `/metrics` text as {(sample name, its labels): value}, `process_labels` left out."""
    return {
        (
            sample.name,
            frozenset((k, v) for k, v in sample.labels.items() if k not in process_labels),
        ): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of a `/metrics` text (None when absent), the process labels left out."""
    return scraped(text).get((name, frozenset(labels.items())))


def value(recorder: MetricsRecorder, name: str, labels: dict[str, str], **extra: str) -> float:
    return samples(recorder)[(name, frozenset({**labels, **extra}.items()))]


@pytest.fixture
def recorder() -> MetricsRecorder:
    """A recorder that has seen three video attempts (one failed) and one failed text attempt."""
    recorder = MetricsRecorder()
    recorder.observe(record(VIDEO, tokens_in=1000, tokens_out=200, latency_ms=300.0, cost_usd=0.5))
    recorder.observe(record(VIDEO, tokens_in=2000, tokens_out=400, latency_ms=1500.0, cost_usd=1.25))
    recorder.observe(record(VIDEO, success=False, latency_ms=50.0, status_code=503))
    recorder.observe(record(TEXT, success=False, status_code=429))
    return recorder


def test_every_attempt_is_counted_and_failures_separately(recorder: MetricsRecorder) -> None:
    assert value(recorder, "course_llm_calls_total", VIDEO) == 3
    assert value(recorder, "course_llm_call_failures_total", VIDEO) == 1
    assert value(recorder, "course_llm_calls_total", TEXT) == 1
    assert value(recorder, "course_llm_call_failures_total", TEXT) == 1


def test_tokens_are_counted_by_direction(recorder: MetricsRecorder) -> None:
    assert value(recorder, "course_llm_tokens_total", VIDEO, direction="in") == 3000
    assert value(recorder, "course_llm_tokens_total", VIDEO, direction="out") == 600
    assert value(recorder, "course_llm_tokens_total", TEXT, direction="in") == 0


def test_cost_adds_up_and_unknown_cost_adds_nothing(recorder: MetricsRecorder) -> None:
    assert value(recorder, "course_llm_cost_usd_total", VIDEO) == 1.75
    assert value(recorder, "course_llm_cost_usd_total", TEXT) == 0


def test_latency_histogram_is_in_seconds_with_llm_buckets(recorder: MetricsRecorder) -> None:
    assert LATENCY_BUCKETS[0] == 0.1 and LATENCY_BUCKETS[-1] == 120.0
    hist = "course_llm_call_latency_seconds"
    assert value(recorder, f"{hist}_count", VIDEO) == 3
    assert value(recorder, f"{hist}_sum", VIDEO) == pytest.approx(1.85)
    assert value(recorder, f"{hist}_bucket", VIDEO, le="0.1") == 1  # the 50 ms failure
    assert value(recorder, f"{hist}_bucket", VIDEO, le="0.5") == 2
    assert value(recorder, f"{hist}_bucket", VIDEO, le="2.0") == 3
    # An attempt with no latency is counted as a call but not observed in the histogram.
    assert value(recorder, f"{hist}_count", TEXT) == 0


def test_impossible_values_are_skipped_without_losing_the_call() -> None:
    recorder = MetricsRecorder()
    recorder.observe(record(VIDEO, tokens_in=-5, tokens_out=10, latency_ms=math.nan, cost_usd=math.inf))
    assert value(recorder, "course_llm_calls_total", VIDEO) == 1
    assert value(recorder, "course_llm_tokens_total", VIDEO, direction="in") == 0
    assert value(recorder, "course_llm_tokens_total", VIDEO, direction="out") == 10
    assert value(recorder, "course_llm_cost_usd_total", VIDEO) == 0
    assert value(recorder, "course_llm_call_latency_seconds_count", VIDEO) == 0
    assert recorder.dropped == 0


def test_a_broken_record_never_raises_and_is_counted_as_dropped() -> None:
    recorder = MetricsRecorder()
    recorder.observe(object())  # type: ignore[arg-type]
    assert recorder.dropped == 1
    recorder.observe(record(VIDEO))
    assert value(recorder, "course_llm_calls_total", VIDEO) == 1


def test_recorders_do_not_share_a_registry() -> None:
    first, second = MetricsRecorder(), MetricsRecorder()
    first.observe(record(VIDEO))
    assert value(first, "course_llm_calls_total", VIDEO) == 1
    assert ("course_llm_calls_total", frozenset(VIDEO.items())) not in samples(second)


def test_process_labels_are_on_every_sample_of_every_family() -> None:
    recorder = MetricsRecorder(process_labels={"replica": 'eu-1 "a"', "pid": "4242"})
    recorder.observe(record(VIDEO, tokens_in=3, latency_ms=20.0, cost_usd=0.25))
    recorder.watch_writer(
        lambda: {"rows_written": 7, "pending": 0, "database_available": True, "degraded": None}
    )
    found = samples(recorder)
    process = {"replica": 'eu-1 "a"', "pid": "4242"}
    assert value(recorder, "course_llm_calls_total", VIDEO, **process) == 1
    assert value(recorder, "course_llm_rows_written_total", {}, **process) == 7
    bucket = {**VIDEO, **process, "le": "+Inf"}
    assert found[("course_llm_call_latency_seconds_bucket", frozenset(bucket.items()))] == 1
    unlabelled = [name for name, labels in found if not process.items() <= dict(labels).items()]
    assert unlabelled == []


def test_render_returns_the_prometheus_text_content_type(recorder: MetricsRecorder) -> None:
    body, content_type = recorder.render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE course_llm_calls_total counter" in body
    assert b"# TYPE course_llm_call_latency_seconds histogram" in body


def test_repeated_observations_add_up_in_one_series() -> None:
    recorder = MetricsRecorder()
    row = record(VIDEO, tokens_in=10, tokens_out=5, latency_ms=800.0, cost_usd=0.001)
    for _ in range(2_000):
        recorder.observe(row)
    body = recorder.render()[0].decode()
    calls = [line for line in body.splitlines() if line.startswith("course_llm_calls_total{")]
    assert len(calls) == 1 and calls[0].endswith(" 2000.0")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {KEY}", True),
        (f"bearer {KEY}", True),
        ("Bearer wrong", False),
        (KEY, False),
        (f"Basic {KEY}", False),
        (None, False),
    ],
)
def test_bearer_key_matches_only_the_exact_key(header: str | None, expected: bool) -> None:
    assert bearer_key_matches(header, KEY) is expected
    assert bearer_key_matches(header, None) is False


def metrics_client(recorder: MetricsRecorder, key: str | None = KEY) -> TestClient:
    app = FastAPI()
    app.include_router(create_metrics_router(recorder, lambda: key))
    return TestClient(app)


def test_metrics_endpoint_serves_the_exposition_with_the_key(recorder: MetricsRecorder) -> None:
    response = metrics_client(recorder).get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    calls = {
        frozenset(sample.labels.items()): sample.value
        for sample in families["course_llm_calls"].samples
        if sample.name == "course_llm_calls_total"
    }
    assert calls == {frozenset(VIDEO.items()): 3.0, frozenset(TEXT.items()): 1.0}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_metrics_endpoint_rejects_a_missing_or_wrong_key(
    recorder: MetricsRecorder, headers: dict[str, str]
) -> None:
    response = metrics_client(recorder).get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "error" in response.json()
    assert "course_llm" not in response.text


def test_metrics_endpoint_is_disabled_when_no_key_is_configured(recorder: MetricsRecorder) -> None:
    response = metrics_client(recorder, key=None).get("/metrics", headers={"Authorization": "Bearer "})
    assert response.status_code == 503
    assert "LITELLM_MASTER_KEY" in response.json()["error"]
