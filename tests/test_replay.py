"""Replaying an orphaned journal in chunks: the loop keeps running, memory stays bounded, the
checkpoint moves chunk by chunk, and a replay cut short resumes where it stopped.

The speed side (no stall over 50 ms at 200,000 rows) is shown by bench/bench_stalls.py; these
tests prove the cooperation itself, without timing.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from course_llm.db import count_calls
from course_llm.recording.journal import read_lines
from course_llm.recording.records import CallRecord
from course_llm.recording.rejects import LoudLog, Rejects, encode
from course_llm.recording.replay import OrphanReplay
from course_llm.recording.sink import DatabaseSink
from tests.rows import row


def orphan(prefix: Path, n: int, *, owner: str = "killed") -> Path:
    """The segment a SIGKILLed writer leaves: n rows, no checkpoint, no lock held."""
    path = prefix.with_name(f"{prefix.name}.{owner}.journal")
    path.write_bytes(b"".join(encode(row(i)) for i in range(n)))
    return path


def replay_of(prefix: Path, chunk_rows: int) -> OrphanReplay:
    loud = LoudLog()
    rejects = Rejects(prefix.with_name(prefix.name + ".rejected.jsonl"), loud)
    return OrphanReplay(prefix, rejects, loud, own=prefix.with_name("mine.journal"), chunk_rows=chunk_rows)


def sink_for(session_factory: Any, prefix: Path) -> DatabaseSink:
    loud = LoudLog()
    rejects = Rejects(prefix.with_name(prefix.name + ".rejected.jsonl"), loud)
    return DatabaseSink(
        session_factory, None, rejects, write_timeout_s=10.0, retry_attempts=1, where=str(prefix)
    )


def live_records() -> int:
    gc.collect()
    return sum(isinstance(obj, CallRecord) for obj in gc.get_objects())


async def test_other_tasks_run_between_the_chunks_of_a_replay(tmp_path: Path) -> None:
    prefix = tmp_path / "spool"
    orphan(prefix, 50)
    events: list[str] = []
    written: list[CallRecord] = []
    done = False

    async def ticker() -> None:
        while not done:
            events.append("tick")
            await asyncio.sleep(0)

    async def write(batch: list[CallRecord]) -> bool:  # never yields: any tick is the replay's doing
        events.append("write")
        written.extend(batch)
        return True

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    events.clear()
    await replay_of(prefix, chunk_rows=10).run(write)
    done = True
    await task

    writes = [i for i, event in enumerate(events) if event == "write"]
    assert len(writes) == 5
    assert all("tick" in events[a:b] for a, b in itertools.pairwise(writes))
    assert [r.request_id for r in written] == [f"req-{i}" for i in range(50)]


async def test_a_replay_holds_at_most_one_chunk_of_rows(tmp_path: Path) -> None:
    prefix = tmp_path / "spool"
    orphan(prefix, 60)
    batches: list[int] = []
    alive: list[int] = []

    async def write(batch: list[CallRecord]) -> bool:
        batches.append(len(batch))
        alive.append(live_records())
        return True

    baseline = live_records()
    await replay_of(prefix, chunk_rows=7).run(write)
    assert sum(batches) == 60 and max(batches) <= 7
    assert max(alive) - baseline <= 7


async def test_the_checkpoint_moves_chunk_by_chunk_and_a_cut_replay_resumes_there(
    tmp_path: Path, session_factory: Any
) -> None:
    prefix = tmp_path / "spool"
    path = orphan(prefix, 45)
    sink = sink_for(session_factory, prefix)
    calls = 0

    async def outage_at_third_chunk(batch: list[CallRecord]) -> bool:
        nonlocal calls
        calls += 1
        return calls < 3 and await sink.write(batch)

    first = replay_of(prefix, chunk_rows=10)
    await first.run(outage_at_third_chunk)
    assert first.rows_replayed == 20 and first.pending  # kept its lock, waiting for the database
    first.release()
    lines = path.read_bytes().split(b"\n")
    checkpoint = int(path.with_name(path.name + ".ckpt").read_text())
    assert checkpoint == sum(len(line) + 1 for line in lines[:20])
    assert await count_calls(session_factory) == 20

    second = replay_of(prefix, chunk_rows=10)
    await second.run(sink.write)
    await sink.release()
    assert second.rows_replayed == 25 and not second.pending
    assert await count_calls(session_factory) == 45
    assert not path.exists()


async def test_a_damaged_line_inside_a_chunk_is_set_aside_and_its_neighbours_written(
    tmp_path: Path, session_factory: Any
) -> None:
    prefix = tmp_path / "spool"
    path = prefix.with_name(prefix.name + ".killed.journal")
    path.write_bytes(encode(row(1)) + b'{"request_id": "broken\n' + encode(row(2)) + encode(row(3)))
    replay = replay_of(prefix, chunk_rows=2)
    sink = sink_for(session_factory, prefix)
    await replay.run(sink.write)
    await sink.release()
    assert replay.rows_replayed == 3
    assert await count_calls(session_factory) == 3
    assert "broken" in prefix.with_name(prefix.name + ".rejected.jsonl").read_text()


def test_a_chunk_stops_after_max_lines_counting_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"a\n\nbb\nccc\ntorn")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        assert read_lines(fd, 0, size, max_lines=2) == ([b"a"], 3)
        assert read_lines(fd, 3, size, max_lines=2) == ([b"bb", b"ccc"], 10)
        assert read_lines(fd, 10, size, max_lines=2) == ([], 10)  # the torn tail is never a line
        assert read_lines(fd, 0, size) == ([b"a", b"bb", b"ccc"], 10)
    finally:
        os.close(fd)


def test_a_chunk_size_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        replay_of(tmp_path / "spool", chunk_rows=0)


async def test_a_writer_that_closes_replays_a_sibling_orphaned_after_it_started(
    session_factory: Any, tmp_path: Path
) -> None:
    """`serve --workers N`: a worker killed while the others live leaves its segment; if no
    replacement replays it (slow to start, or SIGTERM came first), the last worker to close does."""
    from course_llm.recording.writer import RecordWriter

    prefix = tmp_path / "spool"
    writer = RecordWriter(session_factory, spool_path=prefix)
    writer.submit(row(0))
    await writer.flush()  # started, scanned (nothing orphaned yet), wrote its own row
    killed = orphan(prefix, 30, owner="sibling")
    writer.submit(row(100))
    await writer.flush()
    assert killed.exists()  # a busy writer looks again only every RESCAN_S
    await writer.aclose()
    assert not killed.exists() and await count_calls(session_factory) == 2 + 30
    assert writer.rows_replayed == 30


async def test_a_busy_writer_looks_for_new_orphans_every_rescan_interval(
    session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from course_llm.recording import replay
    from course_llm.recording.writer import RecordWriter

    prefix = tmp_path / "spool"
    writer = RecordWriter(session_factory, spool_path=prefix, flush_interval_s=0.01)
    writer.submit(row(0))
    await writer.flush()
    monkeypatch.setattr(replay, "RESCAN_S", 0.0)
    killed = orphan(prefix, 5, owner="sibling")
    for i in range(1, 200):
        writer.submit(row(i))
        await writer.flush()
        if not killed.exists():
            break
    try:
        assert not killed.exists() and writer.rows_replayed == 5
    finally:
        await writer.aclose()
