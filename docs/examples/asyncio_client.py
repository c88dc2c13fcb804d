"""FrameDecoder inside an asyncio protocol: the codec does not care who reads the bytes.

Starts an asyncio echo server on 127.0.0.1 (a free port), connects to it, sends one
request, prints the reply and exits.
Run from a checkout:  PYTHONPATH=src python docs/examples/asyncio_client.py
"""

from __future__ import annotations

import asyncio

from rmqtwist import ProtocolError, RemotingCommand, RequestCode, ResponseCode
from rmqtwist.codec import FrameDecoder, encode_frame


class Remoting(asyncio.Protocol):
    """Decodes frames; answers requests (as a server) or resolves replies (as a client)."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.replies: dict[int, asyncio.Future[RemotingCommand]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            commands = self.decoder.feed(data)
        except ProtocolError as e:
            commands = e.decoded  # what came before the bad frame still counts
            self.transport.abort()
        for command in commands:
            if command.is_response:
                waiting = self.replies.pop(command.opaque, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(command)
            elif not command.is_oneway:
                reply = RemotingCommand.response_to(
                    command, ResponseCode.SUCCESS, body=command.body
                )
                self.transport.write(encode_frame(reply))

    def call(self, request: RemotingCommand) -> asyncio.Future[RemotingCommand]:
        assert self.transport is not None
        waiting = asyncio.get_running_loop().create_future()
        self.replies[request.opaque] = waiting
        self.transport.write(encode_frame(request))
        return waiting


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Remoting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(Remoting, "127.0.0.1", port)
    request = RemotingCommand.request(RequestCode.HEART_BEAT, body=b"ping", opaque=1)
    reply = await asyncio.wait_for(client.call(request), timeout=5)
    print(reply)
    transport.close()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
