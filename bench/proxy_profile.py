"""py-spy profiles of a proxy under bench/bench_proxy.py's sequential load, summarised.

py-spy (``pip install py-spy``; not a project dependency) samples a running process from outside
and writes ``--format raw``: one line per distinct stack, ``frame;frame;…;frame count``, root first,
each frame ``function (file:line)``; ``--function`` makes the line the function's first line, so
samples add up per function. The summary counts *own* samples (the last frame of each stack: where
the CPU actually was), per function and per package, over non-idle samples only (py-spy's
default leaves idle threads out, so an event loop waiting in epoll is not counted). Without
``--native``, time in C code is charged to the Python frame that called it: uvloop's own work
shows as ``Runner.run``, a C call in a worker thread as ``_worker``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
#: Where a package's path starts: after site-packages/, the stdlib's directory, or this checkout.
_SITE = re.compile(r"site-packages/")
_STDLIB = re.compile(r"/lib/python3\.\d+/")
_CHECKOUT = re.compile(re.escape(f"{Path(__file__).resolve().parent.parent}/"))


def find_py_spy(explicit: str | None) -> str | None:
    """The py-spy to use: the given path, else the one on PATH, else None (no profile)."""
    if explicit:
        return explicit
    return shutil.which("py-spy")


def _split(file: str) -> tuple[str, str]:
    """(kind, path from the package on): kind is "" for installed packages and the checkout,
    "stdlib/" for the standard library; the path is the file itself when no root is known."""
    for root, kind in ((_SITE, ""), (_STDLIB, "stdlib/"), (_CHECKOUT, "")):
        match = root.search(file)
        if match:
            return kind, file[match.end() :]
    return "", file


def short(file: str) -> str:
    """A frame's file from its package on: `litellm/router.py`, `asyncio/runners.py`, …"""
    return _split(file)[1]


def package_of(file: str) -> str:
    """`litellm`, `sqlalchemy`, `course_llm`, `stdlib/asyncio`, … for a frame's file."""
    kind, path = _split(file)
    return kind + path.split("/", 1)[0].removesuffix(".py")


@dataclass
class Profile:
    path: Path
    total: int
    functions: Counter[str]
    packages: Counter[str]

    def lines(self, requests: int, top: int) -> list[str]:
        if not self.total:
            return [f"   (no samples in {self.path})"]
        out = [f"   {self.path}: {self.total} samples over {requests} requests"]
        shares = ", ".join(f"{name} {n / self.total:.0%}" for name, n in self.packages.most_common(8))
        out.append(f"   own samples by package: {shares}")
        out.append(f"   top {top} functions by own samples:")
        out += [f"     {n / self.total:6.1%}  {name}" for name, n in self.functions.most_common(top)]
        return out


def parse_raw(path: Path) -> Profile:
    functions: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        match = _FRAME.match(leaf)
        function, file = (match["function"], match["file"]) if match else (leaf, "?")
        functions[f"{function} ({short(file)})"] += int(count)
        packages[package_of(file)] += int(count)
        total += int(count)
    return Profile(path, total, functions, packages)


async def profile_while(
    py_spy: str, pid: int, output: Path, load: Callable[[], Awaitable[None]], rate: int = 250
) -> Profile:
    """Record `pid` with py-spy while `load` runs, then summarise what it wrote."""
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--function", "--rate", str(rate)]
    argv += ["--output", str(output), "--nonblocking", "--full-filenames"]
    log = output.with_suffix(".py-spy.log")
    with log.open("w") as sink:
        recorder = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # py-spy attaches before the load starts
        if recorder.poll() is not None:
            raise RuntimeError(f"py-spy exited with {recorder.returncode}: {log.read_text()[-500:]}")
        await load()
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
    return parse_raw(output)
