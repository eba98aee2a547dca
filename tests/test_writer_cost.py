"""What recording costs when nothing, or little, happens (issue 12): an idle writer sleeps, a burst
goes in one batch, and a checkpoint is one in-place write.

These pin behaviour, not timings: how often the writer drains, how many batches it sends, which
inode holds the checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from course_llm.db import BatchWriter, count_calls
from course_llm.recording.journal import Journal, claim_orphans
from course_llm.recording.records import CallRecord
from course_llm.recording.writer import RecordWriter
from tests.rows import row


def count_drains(writer: RecordWriter) -> list[int]:
    calls: list[int] = []
    drain = writer._drain

    async def counted() -> None:
        calls.append(1)
        await drain()

    writer._drain = counted  # type: ignore[method-assign]
    return calls


def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = BatchWriter.write

    async def counted(self: BatchWriter, records: Sequence[CallRecord]) -> int:
        sizes.append(len(records))
        return await original(self, records)

    monkeypatch.setattr(BatchWriter, "write", counted)
    return sizes


async def test_an_idle_writer_does_not_wake_up_every_flush_interval(
    session_factory: Any, tmp_path: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=tmp_path / "spool", flush_interval_s=0.01)
    writer.submit(row(1))
    await writer.flush()
    await asyncio.sleep(0.05)  # a wake-up flush() left behind is spent
    drains = count_drains(writer)

    await asyncio.sleep(0.3)  # thirty flush intervals with nothing to write

    assert drains == []
    task: Any = writer._task
    assert task is not None and not task.done()  # asleep, not gone: idle_exit_s is 30 s
    await writer.aclose()


async def test_rows_after_a_sleep_are_gathered_into_one_batch(
    session_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = count_batches(monkeypatch)
    writer = RecordWriter(session_factory, spool_path=tmp_path / "spool", flush_interval_s=0.05)
    writer.submit(row(0))
    await writer.flush()
    await asyncio.sleep(0.1)  # the task is asleep now
    sizes.clear()

    for n in range(1, 6):  # a burst, as a proxy's concurrent requests finish
        writer.submit(row(n))
        await asyncio.sleep(0)
    await writer.flush()

    assert sizes == [5]
    await writer.aclose()
    assert await count_calls(session_factory) == 6


async def test_closing_a_sleeping_writer_does_not_wait_a_flush_interval(
    session_factory: Any, tmp_path: Path
) -> None:
    writer = RecordWriter(session_factory, spool_path=tmp_path / "spool", flush_interval_s=30)
    writer.start()
    await asyncio.sleep(0.05)  # asleep, waiting for a first row
    # A 30 s flush interval would hold aclose() for 30 s if the wake-up for closing were lost.
    await asyncio.wait_for(writer.aclose(), 10)


def test_a_checkpoint_is_overwritten_in_place_and_reads_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "spool", owner="me")
    first = journal.append(b'{"a": 1}\n')
    journal.commit(first, compact_above=1 << 20)
    checkpoint = journal.path.with_name(journal.path.name + ".ckpt")
    inode = checkpoint.stat().st_ino

    second = journal.append(b'{"a": 2}\n' * 3)
    journal.commit(second, compact_above=1 << 20)

    assert checkpoint.stat().st_ino == inode  # the same file, no rename per batch
    assert int(checkpoint.read_text()) == second
    journal.close(all_written=False)
    (segment,) = claim_orphans(tmp_path / "spool")  # what the next process would resume from
    assert segment.checkpoint == second
    segment.remove()
