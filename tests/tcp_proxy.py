"""A TCP forwarder on 127.0.0.1 that tests can cut and restore, to stage a database outage.

`down()` closes the listening socket and resets every open connection (what a crashed or stopped
server looks like to a client); `stall()` keeps accepting but never answers (a black-holed
network); `up()` forwards again on the same port, resetting stalled connections.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._stalling = False
        self.connections = 0

    async def up(self) -> None:
        self._stalling = False
        for writer in list(self._stalled):
            writer.transport.abort()
        self._stalled.clear()
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stall(self) -> None:
        self._stalling = True

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in [*self._writers, *self._stalled]:
            writer.transport.abort()
        self._writers.clear()
        self._stalled.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._stalling:
            self._stalled.add(client_writer)
            with contextlib.suppress(OSError):
                await client_reader.read()  # returns when up()/down() aborts the connection
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
        self._writers.discard(writer)
