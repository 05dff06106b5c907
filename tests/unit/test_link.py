"""The direct link between the server and a Ray actor (ris.runtime.workers.link), on loopback
sockets without Ray: the key exchange, the event loop's end, and the actor's end of it."""

from __future__ import annotations

import asyncio
import errno
import pickle
import socket
import threading
from multiprocessing import AuthenticationError
from typing import Any

import pytest

from ris import messages as m
from ris.runtime.workers.link import LinkListener, LoopLink, SocketOut, connect_link, end_link, frame

KEY = b"k" * 32


class Marker:
    """Unpickling one of these records it: a listener must never unpickle a stranger's bytes."""

    seen: list[str] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (Marker.seen.append, ("unpickled",))


def test_messages_go_both_ways_and_the_end_is_said_once_after_them() -> None:
    listener = LinkListener("127.0.0.1", KEY)
    actor_side: dict[str, Any] = {}

    def actor() -> None:
        conn = listener.accept(10)
        assert conn is not None
        out = SocketOut(conn)
        msg = conn.recv()
        for i in range(3):
            out.send(m.Heartbeat(progress_events=i))
        out.send(m.TaskCancelled(msg.task_id))
        # The server closes its end once it has read ours: the actor's wait ends with it.
        actor_side["server_closed"] = end_link(conn, 5)
        conn.close()

    thread = threading.Thread(target=actor)
    thread.start()

    async def serve() -> list[object]:
        said: list[object] = []
        ended = asyncio.Event()
        conn = await asyncio.to_thread(connect_link, listener.address, KEY, 5)

        def on_end() -> None:
            said.append("end")
            ended.set()

        link = LoopLink(asyncio.get_running_loop(), conn, conn, said.append, on_end, "tts")
        assert link.send(m.CancelTask("t1"))
        await asyncio.wait_for(ended.wait(), 10)
        link.close()
        assert link.send(m.CancelTask("t2")) is False
        return said

    said = asyncio.run(serve())
    thread.join(10)
    listener.close()
    assert said == [*(m.Heartbeat(progress_events=i) for i in range(3)), m.TaskCancelled("t1"), "end"]
    assert actor_side["server_closed"] is True


def test_a_wrong_key_is_refused_both_ways_and_a_strangers_bytes_are_never_unpickled() -> None:
    listener = LinkListener("127.0.0.1", KEY)
    accepted: list[object] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(8)))
    thread.start()
    # A stranger who sends a pickle where the challenge's answer belongs, then one with a wrong
    # key: both dropped, and the holder of the key is linked after them.
    with socket.create_connection(listener.address) as stranger:
        stranger.sendall(frame(pickle.dumps(Marker())))
        stranger.recv(1024)  # the challenge
        stranger.sendall(frame(pickle.dumps(Marker())))
    with pytest.raises(AuthenticationError):
        connect_link(listener.address, b"w" * 32, 5)
    conn = connect_link(listener.address, KEY, 5)
    thread.join(10)
    listener.close()
    assert Marker.seen == []
    assert len(accepted) == 1 and accepted[0] is not None
    conn.send("hello")
    assert accepted[0].recv() == "hello"  # type: ignore[attr-defined]
    conn.close()


def test_a_listener_nobody_links_to_gives_up_and_an_unreachable_one_fails_fast() -> None:
    listener = LinkListener("127.0.0.1", KEY)
    assert listener.accept(0.3) is None
    address = listener.address
    listener.close()
    with pytest.raises(OSError):
        connect_link(address, KEY, 2)  # refused: nobody listens there any more


def _linked_pair() -> tuple[Any, socket.socket]:
    """An actor's Connection and the server's plain socket, over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        peer = socket.create_connection(server.getsockname())
        sock, _ = server.accept()
    from multiprocessing import connection

    return connection.Connection(sock.detach()), peer


def test_ending_the_link_waits_for_the_servers_end_without_reading_what_it_sent() -> None:
    """The worker's receiver thread may be blocked reading the same socket: end_link must not
    take bytes from under it (a part of its frame). What the server sent stays in the socket,
    whole, after the server read our end and closed its own."""
    conn, peer = _linked_pair()
    sent = [m.CancelTask(f"t{i}") for i in range(3)]
    peer.sendall(b"".join(frame(pickle.dumps(msg)) for msg in sent))
    conn.send(m.WorkerExiting("out of memory"))

    def server() -> None:  # reads every message, then our end, then closes its own
        while peer.recv(1 << 16):
            pass
        peer.close()

    thread = threading.Thread(target=server)
    thread.start()
    assert end_link(conn, 5) is True
    thread.join(10)
    assert [conn.recv() for _ in sent] == sent  # none taken by end_link
    with pytest.raises(EOFError):
        conn.recv()
    conn.close()


def test_ending_the_link_says_when_the_server_never_closes() -> None:
    conn, peer = _linked_pair()
    assert end_link(conn, 0.2) is False
    assert peer.recv(16) == b""  # our end reached it all the same
    peer.close()
    conn.close()


def test_without_pollrdhup_ending_the_link_reads_until_the_servers_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where poll cannot say the peer closed (not Linux): read and drop until its end."""
    import select

    monkeypatch.delattr(select, "POLLRDHUP", raising=False)
    conn, peer = _linked_pair()
    peer.sendall(frame(pickle.dumps(m.CancelTask("t1"))))

    def server() -> None:
        while peer.recv(1 << 16):
            pass
        peer.close()

    thread = threading.Thread(target=server)
    thread.start()
    assert end_link(conn, 5) is True
    thread.join(10)
    conn.close()


def test_only_an_address_that_never_answers_is_the_nodes_a_silent_port_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the server remembers as a node it cannot reach (ray.py, LINK_UNREACHABLE_S): a
    connection with no answer at all or no route. A port that accepts and never answers the
    key exchange (a stranger's, a slow actor) is that actor's, not the node's."""
    from ris.runtime.workers import link

    def dropped(address: tuple[str, int], timeout: float) -> socket.socket:
        raise TimeoutError("timed out")  # what a firewall that drops gives after `timeout`

    def no_route(address: tuple[str, int], timeout: float) -> socket.socket:
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    def refused(address: tuple[str, int], timeout: float) -> socket.socket:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    for failing, node in ((dropped, True), (no_route, True), (refused, False)):
        with monkeypatch.context() as patch:
            patch.setattr(socket, "create_connection", failing)
            with pytest.raises(OSError) as raised:
                connect_link(("10.0.0.9", 4000), KEY, 0.2)
        assert isinstance(raised.value, link.NodeUnreachable) is node, failing
        assert "10.0.0.9" in str(raised.value) or not node
    monkeypatch.setattr(link, "CHALLENGE_TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        with pytest.raises(OSError) as raised:
            connect_link(silent.getsockname(), KEY, 1.0)
        assert not isinstance(raised.value, link.NodeUnreachable)
