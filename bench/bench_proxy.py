"""Benchmark the proxy: what course_llm's recording costs over plain LiteLLM, measured honestly.

    .venv/bin/python bench/bench_proxy.py [--quick] [--delay-ms 0] [--db postgres|sqlite]
        [--requests 1000] [--mix plain=8,stream=1,fallback=1] [--py-spy PATH]

One run, one fake upstream (tests/fake_upstream.py, its own process, answering after `--delay-ms`,
0 by default, so the proxies' own cost is what shows), four targets (bench/proxy_targets.py):
`direct` (the upstream itself), `litellm` (plain `litellm --config`, no callback: the anchor),
`litellm+callback` (the compiled config as is) and `serve` (`course-llm serve`); the last two
write every attempt to the same database (PostgreSQL at 127.0.0.1:5432/test by default).

Levels: 1 client (the targets' requests interleaved one by one, the order reversed every other
request) and 16 and 64 concurrent clients (each target in turn, alternating the order over
`--rounds` rounds, so drift in the machine's load hits all alike). Every level sends each target
`--requests` requests of the same mix. Printed per target: p50 and p99 latency, throughput, and
CPU per request from /proc (utime + stime of the target process and its children, before and
after each phase, divided by the phase's requests), with ratios against `litellm`. The 95 %
interval of each p50 ratio (bootstrap) says whether a difference is resolved. With py-spy (on
PATH, or `--py-spy PATH`), `serve` and `litellm` are then profiled in a sequential phase of their
own (bench/proxy_profile.py); the figures above are taken without it attached.

At 1 client the CPU of `direct` is not shown: the upstream serves every target in that phase.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx

from bench.proxy_profile import find_py_spy, profile_while
from bench.proxy_targets import (
    ANCHOR,
    KEY,
    Target,
    Upstream,
    count_rows,
    cpu_of,
    database_url,
    idle_cpu_ms_per_s,
    start_targets,
    stop_targets,
)

KINDS = ("plain", "stream", "fallback")
#: Rows one answered request of each kind should write: the fallback's first model is tried twice
#: (max_attempts 2) before the second answers.
ROWS_PER_REQUEST = {"plain": 1, "stream": 1, "fallback": 3}
#: Answered requests per (base URL, kind), warm-ups and profiles included, to check the row count.
ANSWERED: Counter[tuple[str, str]] = Counter()


def parse_mix(text: str) -> list[str]:
    """`plain=8,stream=1,fallback=1` → the kinds of 10 consecutive requests, spread out."""
    weights = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in KINDS or not weight.strip().isdigit():
            raise SystemExit(f"--mix: expected kind=weight with kind in {KINDS}, got {part!r}")
        weights[kind.strip()] = int(weight)
    total = sum(weights.values())
    # Smooth weighted round-robin (nginx's): each kind exactly `weight` times per cycle, spread out.
    credit, order = dict.fromkeys(weights, 0), []
    for _ in range(total):
        for kind in credit:
            credit[kind] += weights[kind]
        chosen = max(credit, key=lambda k: credit[k])
        credit[chosen] -= total
        order.append(chosen)
    return order


@dataclass
class Tally:
    """One target at one level: latencies (ms), CPU seconds, requests, wall seconds, errors."""

    samples: list[float] = field(default_factory=list)
    #: Latency by request index: at 1 client, index i went to every target back to back.
    by_index: dict[int, float] = field(default_factory=dict)
    #: CPU seconds per stretch of requests (1 client: tenths of the phase, the same for every target).
    cpu_chunks: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    requests: int = 0
    elapsed_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


def client(connections: int) -> httpx.AsyncClient:
    # Idle connections are dropped after 2 s, well before uvicorn's 5 s (plain `litellm`): with
    # httpx's default 5 s on both sides, a target idle between rounds raced the server's close.
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(headers=headers, timeout=60, limits=limits, trust_env=False)


async def one(http: httpx.AsyncClient, base: str, kind: str, i: int, tally: Tally) -> None:
    """One request, timed to its last byte; a failure is counted (by kind of error), not timed."""
    body: dict[str, Any] = {
        "model": "fallback" if kind == "fallback" else "plain",
        "messages": [{"role": "user", "content": f"Summarise lecture {i} in two sentences."}],
    }
    start = time.perf_counter()
    try:
        if kind == "stream":
            body["stream"] = True
            async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for _ in response.aiter_bytes():
                    pass
        else:
            response = await http.post(f"{base}/v1/chat/completions", json=body)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        tally.errors[type(exc).__name__] += 1
        return
    tally.samples.append((time.perf_counter() - start) * 1000)
    tally.by_index[i] = tally.samples[-1]
    ANSWERED[base, kind] += 1


async def sequential(targets: list[Target], n: int, mix: list[str], warmup: int) -> dict[str, Tally]:
    """One client: request i goes to every target in turn (reversed order on odd i)."""
    tallies = {t.name: Tally() for t in targets}
    clients = {t.name: client(1) for t in targets}
    try:
        for t in targets:
            for i in range(warmup):
                await one(clients[t.name], t.base_url, mix[i % len(mix)], i, Tally())
        chunk = max(1, n // 10)
        start, cpu = time.perf_counter(), cpu_of(targets)
        for i in range(n):
            for t in targets if i % 2 else targets[::-1]:
                await one(clients[t.name], t.base_url, mix[i % len(mix)], i, tallies[t.name])
            if (i + 1) % chunk == 0 or i == n - 1:
                now = cpu_of(targets)
                for name, tally in tallies.items():
                    tally.cpu_chunks.append(now[name] - cpu[name])
                cpu = now
        elapsed = time.perf_counter() - start
        for tally in tallies.values():
            tally.cpu_s, tally.requests, tally.elapsed_s = sum(tally.cpu_chunks), n, elapsed
    finally:
        for http in clients.values():
            await http.aclose()
    return tallies


async def burst(
    http: httpx.AsyncClient, target: Target, indices: range, workers: int, mix: list[str], tally: Tally
) -> None:
    """`indices` requests to one target from `workers` clients at once; CPU and wall time added up."""
    pending = iter(indices)

    async def worker() -> None:
        for i in pending:  # shared iterator: each index is taken by exactly one worker
            await one(http, target.base_url, mix[i % len(mix)], i, tally)

    cpu = target.cpu()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    tally.elapsed_s += time.perf_counter() - start
    tally.cpu_s += target.cpu() - cpu
    tally.requests += len(indices)


async def concurrent(
    targets: list[Target], n: int, workers: int, rounds: int, mix: list[str]
) -> dict[str, Tally]:
    tallies = {t.name: Tally() for t in targets}
    clients = {t.name: client(workers) for t in targets}
    try:
        for t in targets:  # open the connections (and warm the proxy) before anything is measured
            await burst(clients[t.name], t, range(workers), workers, mix, Tally())
        per_round = math.ceil(n / rounds)
        for r in range(rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                indices = range(r * per_round, min(n, (r + 1) * per_round))
                await burst(clients[t.name], t, indices, workers, mix, tallies[t.name])
    finally:
        for http in clients.values():
            await http.aclose()
    return tallies


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio_interval(target: Tally, anchor: Tally, paired: bool, resamples: int = 400) -> tuple[float, float]:
    """95 % bootstrap interval of p50(target) / p50(anchor). Paired (1 client): request indices are
    resampled, the same for both, so load drift that hit both requests of an index cancels out."""
    rng = random.Random(12)
    if paired:
        common = sorted(target.by_index.keys() & anchor.by_index.keys())
        pairs = [(target.by_index[i], anchor.by_index[i]) for i in common]
        draws = (rng.choices(pairs, k=len(pairs)) for _ in range(resamples))
        ratios = [percentile([a for a, _ in d], 50) / percentile([b for _, b in d], 50) for d in draws]
    else:
        ratios = [
            percentile(rng.choices(target.samples, k=len(target.samples)), 50)
            / percentile(rng.choices(anchor.samples, k=len(anchor.samples)), 50)
            for _ in range(resamples)
        ]
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def cpu_interval(target: Tally, anchor: Tally, resamples: int = 400) -> tuple[float, float] | None:
    """95 % bootstrap interval of the CPU ratio over the phase's stretches (1 client: the same
    requests for both, resampled together); None without enough stretches to resample."""
    pairs = list(zip(target.cpu_chunks, anchor.cpu_chunks, strict=False))
    if len(pairs) < 5:
        return None
    rng = random.Random(13)
    draws = (rng.choices(pairs, k=len(pairs)) for _ in range(resamples))
    ratios = sorted(sum(a for a, _ in d) / (sum(b for _, b in d) or math.nan) for d in draws)
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def report(title: str, tallies: dict[str, Tally], many_clients: bool, skip_cpu: set[str]) -> list[str]:
    """One level's table; at 1 client (`many_clients` False) no throughput, and paired intervals."""
    anchor = tallies[ANCHOR]
    anchor_cpu = anchor.cpu_s * 1000 / anchor.requests
    anchor_rate = len(anchor.samples) / anchor.elapsed_s
    lines = [
        f"\n{title}",
        f"   {'target':<17} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'CPU ms/req':>10}"
        f"   vs {ANCHOR} [95 % interval]",
    ]
    for name, t in tallies.items():
        p50, p99, rate = percentile(t.samples, 50), percentile(t.samples, 99), len(t.samples) / t.elapsed_s
        cpu = t.cpu_s * 1000 / t.requests
        low, high = (
            ratio_interval(t, anchor, paired=not many_clients)
            if t.samples and anchor.samples
            else (math.nan,) * 2
        )
        ratios = f"p50 ×{p50 / percentile(anchor.samples, 50):.3f} [{low:.3f}, {high:.3f}]"
        if name not in skip_cpu:
            ratios += f"  CPU ×{cpu / anchor_cpu:.3f}"
            interval = None if many_clients else cpu_interval(t, anchor)
            ratios += f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        if many_clients:
            ratios += f"  req/s ×{rate / anchor_rate:.3f}"
        shown_cpu = "—" if name in skip_cpu else f"{cpu:.2f}"
        shown_rate = f"{rate:7.1f}" if many_clients else f"{'':7}"
        errors = f"  errors {dict(t.errors)}" if t.errors else ""
        lines.append(f"   {name:<17} {p50:8.2f} {p99:8.2f} {shown_rate} {shown_cpu:>10}   {ratios}{errors}")
    return lines


def readme_table(levels: dict[int, dict[str, Tally]]) -> list[str]:
    """The headline table, as Markdown for the README (ratios against the anchor in brackets)."""
    seq, anchor = levels[1], levels[1][ANCHOR]
    columns = ["target", "sequential p50", "proxy CPU per request"]
    columns += [f"{c} clients" for c in levels if c > 1]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for name, t in seq.items():
        if name == "direct":
            continue
        p50 = percentile(t.samples, 50)
        cpu, anchor_cpu = t.cpu_s * 1000 / t.requests, anchor.cpu_s * 1000 / anchor.requests
        cells = [
            f"{p50:.2f} ms (× {p50 / percentile(anchor.samples, 50):.3f})",
            f"{cpu:.2f} ms (× {cpu / anchor_cpu:.3f})",
        ]
        for level, tallies in levels.items():
            if level > 1:
                rate = len(tallies[name].samples) / tallies[name].elapsed_s
                base = len(tallies[ANCHOR].samples) / tallies[ANCHOR].elapsed_s
                cells.append(f"{rate:.1f} req/s (× {rate / base:.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (100 requests a level)")
    parser.add_argument("--delay-ms", type=float, default=0, help="upstream answer delay (default 0)")
    parser.add_argument("--requests", type=int, help="requests per target per level (default 1000)")
    parser.add_argument("--rounds", type=int, help="alternating rounds at 16/64 clients (default 4)")
    parser.add_argument("--levels", default="1,16,64", help="concurrent clients per level (1 = interleaved)")
    parser.add_argument("--mix", default="plain=8,stream=1,fallback=1", help="request kinds and weights")
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--db-url", help="SQLAlchemy URL overriding --db")
    parser.add_argument("--py-spy", help="py-spy to profile with (default: the one on PATH, if any)")
    parser.add_argument("--profile-requests", type=int, help="requests per profiled target (default 500)")
    parser.add_argument("--out", type=Path, help="where profiles go (default: a new /tmp/bench_proxy-* dir)")
    return parser.parse_args()


async def main() -> None:
    args = arguments()
    n = args.requests or (100 if args.quick else 1000)
    rounds = args.rounds or (2 if args.quick else 4)
    n_profile = args.profile_requests or (60 if args.quick else 500)
    levels = [int(x) for x in args.levels.split(",")]
    mix = parse_mix(args.mix)
    py_spy = find_py_spy(args.py_spy)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_proxy-"))
    out.mkdir(parents=True, exist_ok=True)
    shares = ", ".join(f"{k} {v / len(mix):.0%}" for k, v in Counter(mix).items())
    print(
        f"proxy benchmark: {os.cpu_count()} cores, upstream delay {args.delay_ms:g} ms, mix {shares} "
        f"(fallback: the first model answers 500, twice), {n} requests per target per level"
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        db_url = database_url(args.db, tmp, args.db_url)
        upstream = Upstream(args.delay_ms)
        targets: list[Target] = []
        rows_before = 0
        try:
            targets = start_targets(tmp, upstream, db_url)
            rows_before = await count_rows(db_url) or 0
            print(f"database: {db_url}   (rows in llm_calls before: {rows_before})")
            idle = idle_cpu_ms_per_s(targets, 5.0)
            print("idle CPU, ms per s: " + ", ".join(f"{name} {ms:.1f}" for name, ms in idle.items()))
            results: dict[int, dict[str, Tally]] = {}
            for level in levels:
                if level == 1:
                    results[1] = await sequential(targets, n, mix, warmup=30)
                    lines = report(
                        f"1 client, {n} requests per target, interleaved", results[1], False, {"direct"}
                    )
                    # Each target idles while the others answer: its idle CPU is in its figure.
                    seconds = results[1][ANCHOR].elapsed_s
                    shares = ", ".join(
                        f"{k} {ms * seconds / n:.2f}" for k, ms in idle.items() if k != "direct"
                    )
                    lines.append(f"   of which idle (idle rate × phase time), ms per request: {shares}")
                else:
                    results[level] = await concurrent(targets, n, level, rounds, mix)
                    title = (
                        f"{level} concurrent clients, {n} requests per target ({rounds} rounds, alternating)"
                    )
                    lines = report(title, results[level], True, set())
                print("\n".join(lines), flush=True)
            if 1 in results:
                print("\nREADME table (ratios against plain LiteLLM without the callback):")
                print("\n".join(readme_table(results)))
            if py_spy:
                for name in ("serve", "litellm+callback", ANCHOR):
                    target = next(t for t in targets if t.name == name)
                    print(f"\npy-spy profile of {name}, {n_profile} sequential requests:", flush=True)

                    async def load(target: Target = target) -> None:
                        await sequential([target], n_profile, mix, warmup=0)

                    profile = await profile_while(py_spy, target.pid, out / f"{name}.raw.txt", load)
                    print("\n".join(profile.lines(n_profile, 15)))
            else:
                print(
                    "\n(no py-spy, no profile: python3 -m venv /tmp/spy && /tmp/spy/bin/pip install py-spy, "
                    "then --py-spy /tmp/spy/bin/py-spy)"
                )
        finally:
            stop_targets(targets)
            upstream.stop()
        rows = (await count_rows(db_url) or 0) - rows_before
        recording = {t.base_url for t in targets if t.name in ("litellm+callback", "serve")}
        expected = sum(
            ROWS_PER_REQUEST[kind] * k for (base, kind), k in ANSWERED.items() if base in recording
        )
        print(
            f"\nrows written by litellm+callback and serve: {rows} (expected from their answers: {expected})"
        )


if __name__ == "__main__":
    asyncio.run(main())
