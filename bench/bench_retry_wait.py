"""Benchmark how long a chain takes when its first model answers 429 with a long Retry-After.

    .venv/bin/python bench/bench_retry_wait.py [--retry-after 20] [--short 2]

A timing benchmark, not a test (tests/test_routing_stage2.py checks the behaviour). Through the
facade, against the scripted upstream of tests/test_routing_stage2.py: text_processing/solo is a
one-model chain [solo] that always answers 429 with `retry-after: N`; the default chain behind it
answers at once. Each case is timed in the same run two ways:
- bounded: course_llm's rule (course_llm/_litellm/retries.py `install_retry_wait_bound`), with
  COURSE_LLM_MAX_RETRY_WAIT_S at its default (5 s): a Retry-After above it moves on at once, one
  within it is waited for once, before the retry;
- unbounded: LiteLLM 1.106.2's own waits, the wrapper taken out (its `__wrapped__` back in place)
  and the Retry-After rule off: it waits before the retry and again after it.
Issue 13 measured 41.9 s for `retry-after: 20` on main.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("FAKE_UPSTREAM_KEY", "fake-key")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_llm._litellm import MAX_RETRY_WAIT_ATTRIBUTE, load_litellm, max_retry_wait_s
from course_llm.routing.facade import ModelRouter
from course_llm.routing.registry import parse_registry
from tests.test_routing_stage2 import ACTION, Rows, ScriptedUpstream, rate_limited, stage2_registry


@contextmanager
def litellm_own_waits(router: ModelRouter) -> Iterator[None]:
    """LiteLLM's unbounded waits for the duration: the sleep wrapper out, no Retry-After bound."""
    router_class = load_litellm().Router
    bounded = router_class._time_to_sleep_before_retry
    router_class._time_to_sleep_before_retry = bounded.__wrapped__
    setattr(router._router, MAX_RETRY_WAIT_ATTRIBUTE, math.inf)
    try:
        yield
    finally:
        router_class._time_to_sleep_before_retry = bounded
        delattr(router._router, MAX_RETRY_WAIT_ATTRIBUTE)


async def timed(router: ModelRouter, up: ScriptedUpstream, retry_after_s: int) -> tuple[float, list[str]]:
    up.reset()
    up.script("m-solo", rate_limited(retry_after_s))
    started = time.perf_counter()
    response = await router.complete(ACTION, "Summarise cell biology.", strategy="solo")
    elapsed = time.perf_counter() - started
    assert response.model_id == "first", response.model_id
    return elapsed, up.models()


async def main(retry_afters: list[int]) -> None:
    with ScriptedUpstream() as up:
        registry = parse_registry(stage2_registry(up.base_url))
        async with ModelRouter(registry, writer=Rows()) as router:  # type: ignore[arg-type]
            # LiteLLM's first call, and its first failure, pay one-off set-up (~0.7 s): not timed.
            await timed(router, up, retry_afters[0])
            print(
                f"one-model chain [solo] answering 429, then the default chain; bound {max_retry_wait_s()} s"
            )
            print(f"{'retry-after':>11}  {'mode':<9}  {'seconds':>7}  upstream calls")
            for retry_after in retry_afters:
                bounded = await timed(router, up, retry_after)
                with litellm_own_waits(router):
                    unbounded = await timed(router, up, retry_after)
                for mode, (elapsed, calls) in (("bounded", bounded), ("unbounded", unbounded)):
                    print(f"{retry_after:>10}s  {mode:<9}  {elapsed:7.2f}  {' '.join(calls)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retry-after", type=int, default=20, help="the long Retry-After, seconds")
    parser.add_argument("--short", type=int, default=2, help="a Retry-After within the bound, seconds")
    args = parser.parse_args()
    asyncio.run(main([args.retry_after, args.short]))
