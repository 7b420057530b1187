"""One socket write for the frames the bus queued together.

aiormq sends every frame through one writer task per connection, which takes the frames from a
queue in order and writes each with its own ``send``. On loopback a ``send`` carries the kernel's
whole TCP path and the wake-up of the broker, and in the profiles of a login it was most of the
bus's own CPU. While the writer has more frames queued behind the one it writes, nothing is gained
by sending that one alone: :class:`GatheringWriter` holds it and sends it with the last frame of
the run, in one ``send``. A frame with nothing queued behind it (one login at a time) is written
at once, as before, so no frame waits for a later one and no event-loop turn is added.

Frames keep their order. Whatever is held is written before a ``drain``, ``write_eof`` or
``close``, which is how aiormq sends its handshake, its ``Connection.Close`` and a frame that asks
to be drained. A frame held when the connection dies is lost with the frames still in the queue,
which is what happened to those before: nothing that waits for the broker's confirm takes a written
frame as proof of arrival.

aio-pika does not pass a transport factory to aiormq; :class:`GatheringConnection` adds it to the
parameters aio-pika hands over.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, ConnectionParameter
from aiormq.connection import TCPTransportFactory, TLSTransportFactory
from yarl import URL


class GatheringWriter:
    """A ``StreamWriter`` that holds a frame back while more are queued behind it (see the module)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._held: list[bytes] = []
        self._queue: asyncio.Queue[Any] | None = None  # the connection's frame queue, once bound
        self.writes = 0  # sends asked of the transport
        self.frames = 0  # frames written through it

    def bind(self, queue: asyncio.Queue[Any]) -> None:
        """Gather from now on: ``queue`` is what aiormq's writer task takes its frames from."""
        self._queue = queue

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.frames += 1
        if self._queue is not None and self._queue.qsize():
            self._held.append(bytes(data))
            return
        if self._held:
            self._held.append(bytes(data))
            data = b"".join(self._held)
            self._held.clear()
        self.writes += 1
        self._writer.write(data)

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self.writes += 1
            self._writer.write(data)

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def write_eof(self) -> None:
        self._flush()
        self._writer.write_eof()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # transport, is_closing, wait_closed, can_write_eof, …
        return getattr(self._writer, name)


class GatheringTransports(aiormq.TransportFactory):
    """aiormq's TCP or TLS transport, with the writer wrapped in a :class:`GatheringWriter`."""

    def __init__(self, url: str) -> None:
        self._inner = TLSTransportFactory() if URL(url).scheme == "amqps" else TCPTransportFactory()
        self.writer: GatheringWriter | None = None

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._inner.create(url, **kwargs)
        self.writer = GatheringWriter(writer)
        return reader, cast(asyncio.StreamWriter, self.writer)

    def bind(self, connection: AbstractConnection) -> None:
        """Start gathering on ``connection``, the aio-pika connection this factory's transport is under."""
        raw = connection.transport.connection if connection.transport is not None else None
        queue = getattr(raw, "write_queue", None)
        if self.writer is not None and isinstance(queue, asyncio.Queue):
            self.writer.bind(queue)


def _transport_factory(value: Any) -> aiormq.TransportFactory:
    if not isinstance(value, aiormq.TransportFactory):
        raise ValueError("not a transport factory")  # e.g. text in the URL's query: aiormq's default
    return value


class GatheringConnection(aio_pika.Connection):
    """aio-pika's connection, passing ``transport_factory`` on to aiormq."""

    PARAMETERS = (
        *aio_pika.Connection.PARAMETERS,
        ConnectionParameter(name="transport_factory", parser=_transport_factory, is_kwarg=True),
    )
