"""Messages on disk: ``--data-dir`` with ``--flush sync``, ``kill -9``, damaged files.

1. Starts ``twist rmq-remoting --data-dir DATA --flush sync`` (DATA a new temporary
   directory), sends five messages (each answered once it is fsynced) and kills the
   process with SIGKILL, as a crash would end it.
2. Appends to the commit log the first bytes of an entry, as a write cut short by the
   crash would leave them, and restarts on DATA: the start-up log says what it cut,
   and all five acknowledged messages are there, once each, in order.
3. Flips one byte of the last message in the log and restarts: that record fails its
   CRC check, so the log is cut before it, and only the four before it are served.

Run from a checkout:  PYTHONPATH=src python docs/examples/broker_data_dir.py
"""

from __future__ import annotations

import re
import signal
import tempfile
import time
from pathlib import Path

from _twist import Twist, twist_process

from rmqtwist import RequestCode, ResponseCode
from rmqtwist.blocking import BlockingClient
from rmqtwist.headers import PullMessageRequestHeader, SendMessageRequestHeaderV2
from rmqtwist.message import Message, decode_records, encode_properties

TOPIC = "Durable"


def send(client: BlockingClient, address: str, body: bytes) -> int:
    message = Message(TOPIC, body, tags="T")
    header = SendMessageRequestHeaderV2(
        a="PG",
        b=TOPIC,
        e=0,
        g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    response = client.invoke(address, header.to_request(RequestCode.SEND_MESSAGE_V2, body))
    assert response.code == ResponseCode.SUCCESS, response
    return int(response.ext("queueOffset") or -1)


def pull_all(client: BlockingClient, address: str) -> list[bytes]:
    header = PullMessageRequestHeader(
        consumer_group="CG",
        topic=TOPIC,
        queue_id=0,
        queue_offset=0,
        max_msg_nums=32,
        sys_flag=0x4,  # a subscription, no suspend
        commit_offset=0,
        suspend_timeout_millis=0,
        subscription="*",
        sub_version=0,
    )
    response = client.invoke(address, header.to_request(RequestCode.PULL_MESSAGE))
    if response.code != ResponseCode.SUCCESS:
        return []
    return [message.body for message in decode_records(response.body)]


def store_log(running: Twist, data: Path) -> None:
    """Print what the store logged on start, without times and with DATA for the path."""
    for line in running.log:
        found = re.search(r"\[rmqtwist\.broker\.store[.\w]*#(\w+)\] (.*)", line)
        if found:
            text = found.group(2).replace(str(data), "DATA")
            text = re.sub(r"\d+\.\d+ s\b", "N s", text)
            print(f"  log ({found.group(1)}): {text}")


def last_segment(data: Path) -> Path:
    return sorted((data / "commitlog").glob("*.log"))[-1]


def main() -> None:
    with tempfile.TemporaryDirectory() as directory, BlockingClient() as client:
        data = Path(directory)
        options = ("--data-dir", str(data), "--flush", "sync")

        print("1. Five sends, then kill -9:")
        with twist_process(*options) as running:
            offsets = [send(client, running.address, b"message %d" % n) for n in range(5)]
            print(f"  acknowledged offsets {offsets}")
            running.process.send_signal(signal.SIGKILL)
            running.process.wait()
        client.close_clients([running.address])

        print("2. A torn entry at the end of the log, then a restart:")
        segment = last_segment(data)
        with segment.open("r+b") as log:
            first_entry_head = log.read(60)
            log.seek(0, 2)
            log.write(first_entry_head)  # 60 bytes of an entry that says it is longer
        with twist_process(*options) as running:
            store_log(running, data)
            print(f"  pulled: {pull_all(client, running.address)}")
        client.close_clients([running.address])

        print("3. One flipped byte in the last message, then a restart:")
        content = bytearray(segment.read_bytes())
        where = content.rindex(b"message 4")
        content[where] ^= 0xFF
        segment.write_bytes(content)
        with twist_process(*options) as running:
            store_log(running, data)
            print(f"  pulled: {pull_all(client, running.address)}")
        damaged = sorted(path.name for path in (data / "damaged").iterdir())
        print(f"  kept aside in DATA/damaged: {len(damaged)} file(s)")


if __name__ == "__main__":
    main()
