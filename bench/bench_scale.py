"""Benchmark scale-out (issue 15): one worker, two workers, three replicas behind nginx, in one run.

    .venv/bin/python bench/bench_scale.py [--requests 600] [--concurrency 16] [--rounds 1]
        [--delay-ms 0] [--mix plain=8,stream=1,fallback=1] [--redis-url URL]

What one more process buys on this machine, and what nginx in front costs. One fake upstream
(tests/fake_upstream.py in its own process, answering after `--delay-ms`) serves every run; each
run gets a fresh PostgreSQL database (so no run pays for another's rows) and Redis (flushed
first), as replicas would share in production. The runs, each started, warmed up (one request
per client), measured and stopped before the next starts, so no idle proxy competes for the cores:

- `1 worker`: `course-llm serve --workers 1`, the anchor every ratio is taken against;
- `2 workers`: `course-llm serve --workers 2` (N worker processes on one port);
- `3 replicas + nginx`: three `course-llm serve` processes of one worker each, each with its own
  journal, behind nginx (tests/nginx.py: keepalive, no buffering), the client calling nginx.

Each run sends `--requests` requests of the same mix from `--concurrency` clients; with
`--rounds` > 1 the runs are repeated in alternating order and their samples pooled, so drift in
the machine's load hits all alike. Printed per run: answered requests and errors, req/s, p50 and
p95 latency, CPU per request (every process of the run: proxies, their workers, nginx; not the
upstream or this client), the ratios against `1 worker`, and the rows the run's database holds
against those its answers need. On 2 cores the client and the upstream share the machine with the
proxies: compare the ratios, not the absolute figures, across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import yaml
from sqlalchemy.engine import make_url

from bench.bench_proxy import ROWS_PER_REQUEST, Tally, client, one, parse_mix, percentile
from bench.proxy_targets import KEY, Upstream, count_rows, cpu_seconds, proc_table, registry_data
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_admin
from tests.nginx import Nginx, find_or_install_nginx
from tests.proxy_process import ProxyProcess, free_port, serve_argv

ANCHOR = "1 worker"
REDIS_URL = os.environ.get("COURSE_LLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass
class Run:
    """One configuration: how to start it, and what it measured over every round."""

    name: str
    start: Callable[[Path, str], list[ProxyProcess | Nginx]]
    tally: Tally = field(default_factory=Tally)
    answered: Counter[str] = field(default_factory=Counter)
    rows_found: int = 0
    unavailable: str = ""

    @property
    def rows_expected(self) -> int:
        return sum(ROWS_PER_REQUEST[kind] * n for kind, n in self.answered.items())


def workers_supported() -> bool:
    """Whether this checkout's `serve` has `--workers` (the flag came with issue 15)."""
    done = subprocess.run(
        serve_argv("--help"),
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "200"},
    )
    return "--workers" in done.stdout


def serve_env(db_url: str, journal: Path, replica: str) -> dict[str, str]:
    return {
        "LITELLM_MASTER_KEY": KEY,
        "BENCH_KEY": "x",
        "COURSE_LLM_DATABASE_URL": db_url,
        "COURSE_LLM_SPOOL_PATH": str(journal),
        "COURSE_LLM_REDIS_URL": REDIS_URL,
        "COURSE_LLM_REPLICA": replica,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


def serve(registry: Path, tmp: Path, db_url: str, name: str, *extra: str) -> ProxyProcess:
    port = free_port()
    argv = serve_argv("--registry", str(registry), "--port", str(port), *extra)
    return ProxyProcess(argv, serve_env(db_url, tmp / name / "journal", name), port, tmp / f"{name}.log")


def start_workers(registry: Path, workers: int) -> Callable[[Path, str], list[ProxyProcess | Nginx]]:
    def start(tmp: Path, db_url: str) -> list[ProxyProcess | Nginx]:
        return [serve(registry, tmp, db_url, f"workers-{workers}", "--workers", str(workers)).start()]

    return start


def start_replicas(
    registry: Path, nginx: str, replicas: int
) -> Callable[[Path, str], list[ProxyProcess | Nginx]]:
    def start(tmp: Path, db_url: str) -> list[ProxyProcess | Nginx]:
        processes = [serve(registry, tmp, db_url, f"replica-{i}") for i in range(replicas)]
        try:
            with ThreadPoolExecutor(replicas) as pool:
                for future in [pool.submit(p.start) for p in processes]:
                    future.result()
            balancer = Nginx(nginx, [p.port for p in processes], tmp / "nginx").start()
        except BaseException:
            stop_all(processes)
            raise
        return [balancer, *processes]  # the first one is what the clients call

    return start


def stop_all(processes: list[ProxyProcess] | list[ProxyProcess | Nginx]) -> None:
    with ThreadPoolExecutor(max(1, len(processes))) as pool:
        list(pool.map(lambda p: p.stop(), processes))


def pids(processes: list[ProxyProcess | Nginx]) -> list[int]:
    return [p.process.pid for p in processes if p.process is not None]


def cpu_of(processes: list[ProxyProcess | Nginx]) -> float:
    table = proc_table()
    return sum(cpu_seconds(pid, table) for pid in pids(processes))


async def fresh_database() -> str:
    name = f"course_llm_bench_{secrets.token_hex(6)}"
    await _postgres_admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"')
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    name = make_url(url).database
    await _postgres_admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis() -> None:
    import redis

    server = redis.Redis.from_url(REDIS_URL)
    try:
        server.flushdb()
    finally:
        server.close()


async def measure(run: Run, base_url: str, processes: list[ProxyProcess | Nginx], args: argparse.Namespace,
                  mix: list[str]) -> None:  # fmt: skip
    """Warm up (one request per client), then `--requests` requests from `--concurrency` clients."""
    from bench import bench_proxy

    http = client(args.concurrency)
    try:

        async def burst(indices: range, tally: Tally) -> None:
            pending = iter(indices)

            async def worker() -> None:
                for i in pending:  # shared: each index is taken by exactly one worker
                    await one(http, base_url, mix[i % len(mix)], i, tally)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await burst(range(args.concurrency), Tally())
        cpu, start = cpu_of(processes), time.perf_counter()
        await burst(range(args.requests), run.tally)
        run.tally.elapsed_s += time.perf_counter() - start
        run.tally.cpu_s += cpu_of(processes) - cpu
        run.tally.requests += args.requests
    finally:
        await http.aclose()
    for kind in ROWS_PER_REQUEST:  # warm-up answers included: they are rows too
        run.answered[kind] += bench_proxy.ANSWERED.pop((base_url, kind), 0)


async def one_run(run: Run, tmp: Path, args: argparse.Namespace, mix: list[str]) -> None:
    tmp.mkdir(parents=True)
    db_url = await fresh_database()
    flush_redis()
    processes: list[ProxyProcess | Nginx] = []
    try:
        processes = await asyncio.to_thread(run.start, tmp, db_url)
        await measure(run, processes[0].base_url, processes, args, mix)
        await asyncio.to_thread(stop_all, processes)  # SIGTERM: every process drains its rows
        run.rows_found += await count_rows(db_url) or 0
    finally:
        await asyncio.to_thread(stop_all, processes)
        await drop_database(db_url)


def report(runs: list[Run], args: argparse.Namespace) -> list[str]:
    anchor = next(r for r in runs if r.name == ANCHOR)
    base_rate = len(anchor.tally.samples) / anchor.tally.elapsed_s
    base_p50 = percentile(anchor.tally.samples, 50)
    base_cpu = anchor.tally.cpu_s * 1000 / anchor.tally.requests
    lines = [
        f"\n{args.requests} requests per run and round at {args.concurrency} concurrent clients, "
        f"{args.rounds} round(s)",
        f"   {'run':<20} {'ok':>6} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms/req':>10}"
        f"   vs {ANCHOR}                        rows found/expected",
    ]
    for run in runs:
        if run.unavailable:
            lines.append(f"   {run.name:<20} unavailable: {run.unavailable}")
            continue
        t = run.tally
        rate, p50, p95 = len(t.samples) / t.elapsed_s, percentile(t.samples, 50), percentile(t.samples, 95)
        cpu = t.cpu_s * 1000 / t.requests
        ratios = f"req/s ×{rate / base_rate:.2f}  p50 ×{p50 / base_p50:.2f}  CPU ×{cpu / base_cpu:.2f}"
        errors = sum(t.errors.values())
        detail = f"  errors {dict(t.errors)}" if errors else ""
        lines.append(
            f"   {run.name:<20} {len(t.samples):>6} {errors:>6} {rate:7.1f} {p50:8.2f} {p95:8.2f} {cpu:10.2f}"
            f"   {ratios:<40} {run.rows_found}/{run.rows_expected}{detail}"
        )
    return lines


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600, help="measured requests per run and round")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the runs, alternating their order")
    parser.add_argument("--delay-ms", type=float, default=0, help="upstream answer delay (default 0)")
    parser.add_argument("--mix", default="plain=8,stream=1,fallback=1", help="request kinds and weights")
    return parser.parse_args()


async def main() -> None:
    args = arguments()
    mix = parse_mix(args.mix)
    shares = ", ".join(f"{k} {v / len(mix):.0%}" for k, v in Counter(mix).items())
    print(
        f"scale benchmark: {os.cpu_count()} cores, upstream delay {args.delay_ms:g} ms, mix {shares}, "
        f"PostgreSQL {make_url(POSTGRES_ADMIN_URL).host} (a fresh database per run), Redis {REDIS_URL}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        upstream = Upstream(args.delay_ms)
        try:
            registry = tmp / "bench.yaml"
            registry.write_text(yaml.safe_dump(registry_data(f"{upstream.root_url}/v1")))
            has_workers = workers_supported()
            nginx, why_not = find_or_install_nginx()
            runs = [
                Run(ANCHOR, start_workers(registry, 1)),
                Run("2 workers", start_workers(registry, 2)),
                Run("3 replicas + nginx", start_replicas(registry, nginx or "", 3)),
            ]
            if not has_workers:
                # Without the flag, serve is one process: the same thing as `--workers 1`.
                runs[0].start = lambda t, db: [serve(registry, t, db, "workers-1").start()]
                runs[1].unavailable = "this checkout's `course-llm serve` has no --workers"
            if nginx is None:
                runs[2].unavailable = why_not
            for r in range(args.rounds):
                for run in runs if r % 2 == 0 else runs[::-1]:
                    if run.unavailable:
                        continue
                    print(f"round {r + 1}: {run.name} …", flush=True)
                    try:
                        await one_run(run, tmp / f"{r}-{run.name.replace(' ', '_')}", args, mix)
                    except RuntimeError as exc:  # it did not start: say why, measure the others
                        said = [line for line in str(exc).splitlines() if line.strip()]
                        run.unavailable = " / ".join(said[:1] + said[-1:]) or type(exc).__name__
                        if run.name == ANCHOR:
                            raise
        finally:
            upstream.stop()
    print("\n".join(report(runs, args)))


if __name__ == "__main__":
    asyncio.run(main())
