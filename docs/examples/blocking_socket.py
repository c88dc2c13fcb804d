"""FrameDecoder on a plain blocking socket: no Twisted, no asyncio.

A thread plays the server on one end of a socket pair and answers every request; the
main thread sends three requests in one write and reads the replies with recv().
Run from a checkout:  PYTHONPATH=src python docs/examples/blocking_socket.py
"""

from __future__ import annotations

import socket
import threading

from rmqtwist import RemotingCommand, RequestCode, ResponseCode
from rmqtwist.codec import FrameDecoder, encode_frame


def serve(sock: socket.socket) -> None:
    """Answer each request with SUCCESS and the request's body length as remark."""
    decoder = FrameDecoder()
    while data := sock.recv(65536):  # b"" when the client has closed its end
        for request in decoder.feed(data):
            reply = RemotingCommand.response_to(
                request, ResponseCode.SUCCESS, remark=f"{len(request.body)} bytes"
            )
            sock.sendall(encode_frame(reply))
    sock.close()


def read_commands(sock: socket.socket, decoder: FrameDecoder, count: int) -> list[RemotingCommand]:
    """Receive until ``count`` commands have been decoded."""
    commands: list[RemotingCommand] = []
    while len(commands) < count:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed after {len(commands)} of {count} replies")
        commands += decoder.feed(data)
    return commands


def main() -> None:
    client, server = socket.socketpair()
    client.settimeout(5)  # never wait for ever
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()

    requests = [
        RemotingCommand.request(RequestCode.HEART_BEAT, body=b"x" * n, opaque=n)
        for n in (1, 1000, 100_000)
    ]
    client.sendall(b"".join(encode_frame(r) for r in requests))  # three frames, one write
    for reply in read_commands(client, FrameDecoder(), len(requests)):
        print(reply.opaque, ResponseCode(reply.code).name, reply.remark)

    client.close()
    thread.join(5)


if __name__ == "__main__":
    main()
