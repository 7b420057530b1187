"""The bus's gathering socket writer: frames queued together leave in one send, in order, and none
is held once nothing is queued behind it or the connection drains or closes."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from shared.bus.gather import GatheringConnection, GatheringTransports, GatheringWriter


class Socket:
    """Stands in for asyncio's StreamWriter: records each send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.drained = 0
        self.closed = False
        self.transport = "the transport"

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    async def drain(self) -> None:
        self.drained += 1

    def write_eof(self) -> None:
        self.sends.append(b"<eof>")

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def gathering() -> tuple[GatheringWriter, Socket, asyncio.Queue[bytes]]:
    socket = Socket()
    writer = GatheringWriter(cast(asyncio.StreamWriter, socket))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    writer.bind(queue)
    return writer, socket, queue


def run_writer_task(writer: GatheringWriter, queue: asyncio.Queue[bytes]) -> None:
    """What aiormq's writer task does with the frames queued at one wake-up."""
    while not queue.empty():
        writer.write(queue.get_nowait())


async def test_a_frame_with_nothing_queued_behind_it_is_sent_at_once() -> None:
    writer, socket, queue = gathering()
    queue.put_nowait(b"one")
    run_writer_task(writer, queue)
    assert socket.sends == [b"one"]
    queue.put_nowait(b"two")
    run_writer_task(writer, queue)
    assert socket.sends == [b"one", b"two"]
    assert (writer.frames, writer.writes) == (2, 2)


async def test_frames_queued_together_leave_in_one_send_in_their_order() -> None:
    writer, socket, queue = gathering()
    for frame in (b"publish|", b"reply|", b"ack"):
        queue.put_nowait(frame)
    run_writer_task(writer, queue)
    assert socket.sends == [b"publish|reply|ack"]
    assert (writer.frames, writer.writes) == (3, 1)


@pytest.mark.parametrize("how", ["drain", "write_eof", "close"])
async def test_held_frames_go_out_before_a_drain_an_eof_or_a_close(how: str) -> None:
    writer, socket, queue = gathering()
    queue.put_nowait(b"later")
    writer.write(b"held|")  # the writer task stops here (aiormq's Connection.Close path): one still queued
    assert socket.sends == []
    if how == "drain":
        await writer.drain()
        assert socket.drained == 1
    elif how == "write_eof":
        writer.write_eof()
    else:
        writer.close()
        assert socket.closed
    assert socket.sends[0] == b"held|"


async def test_before_it_is_bound_every_frame_is_sent_at_once() -> None:
    socket = Socket()
    writer = GatheringWriter(cast(asyncio.StreamWriter, socket))  # the handshake, before bind()
    writer.write(b"AMQP")
    writer.write(b"start-ok")
    assert socket.sends == [b"AMQP", b"start-ok"]


async def test_everything_else_is_the_stream_writers() -> None:
    writer, _, _ = gathering()
    assert writer.transport == "the transport"
    assert writer.is_closing() is False


def test_the_connection_passes_a_factory_on_and_ignores_text_in_the_url() -> None:
    factory = GatheringTransports("amqp://guest:guest@127.0.0.1/")
    parse = GatheringConnection._parse_parameters
    assert parse({"transport_factory": factory})["transport_factory"] is factory
    assert parse({"transport_factory": "x"})["transport_factory"] is None
