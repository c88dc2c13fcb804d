"""``twist rmq-remoting --data-dir``: what survives ``kill -9``, a damaged commit log and a
corrupt metadata file. Each test runs the real broker as a subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.message import decode_records
from tests.test_twist_integration import STOP_TIMEOUT, Conn, Twist

OK = ResponseCode.SUCCESS
QUEUES = 4


def send_request(topic: str, index: int) -> RemotingCommand:
    return RemotingCommand.request(
        RequestCode.SEND_MESSAGE_V2,
        {
            "a": "PG",
            "b": topic,
            "c": "TBW102",
            "d": QUEUES,
            "e": index % QUEUES,
            "f": 0,
            "g": 1_700_000_000_000 + index,
            "h": 0,
            "i": f"KEYS\x01k{index}\x02TAGS\x01TagA",
        },
        f"message-{index:06d}".encode(),
        opaque=index + 1,
    )


def pull_all(port: int, topic: str) -> dict[int, list[bytes]]:
    """Every message body of ``topic``, per queue, in queue order."""
    conn = Conn(port)
    found: dict[int, list[bytes]] = {}
    try:
        opaque = 0
        for queue_id in range(QUEUES):
            bodies: list[bytes] = []
            offset = 0
            while True:
                opaque += 1
                ext = {
                    "consumerGroup": "CG",
                    "topic": topic,
                    "queueId": queue_id,
                    "queueOffset": offset,
                    "maxMsgNums": 32,
                    "sysFlag": 4,
                    "commitOffset": 0,
                    "suspendTimeoutMillis": 0,
                    "subVersion": 0,
                    "subscription": "*",
                }
                conn.send(RemotingCommand.request(RequestCode.PULL_MESSAGE, ext, opaque=opaque))
                (response,) = conn.receive()
                if response.code != OK:
                    assert response.code == ResponseCode.PULL_NOT_FOUND, response
                    break
                messages = decode_records(response.body)
                assert [m.queue_offset for m in messages] == list(
                    range(offset, offset + len(messages))
                )
                bodies.extend(m.body for m in messages)
                offset = int(response.ext("nextBeginOffset") or 0)
            found[queue_id] = bodies
    finally:
        conn.close()
    return found


def broker(tmp_path: Path, name: str, data: Path, *args: str, port: int | None = None) -> Twist:
    server = Twist(tmp_path / f"{name}.log", "--data-dir", str(data), *args, port=port)
    server.wait_listening()
    return server


def test_kill_9_loses_no_acknowledged_message_with_flush_sync(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = broker(tmp_path, "first", data, "--flush", "sync")
    total, window, kill_after = 20_000, 64, 3_000
    acked: dict[int, tuple[int, int]] = {}  # index -> (queue id, queue offset)
    conn = Conn(server.port)
    sent = 0
    killed = False
    try:
        while sent < total and not killed:
            batch = []
            while sent < total and sent - len(acked) < window:
                batch.append(send_request("D", sent))
                sent += 1
            conn.send(*batch)
            for response in conn.receive(len(batch) // 2 or 1):
                assert response.code == OK, response
                acked[response.opaque - 1] = (
                    int(response.ext("queueId") or -1),
                    int(response.ext("queueOffset") or -1),
                )
            if len(acked) >= kill_after:
                server.process.send_signal(signal.SIGKILL)
                killed = True
        # answers the kernel already had count as acknowledged too
        try:
            while True:
                for response in conn.receive():
                    if response.code == OK:
                        acked[response.opaque - 1] = (
                            int(response.ext("queueId") or -1),
                            int(response.ext("queueOffset") or -1),
                        )
        except (AssertionError, OSError):
            pass  # the connection is gone
    finally:
        conn.close()
        server.process.wait(timeout=STOP_TIMEOUT)
        server.stop()
    assert killed and len(acked) >= kill_after

    again = broker(tmp_path, "second", data, "--flush", "sync")
    try:
        stored = pull_all(again.port, "D")
    finally:
        assert again.stop() in (0, -signal.SIGTERM)
    everything = [body for bodies in stored.values() for body in bodies]
    assert len(everything) == len(set(everything)), "a message is stored twice"
    for index, (queue_id, queue_offset) in acked.items():
        body = f"message-{index:06d}".encode()
        assert stored[queue_id][queue_offset] == body, (index, queue_id, queue_offset)
    # each queue holds its messages in send order
    for queue_id, bodies in stored.items():
        indexes = [int(body.split(b"-")[1]) for body in bodies]
        assert indexes == sorted(indexes)
        assert all(index % QUEUES == queue_id for index in indexes)


def _send_n(port: int, topic: str, count: int) -> None:
    conn = Conn(port)
    try:
        for index in range(count):
            conn.send(send_request(topic, index))
            (response,) = conn.receive()
            assert response.code == OK, response
    finally:
        conn.close()


def _last_segment(data: Path) -> Path:
    segments = sorted((data / "commitlog").glob("*.log"))
    assert segments, f"no segment in {data}"
    return segments[-1]


def test_a_torn_or_corrupt_tail_is_cut_on_start_and_never_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = broker(tmp_path, "first", data)
    port = server.port
    _send_n(port, "C", 8)  # queue i % 4: two messages per queue
    assert server.stop() in (0, -signal.SIGTERM)
    segment = _last_segment(data)

    # torn: the file ends in the middle of the last record
    with open(segment, "r+b") as f:
        f.truncate(segment.stat().st_size - 10)
    server = broker(tmp_path, "torn", data, port=port)
    try:
        stored = pull_all(port, "C")
    finally:
        server.stop()
    assert sum(len(bodies) for bodies in stored.values()) == 7
    assert b"message-000007" not in stored[3]
    assert str(segment.name) in server.log and "cut" in server.log.lower()

    # corrupt: a flipped byte in the body of what is now the last record
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.seek(size - 40)
        byte = f.read(1)
        f.seek(size - 40)
        f.write(bytes([byte[0] ^ 0xFF]))
    server = broker(tmp_path, "flipped", data, port=port)
    try:
        stored = pull_all(port, "C")
        _send_n(port, "C", 1)  # the broker takes new messages after the cut
        after = pull_all(port, "C")
    finally:
        server.stop()
    assert sum(len(bodies) for bodies in stored.values()) == 6
    assert "Traceback" not in server.log
    assert sum(len(bodies) for bodies in after.values()) == 7
    assert list((data / "damaged").iterdir()), "the cut bytes are kept aside"


def _commit(port: int, offset: int) -> None:
    conn = Conn(port)
    try:
        conn.send(
            RemotingCommand.request(
                RequestCode.UPDATE_CONSUMER_OFFSET,
                {"consumerGroup": "G", "topic": "C", "queueId": 0, "commitOffset": offset},
                opaque=1,
            )
        )
        (response,) = conn.receive()
        assert response.code == OK
    finally:
        conn.close()


def _query(port: int) -> Any:
    conn = Conn(port)
    try:
        conn.send(
            RemotingCommand.request(
                RequestCode.QUERY_CONSUMER_OFFSET,
                {"consumerGroup": "G", "topic": "C", "queueId": 0},
                opaque=1,
            )
        )
        (response,) = conn.receive()
        return response.code, response.ext("offset")
    finally:
        conn.close()


def test_a_corrupt_metadata_file_does_not_stop_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = broker(tmp_path, "first", data)
    port = server.port
    _send_n(port, "C", 4)
    _commit(port, 1)
    assert server.stop() in (0, -signal.SIGTERM)  # offsets saved on stop
    server = broker(tmp_path, "second", data, port=port)
    _commit(port, 2)
    assert server.stop() in (0, -signal.SIGTERM)  # saved again: the 1 is the .bak now
    saved = data / "metadata" / "consumerOffset.json"
    assert saved.exists()
    saved.write_bytes(b"{ this is not json")
    server = broker(tmp_path, "third", data, port=port)
    try:
        assert _query(port) == (OK, "1")  # the previous version
        assert len(pull_all(port, "C")[0]) == 1  # messages and topics are still there
    finally:
        server.stop()
    assert "consumerOffset" in server.log


def test_the_port_is_free_after_stop(tmp_path: Path) -> None:
    server = broker(tmp_path, "only", tmp_path / "data")
    server.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", server.port))  # nothing is left listening
