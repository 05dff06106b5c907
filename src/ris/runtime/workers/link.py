"""Messages between the server and a worker over file descriptors the event loop serves.

A local worker process speaks over two one-way pipes; a Ray actor, where the server can reach
its node, over one TCP connection both ways (its "direct link", ray.py). Both are framed as
multiprocessing.Connection frames them, so the worker uses plain blocking Connections while
the server's ends are non-blocking and served by the event loop itself (`add_reader` /
`add_writer`): a message is handed to the engine the moment it is complete, a half-written one
never blocks the loop, and neither does a send to a worker that has stopped reading, nor a
worker that died (its end reads EOF). Where the loop cannot watch them (Windows' proactor) a
reader thread and blocking sends take over.

The actor's side of a direct link is here too (`LinkListener`, `SocketOut`): the listener
accepts the server only after multiprocessing's HMAC challenge with a key the server made and
handed to the actor through Ray, so nothing unpickles bytes from anyone else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pickle
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError, connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

log = logging.getLogger("ris.worker")
_READ_CHUNK = 1 << 16
# How long a peer has to answer the authentication challenge (either side): a stranger that
# connects and says nothing must not hold the listener.
CHALLENGE_TIMEOUT_S = 5.0


def frame(data: bytes) -> bytes:
    """multiprocessing.Connection's framing: a 4-byte big-endian length (-1 and 8 bytes beyond 2 GiB)."""
    n = len(data)
    head = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    return head + data


class Deframer:
    """Complete frames out of the bytes a pipe delivers, in whatever pieces they come."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= 4:
            (n,) = struct.unpack_from("!i", buf)
            head = 4
            if n == -1:
                if len(buf) < 12:
                    break
                (n,) = struct.unpack_from("!Q", buf, 4)
                head = 12
            if len(buf) < head + n:
                break
            out.append(bytes(buf[head : head + n]))
            del buf[: head + n]
        return out


class LoopLink:
    """The server's end: `up` is read, `down` written (the same Connection for a socket).
    Every complete message goes to `deliver`; the end of `up` (the worker gone, or its end
    closed) calls `on_end` once. `close()` stops both: nothing is delivered after it, even
    from a delivery that closed it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        up: Any,
        down: Any,
        deliver: Callable[[object], None],
        on_end: Callable[[], None],
        lane: str,
    ) -> None:
        self._loop = loop
        self._up, self._down = up, down
        self._deliver, self._on_end = deliver, on_end
        self._lane = lane
        self._out = bytearray()  # frames not yet written to the worker
        self._flush_due = False  # a write of _out is scheduled for this loop iteration
        self._frames = Deframer()
        self._send_lock = threading.Lock()  # the thread-mode fallback's sends
        self._threaded = False  # the fallback: a reader thread and blocking sends
        self.watching = False  # our ends are registered with the loop
        self.closed = False
        try:
            self._loop.add_reader(up.fileno(), self.drain)
        except NotImplementedError:
            self._threaded = True
            threading.Thread(target=self._read_in_thread, name="ris-reader", daemon=True).start()
            return
        os.set_blocking(up.fileno(), False)
        os.set_blocking(down.fileno(), False)
        self.watching = True

    def send(self, msg: object) -> bool:
        if self.closed:
            return False
        if self._threaded:
            try:
                with self._send_lock:
                    self._down.send(msg)
                return True
            except (OSError, ValueError):
                return False
        # Plain pickle: what Connection.recv unpickles, faster than ForkingPickler's copy-reducers.
        self._out += frame(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))
        # Written once per loop iteration, not per message: the tasks dispatched by one batch of
        # results (or by requests arriving together) reach the worker in one write and wake it
        # once. Each write to a pipe was the API process's costliest line under load: a
        # system call that wakes the worker, which on a busy machine takes the core from us.
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_soon)
        return True

    def drain(self) -> bool:
        """Take what the worker wrote, hand over every complete message. Whether it read
        anything (more may follow)."""
        if self.closed or not self.watching:
            return False
        try:
            data = os.read(self._up.fileno(), _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # the worker is gone (or closed its end): nothing more will come
            self._unwatch()
            self._end()
            return False
        for payload in self._frames.feed(data):
            try:
                # From our own worker: what Connection.recv would unpickle.
                msg = ForkingPickler.loads(payload)
            except Exception:  # noqa: BLE001 - one unreadable message must not stop the reading
                log.exception("%s worker: unreadable message dropped", self._lane)
                continue
            if self.closed:
                return False  # delivering a message got this worker replaced
            try:
                self._deliver(msg)
            except Exception:  # noqa: BLE001 - the messages after it must still be delivered
                log.exception("%s worker: handling %s failed", self._lane, type(msg).__name__)
        return True

    def drain_all(self) -> None:
        """Everything the worker has written so far (its last words, when it is gone)."""
        while self.drain():
            pass

    def close(self) -> None:
        self.closed = True
        self._unwatch()
        self._close_ends()

    def _close_ends(self) -> None:
        for conn in {id(self._up): self._up, id(self._down): self._down}.values():
            conn.close()

    def _unwatch(self) -> None:
        """Stop watching both ends (a writer may be pending even after the reader saw EOF)."""
        if not self._threaded:
            if not self._up.closed:
                self._loop.remove_reader(self._up.fileno())
            if not self._down.closed:
                self._loop.remove_writer(self._down.fileno())
        self.watching = False

    def _flush_soon(self) -> None:
        self._flush_due = False
        self._flush()

    def _flush(self) -> bool:
        """Write what the worker's end takes now; the loop writes the rest when it reads."""
        if self.closed:
            return False
        fd = self._down.fileno()
        try:
            while self._out:
                del self._out[: os.write(fd, self._out)]
        except BlockingIOError:
            self._loop.add_writer(fd, self._flush)
            return True
        except OSError:  # the worker is gone; its reader sees the end
            self._loop.remove_writer(fd)
            return False
        self._loop.remove_writer(fd)
        return True

    def _read_in_thread(self) -> None:
        while not self.closed:
            try:
                msg = self._up.recv()
            except (EOFError, OSError):
                self._loop.call_soon_threadsafe(self._end_if_open)
                return
            except Exception:  # noqa: BLE001
                continue
            self._loop.call_soon_threadsafe(self._deliver_if_open, msg)

    def _deliver_if_open(self, msg: object) -> None:
        if not self.closed:
            self._deliver(msg)

    def _end_if_open(self) -> None:
        if not self.closed:
            self._end()

    def _end(self) -> None:
        """The worker's end: ours closes too (a linked actor waits for it before it exits, so
        that nothing we sent is left unread in its socket), and the owner hears it once."""
        self.closed = True
        self._close_ends()
        self._on_end()


# ----- a direct link's two ends -----------------------------------------------------------


def _receive_timeout(fd: int, seconds: float) -> None:
    """A receive timeout on a socket that a Connection reads with plain os.read (a socket
    object's settimeout would make the descriptor non-blocking instead): 0 is none."""
    whole = int(seconds)
    with socket.socket(fileno=os.dup(fd)) as sock:  # the same socket: its options are shared
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
        )


class LinkListener:
    """The actor's end, listening on its node's address for the one server holding `key`."""

    def __init__(self, host: str, key: bytes) -> None:
        self._key = key
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, 0), family=family)
        self.address: tuple[str, int] = (host, self._sock.getsockname()[1])

    def accept(self, timeout: float) -> connection.Connection | None:
        """The server's connection once it has proved the key (and been proved it, both ways);
        None if none did within `timeout`. Strangers and wrong keys are dropped, and listened
        past."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                break
            except OSError:  # closed meanwhile
                break
            sock.settimeout(None)
            # Tokens are small messages: each goes out at once, not held for the last one's ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = connection.Connection(sock.detach())
            _receive_timeout(conn.fileno(), CHALLENGE_TIMEOUT_S)
            try:
                connection.deliver_challenge(conn, self._key)
                connection.answer_challenge(conn, self._key)
            except (AuthenticationError, OSError, EOFError) as e:
                log.warning("refused a connection to the worker's link from %s:%d: %s", *peer[:2], e)
                conn.close()
                continue
            _receive_timeout(conn.fileno(), 0)
            return conn
        return None

    def close(self) -> None:
        self._sock.close()


class NodeUnreachable(OSError):
    """The connection to a node's address itself failed without an answer (timed out, no
    route): the node's, for a while (ray.py remembers it), where a refusal, a reset or a key
    exchange that failed or timed out belong to the one actor or port."""


def connect_link(address: tuple[str, int], key: bytes, timeout: float) -> connection.Connection:
    """The server's end of a direct link (blocking: call it off the loop). Raises
    NodeUnreachable, another OSError (refused, reset, the key exchange timed out) or
    AuthenticationError."""
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError as e:  # a firewall that drops: no answer at all
        raise NodeUnreachable(errno.ETIMEDOUT, f"no answer from {address[0]} in {timeout:g} s") from e
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise NodeUnreachable(e.errno, f"{e.strerror} ({address[0]})") from e
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    conn = connection.Connection(sock.detach())
    _receive_timeout(conn.fileno(), CHALLENGE_TIMEOUT_S)
    try:
        connection.answer_challenge(conn, key)
        connection.deliver_challenge(conn, key)
    except BaseException:
        conn.close()
        raise
    _receive_timeout(conn.fileno(), 0)
    return conn


def end_link(conn: connection.Connection, timeout: float) -> bool:
    """End the actor's side of a link so the server reads everything sent: close our sending
    side (the server reads every message, then the end), then wait until the server closes its
    end (LoopLink does on our end). True when the server's end came within `timeout`.

    A socket closed with unread bytes in it is reset, and a reset throws away what the server
    had not read yet (measured: two of three messages lost when the server read 0.6 s late).
    Waiting for the server's end makes that harmless without reading a byte: the server closes
    only after it has read our end, that is every message we sent, so a reset our later close
    may still send (for what the server sent and we never read) loses nothing. Not reading
    matters: the worker's receiver thread may be blocked in `conn.recv()` on this very socket,
    and bytes taken from under it would be part of its frame (garbage for it to unpickle).
    Where poll cannot say the peer's end came (POLLRDHUP is Linux's), what the server still
    sends is read and dropped until its end instead, as before (racing such a reader)."""
    fd = conn.fileno()
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_WR)
        peer_closed = getattr(select, "POLLRDHUP", None)
        if peer_closed is None:
            return _read_until_the_end(conn, deadline)
        # poll, not select: any descriptor number. Only the peer's end is asked for (a hang-up
        # or an error is always reported): bytes that arrive wake nobody, and stay unread.
        poller = select.poll()
        poller.register(fd, peer_closed)
        while (left := deadline - time.monotonic()) > 0:
            for _fd, events in poller.poll(left * 1000):
                # A reset (POLLERR) or a descriptor closed meanwhile (POLLNVAL): no clean end.
                return not events & (select.POLLERR | select.POLLNVAL)
    except OSError:  # reset, or closed meanwhile: nothing more to wait for
        return False
    return False


def _read_until_the_end(conn: connection.Connection, deadline: float) -> bool:
    """end_link's wait without POLLRDHUP: take and drop what the server still sends until its
    end (an empty read)."""
    fd = conn.fileno()
    while (left := deadline - time.monotonic()) > 0:
        # A wait, not a timeout on the socket: that would make the descriptor non-blocking
        # under the serving thread's own read.
        if connection.wait([conn], left) and not os.read(fd, _READ_CHUNK):
            return True
    return False


class SocketOut:
    """The worker's outbound half over a direct link (worker_main.ChannelOut). A send is in the
    kernel when it returns; `flush`, before an exit on purpose, ends the link (end_link)."""

    def __init__(self, conn: connection.Connection) -> None:
        self._conn = conn

    def send(self, msg: object) -> None:
        self._conn.send(msg)

    def flush(self, timeout: float) -> bool:
        return end_link(self._conn, timeout)
