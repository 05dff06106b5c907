"""The server's side of a worker's pipe frames messages as multiprocessing.Connection does (the
worker uses plain Connections): `frame` writes what Connection.recv_bytes reads, and `Deframer`
reads what Connection.send_bytes writes, whatever pieces the bytes arrive in."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import struct

from ris import messages as m
from ris.runtime.workers.link import Deframer, frame


def written_by_connection(payloads: list[bytes]) -> bytes:
    """The bytes a real Connection puts on its pipe for `payloads`."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        for payload in payloads:
            writer.send_bytes(payload)
        writer.close()
        raw = b""
        while chunk := os.read(reader.fileno(), 1 << 16):
            raw += chunk
        return raw
    finally:
        reader.close()


def test_frames_of_a_real_connection_come_out_whole_and_in_order() -> None:
    # Under the pipe's buffer (64 KiB on Linux): written whole before anything reads it.
    payloads = [b"", b"x", bytes(range(256)) * 100, pickle.dumps(m.TaskCancelled("t1"))]
    raw = written_by_connection(payloads)
    assert Deframer().feed(raw) == payloads


def test_a_frame_split_anywhere_waits_for_its_last_byte() -> None:
    payloads = [b"first", b"second" * 1000]
    raw = written_by_connection(payloads)
    frames = Deframer()
    got: list[bytes] = []
    for i in range(len(raw)):  # one byte at a time: the header too arrives in pieces
        got += frames.feed(raw[i : i + 1])
        if i < 4 + len(b"first") - 1:
            assert got == []
    assert got == payloads
    assert frames.feed(b"") == []


def test_frame_is_what_a_connection_reads() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        os.write(writer.fileno(), frame(b"hello") + frame(b""))
        assert reader.recv_bytes() == b"hello" and reader.recv_bytes() == b""
    finally:
        reader.close()
        writer.close()


def test_the_long_header_of_frames_beyond_two_gib_is_read() -> None:
    # Connection writes -1 and an 8-byte length for payloads over 2 GiB; a short payload with
    # that header stands in for one (allocating 2 GiB in a unit test would not do).
    raw = struct.pack("!iQ", -1, 5) + b"hello" + frame(b"next")
    frames = Deframer()
    assert frames.feed(raw[:11]) == []  # the long header is incomplete
    assert frames.feed(raw[11:]) == [b"hello", b"next"]
