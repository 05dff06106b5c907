"""uvicorn's HTTP/1.1 protocols with the bounds a server open to a network needs before any
request reaches the app (and its guards: keys, body limit, memory ceiling):

  head size     a request's line and headers together at most MAX_HEAD_BYTES (431). h11 has
                its own bound (16 KiB); the httptools parser has none, and gathers a header
                that never ends in memory at a cost that grows faster than its size (a 128 MiB
                header took 26 s of the event loop, while every worker's heartbeat waited).
  head time     a connection's next request head complete within HEAD_TIMEOUT_S of its
                opening or of the last answer; one trickled a byte at a time is closed. uvicorn
                bounds only the wait between requests (timeout_keep_alive).
  connections   at most `per_address_limit()` open connections from one address (an IPv6
                one's /64: a host may fill it with addresses): thousands of unfinished heads
                from one host took every file descriptor, and keyed clients were refused with
                them. And at most `total_limit()` from all: 20 hosts of 1,000 idle connections
                each took every descriptor (the store, the workers' pipes and the monitor
                failed with EMFILE four times a second); past it, the connection that has
                waited longest for a request head is closed to make room, so clients that
                send requests get in while those that send nothing are let go.

The bounds hold for both parsers; `protocol(name)` is the class uvicorn is given.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from ris.api.keys import address_group

log = logging.getLogger("ris.api")

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 20.0
# How long a connection refused for its head's size is still read (and dropped) before it closes.
REFUSED_LINGER_S = 1.0
# At most this many connections from one address, and at most a quarter of the process's file
# descriptors: the rest stay for other clients, the workers' pipes, files and the store.
MAX_CONNECTIONS_PER_ADDRESS = 1024

# File descriptors kept from connections, for the store, logs, result files, the workers'
# pipes and a cluster's sockets: at least this many, and a quarter of the process's.
RESERVED_DESCRIPTORS = 256

# Open connections by client address group (keys.address_group), over every listener of the
# process (the main port and the Ollama listener share one budget).
_open: collections.Counter[str] = collections.Counter()
# Every open connection that waits for a request head (a fresh one, or one between requests),
# oldest first: who makes room when the process is at total_limit().
_waiting: dict[_Bounded, None] = {}
_total = 0


# How often refused connections are told in the log: one line a connection was 11,000 lines
# (1.1 MB) in 40 s from one client, a log that fills a disk in hours.
REFUSAL_LOG_EVERY_S = 10.0


class _Refusals:
    """Refused connections, told at most once per REFUSAL_LOG_EVERY_S with how many."""

    def __init__(self) -> None:
        self._next = 0.0
        self._untold = 0

    def refused(self, why: str, now: float) -> None:
        self._untold += 1
        if now < self._next:
            return
        more = f" ({self._untold - 1} more refused since the last line)" if self._untold > 1 else ""
        log.warning("refused a connection %s%s", why, more)
        self._untold, self._next = 0, now + REFUSAL_LOG_EVERY_S


_said = _Refusals()


def _soft_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def per_address_limit() -> int:
    soft = _soft_limit()
    if soft is None:
        return MAX_CONNECTIONS_PER_ADDRESS
    return max(16, min(MAX_CONNECTIONS_PER_ADDRESS, soft // 4))


def total_limit() -> int:
    """Open connections the process holds at most, all addresses together."""
    soft = _soft_limit()
    if soft is None:
        return 1 << 20
    return max(32, soft - max(RESERVED_DESCRIPTORS, soft // 4))


def _refusal(status: bytes, text: str) -> bytes:
    body = text.encode()
    head = f"HTTP/1.1 {status.decode()}\r\ncontent-type: text/plain; charset=utf-8\r\n"
    return head.encode() + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body


class _Bounded:
    """The head timer and the per-address count, for either parser (mixed in before it)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _address: str | None = None
    _head_timer: asyncio.TimerHandle | None = None

    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        global _total
        super().connection_made(transport)  # type: ignore[misc]
        _total += 1
        self._counted = True
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if address is not None:
            group = address_group(address)
            _open[group] += 1
            self._address = group
            if _open[group] > per_address_limit():
                _said.refused(f"from {group}: {_open[group] - 1} open already", self.loop.time())
                self._refuse("too many open connections from this address\n")
                return
        if _total > total_limit() and not _make_room(self):
            _said.refused(f"{_total - 1} open, every one busy with a request", self.loop.time())
            self._refuse("too many open connections\n")
            return
        self._arm_head_timer()

    def _refuse(self, text: str) -> None:
        self.transport.write(_refusal(b"503 Service Unavailable", text))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._let_go()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self, *args: Any) -> None:
        # The connection leaves this protocol for uvicorn's websocket one (whose end this one
        # never hears of): its count and timer go now. (RIS serves no websocket: uvicorn is
        # given ws="none", so only another embedder of these classes gets here.)
        self._let_go()
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _let_go(self) -> None:
        global _total
        self._head_complete()
        if self._counted:
            _total -= 1
            self._counted = False
        if self._address is not None:
            _open[self._address] -= 1
            if _open[self._address] <= 0:
                del _open[self._address]
            self._address = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # Waiting for the next request (uvicorn armed its keep-alive timer): its head, if one
        # comes, within the bound. Not when a pipelined request already read whole starts now
        # (its answer may stream for minutes).
        if not self.transport.is_closing() and getattr(self, "timeout_keep_alive_task", None) is not None:
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._head_complete()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)
        _waiting[self] = None

    def _head_complete(self) -> None:
        _waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        _waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()


def _make_room(newcomer: _Bounded) -> bool:
    """Close the connection that has waited longest for a request head (not `newcomer`);
    False where every other open connection is in a request."""
    for oldest in _waiting:
        if oldest is not newcomer:
            oldest._head_complete()
            oldest.transport.close()
            return True
    return False


class BoundedH11(_Bounded, H11Protocol):
    def data_received(self, data: bytes) -> None:
        before = getattr(self, "scope", None)
        super().data_received(data)
        if getattr(self, "scope", None) is not before:  # a request's head was read whole
            self._head_complete()


def _httptools_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(_Bounded, HttpToolsProtocol):
        _head_bytes = 0
        _in_head = True
        _head_tail = b""  # the head's last 3 bytes read so far (where its end may begin)
        _ended_here = False  # a message ended within the read being parsed

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._head_bytes, self._in_head, self._head_tail = 0, True, b""
            super().connection_made(transport)

        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # read and dropped until the close: the answer is on its way
            if self._in_head:
                # Measured before the parser reads it: a head that ends within this read was
                # whole by then, its request dispatched, and a head of up to one read (120 KB,
                # measured) passed the bound. The end is looked for across the last read's
                # last bytes too: a "\r\n\r" | "\n" split counted the body as head.
                tail = self._head_tail
                end = (tail + data).find(b"\r\n\r\n")
                head = self._head_bytes + (len(data) if end < 0 else end + 4 - len(tail))
                if head > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self._refuse_head()
                    return
                self._head_bytes += len(data)
                self._head_tail = (tail + data)[-3:]
            self._ended_here = False
            super().data_received(data)
            if self._ended_here and self._in_head:
                # A pipelined next head began in this read: its end may start in its last bytes
                # (a stray match in the last message's body only makes the check lenient).
                self._head_tail = data[-3:]
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._refuse_head()

        def _refuse_head(self) -> None:
            """431, then the end of what we send; what the client still sends is read and
            dropped for a moment before the close (a close with unread data would be a reset,
            which can take the answer with it)."""
            self._refused = True
            self.transport.write(
                _refusal(
                    b"431 Request Header Fields Too Large",
                    f"a request's line and headers may take {MAX_HEAD_BYTES} bytes\n",
                )
            )
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

        def on_headers_complete(self) -> None:
            self._head_bytes, self._in_head, self._head_tail = 0, False, b""
            self._head_complete()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes, self._in_head, self._head_tail = 0, True, b""  # the next head
            self._ended_here = True

    return BoundedHttpTools


def protocol(name: str) -> Any:
    """The bounded protocol class for uvicorn's `http` parser `name` ("h11" or "httptools")."""
    return BoundedH11 if name == "h11" else _httptools_class()
