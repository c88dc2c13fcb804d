"""Wrong-protocol detection: a connection's first bytes that belong to another protocol."""

from __future__ import annotations

import re
from typing import Final

from rmqtwist.errors import WrongProtocol

# A signature matches when the first bytes agree with it as far as both go (at least 4
# bytes, or the whole signature): each of these as a frame's first word is a length far
# past any sane frame limit, so nothing that names a protocol could have been a frame.
_SIGNATURES: Final = (
    (b"PRI ", "HTTP/2 (a gRPC client on the remoting port?)"),
    (b"GET ", "HTTP"),
    (b"POST", "HTTP"),
    (b"PUT ", "HTTP"),
    (b"HEAD", "HTTP"),
    (b"HTTP", "HTTP"),
    (b"OPTIONS ", "HTTP"),
    (b"DELETE ", "HTTP"),
    (b"PATCH ", "HTTP"),
    (b"CONNECT ", "HTTP"),
    (b"TRACE ", "HTTP"),
    (b"\x16\x03", "TLS (a TLS client on a plaintext port)"),
    (b"SSH-", "SSH (an SSH client on the remoting port?)"),
    (b"PROXY ", "PROXY protocol v1 (a load balancer's header; this port does not expect it)"),
    (
        b"\r\n\r\n\x00\r\nQUIT\n",
        "PROXY protocol v2 (a load balancer's header; this port does not expect it)",
    ),
    (b"AMQP", "AMQP (a RabbitMQ/AMQP client on the remoting port?)"),
)

#: A Redis RESP command: an array header "*<count>\r\n" (what redis-cli and every Redis
#: client sends first), or as much of one as has arrived.
_RESP_ARRAY: Final = re.compile(rb"\*[0-9]+(?:\r\n|\r\Z|\Z)")
_RESP: Final = "Redis RESP (a Redis client on the remoting port?)"

_SIGNATURE_FIRST_BYTES: Final = frozenset(
    [signature[0] for signature, _ in _SIGNATURES] + [ord("*")]
)


def sniff_wrong_protocol(first_bytes: bytes) -> WrongProtocol | None:
    """A :class:`~rmqtwist.errors.WrongProtocol` error if a connection's first bytes
    belong to another protocol (HTTP/2, HTTP, a TLS ClientHello, SSH, a PROXY protocol
    v1 or v2 header, Redis RESP, AMQP), else None. Needs at least 4 bytes."""
    if not first_bytes or first_bytes[0] not in _SIGNATURE_FIRST_BYTES:
        return None
    first = bytes(first_bytes[:16])
    if first[0] == 0x2A:  # "*"
        if _RESP_ARRAY.match(first) is not None:
            return WrongProtocol(_RESP, first)
        return None
    for signature, protocol in _SIGNATURES:
        n = min(len(first), len(signature))
        if n >= min(4, len(signature)) and first[:n] == signature[:n]:
            return WrongProtocol(protocol, first)
    return None
