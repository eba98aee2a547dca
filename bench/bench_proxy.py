"""Benchmark the proxy: course_llm's logger versus the same LiteLLM proxy with no callbacks.

    .venv/bin/python bench/bench_proxy.py [--quick] [--delay-ms 50]

Both proxies run the same compiled model list, router settings and auth against the same fake
upstream (tests/fake_upstream.py, its own process), and receive the same request mix:
80 % plain calls, 10 % streamed, 10 % needing a fallback (the first model answers 500 twice).
The baseline is `litellm --config` with course_llm's callback removed; the other is
`course-llm serve` writing every attempt to SQLite. Printed: p50/p95 latency and throughput,
sequential (requests interleaved between the two) and at 16 concurrent clients, with ratios.
Target: p50 ratio at most 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import yaml

from course_llm.routing.compiler import compile_proxy_config, render_proxy_config
from course_llm.routing.registry import parse_registry
from tests.proxy_process import ProxyProcess, free_port, litellm_argv, serve_argv

KEY = "sk-bench"
MIX = ["plain"] * 8 + ["stream", "fallback"]


def registry_data(upstream: str) -> dict[str, Any]:
    model = {
        "provider": "openai",
        "api_base": upstream,
        "api_key_env": "BENCH_KEY",
        "max_context": 8000,
        "cost_per_1k": {"input": 0.001, "output": 0.002},
    }
    return {
        "models": {"ok": {**model, "model": "bench-ok"}, "flaky": {**model, "model": "bench-fail-500"}},
        "actions": {"plain": {}, "fallback": {}},
        "routing": {"plain": {"default": ["ok"]}, "fallback": {"default": ["flaky", "ok"]}},
    }


def start_upstream(delay_ms: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "tests/fake_upstream.py", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    port = int(line[1])
    httpx.post(
        f"http://127.0.0.1:{port}/_control/behaviour", json={"model": "*", "delay_ms": delay_ms}, timeout=5
    )
    return process, f"http://127.0.0.1:{port}/v1"


ERRORS: dict[str, int] = {}


async def one(client: httpx.AsyncClient, base: str, kind: str, i: int) -> float:
    """One request's latency in ms; a failed request is counted in ERRORS and timed all the same."""
    try:
        return await _one(client, base, kind, i)
    except httpx.HTTPError as exc:
        ERRORS[base] = ERRORS.get(base, 0) + 1
        print(f"   ! {base}: {exc!r}"[:200])
        return float("nan")


async def _one(client: httpx.AsyncClient, base: str, kind: str, i: int) -> float:
    body: dict[str, Any] = {
        "model": "fallback" if kind == "fallback" else "plain",
        "messages": [{"role": "user", "content": f"Summarise lecture {i} in two sentences."}],
    }
    start = time.perf_counter()
    if kind == "stream":
        body["stream"] = True
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_bytes():
                pass
    else:
        response = await client.post(f"{base}/v1/chat/completions", json=body)
        response.raise_for_status()
    return (time.perf_counter() - start) * 1000


def summary(name: str, samples: list[float], elapsed: float | None = None) -> str:
    samples = [x for x in samples if x == x]  # drop failed requests (NaN)
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    rate = f"   {len(samples) / elapsed:7.1f} req/s" if elapsed else ""
    return f"   {name:<24} p50 {_p50(samples):7.1f} ms   p95 {p95:7.1f} ms{rate}"


def _p50(samples: list[float]) -> float:
    return statistics.median([x for x in samples if x == x])


async def sequential(bases: dict[str, str], n: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in bases}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        for base in bases.values():  # warm-up
            for i in range(20):
                await one(client, base, MIX[i % len(MIX)], i)
        for i in range(n):
            order = list(bases.items()) if i % 2 else list(reversed(bases.items()))
            for name, base in order:
                samples[name].append(await one(client, base, MIX[i % len(MIX)], i))
    return samples


async def concurrent(base: str, n: int, clients: int) -> tuple[list[float], float]:
    samples: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {KEY}"}, timeout=60, limits=limits
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                samples.append(await one(client, base, MIX[i % len(MIX)], i))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return samples, time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples (a smoke run)")
    parser.add_argument("--delay-ms", type=int, default=50, help="upstream answer delay")
    args = parser.parse_args()
    n_seq, n_conc = (60, 160) if args.quick else (300, 800)
    upstream, upstream_url = start_upstream(args.delay_ms)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        registry = tmp / "bench.yaml"
        registry.write_text(yaml.safe_dump(registry_data(upstream_url)))
        baseline_config = compile_proxy_config(parse_registry(registry_data(upstream_url)))
        baseline_config["litellm_settings"]["callbacks"] = []  # the only difference: no course_llm logger
        config_path = tmp / "baseline.yaml"
        config_path.write_text(render_proxy_config(baseline_config, "bench"))
        env = {
            "LITELLM_MASTER_KEY": KEY,
            "BENCH_KEY": "x",
            "COURSE_LLM_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "COURSE_LLM_SPOOL_PATH": str(tmp / "spool.jsonl"),
        }
        ports = {"course_llm": free_port(), "no callbacks": free_port()}
        proxies = {
            "course_llm": ProxyProcess(
                serve_argv("--registry", str(registry), "--port", str(ports["course_llm"])),
                env,
                ports["course_llm"],
                tmp / "a.log",
            ),
            "no callbacks": ProxyProcess(
                litellm_argv(config_path, ports["no callbacks"]), env, ports["no callbacks"], tmp / "b.log"
            ),
        }
        try:
            for process in proxies.values():
                process.start()
            bases = {name: p.base_url for name, p in proxies.items()}
            print(
                f"course_llm proxy benchmark ({os.cpu_count()} cores, upstream delay {args.delay_ms} ms, "
                "mix: 80% plain, 10% streamed, 10% fallback)"
            )
            print(f"\nsequential, {n_seq} requests each, interleaved")
            seq = await sequential(bases, n_seq)
            for name, samples in seq.items():
                print(summary(name, samples))
            ratio = _p50(seq["course_llm"]) / _p50(seq["no callbacks"])
            print(f"   p50 ratio course_llm / no callbacks: {ratio:.3f}   (target <= 1.05)")
            print(f"\n16 concurrent clients, {n_conc} requests each (two rounds, alternating)")
            results: dict[str, list[float]] = {name: [] for name in bases}
            elapsed: dict[str, float] = dict.fromkeys(bases, 0.0)
            for _ in range(2):
                for name, base in bases.items():
                    samples, seconds = await concurrent(base, n_conc // 2, 16)
                    results[name] += samples
                    elapsed[name] += seconds
            for name in bases:
                print(summary(name, results[name], elapsed[name]))
            ratio = _p50(results["course_llm"]) / _p50(results["no callbacks"])
            throughput = (n_conc / elapsed["course_llm"]) / (n_conc / elapsed["no callbacks"])
            print(f"   p50 ratio {ratio:.3f}   throughput ratio {throughput:.3f}")
        finally:
            for process in proxies.values():
                process.stop()
            upstream.terminate()
            upstream.wait(timeout=10)
        if ERRORS:
            print(f"\nfailed requests: {ERRORS}")
        rows = subprocess.run(
            ["sqlite3", str(tmp / "bench.db"), "select count(*) from llm_calls"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(f"\nrows written by course_llm: {rows or '(sqlite3 CLI not installed)'}")


if __name__ == "__main__":
    asyncio.run(main())
