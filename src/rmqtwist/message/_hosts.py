"""Hosts as records store them, and message ids: the offset id (store host + commit-log
offset) and the client-made UNIQ_KEY (:class:`UniqueIdGenerator`)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import struct
import time
from collections.abc import Callable

_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_CACHE_MAX = 4096
_packed_hosts: dict[str, bytes] = {}
_host_texts: dict[bytes, str] = {}


def _parse_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{what}: {text!r} is not an IPv4 or IPv6 address (host names are not resolved)"
        ) from None


def _pack_host(address: str) -> bytes:
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not an 'ip:port' address")
    ip = _parse_ip(host, repr(address))
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 0xFFFF):
        raise ValueError(f"{address!r}: the port {port_text!r} is not a number in 0..65535")
    return ip.packed + _INT32.pack(int(port_text))


def pack_host(address: str) -> bytes:
    """A host as records store it: 4 (IPv4) or 16 (IPv6) address bytes, then the port as
    an int32. ``"1.2.3.4:5"`` gives 8 bytes, ``"[::1]:5"`` (or ``"::1:5"``) 20."""
    packed = _packed_hosts.get(address)
    if packed is None:
        packed = _pack_host(address)
        if len(_packed_hosts) >= _CACHE_MAX:
            _packed_hosts.clear()
        _packed_hosts[address] = packed
    return packed


def unpack_host(data: bytes) -> str:
    """The ``"ip:port"`` (``"[ip6]:port"``) text of a host packed as :func:`pack_host` does."""
    if type(data) is not bytes:
        data = bytes(data)
    text = _host_texts.get(data)
    if text is None:
        if len(data) == 8:
            text = f"{ipaddress.IPv4Address(data[:4])}:{_INT32.unpack_from(data, 4)[0]}"
        elif len(data) == 20:
            text = f"[{ipaddress.IPv6Address(data[:16])}]:{_INT32.unpack_from(data, 16)[0]}"
        else:
            raise ValueError(f"a packed host is 8 or 20 bytes, not {len(data)}")
        if len(_host_texts) >= _CACHE_MAX:
            _host_texts.clear()
        _host_texts[data] = text
    return text


def offset_msg_id(store_host: str, physical_offset: int) -> str:
    """The offset message id: packed store host + int64 commit-log offset, in upper-case
    hex (32 chars for an IPv4 store host, 56 for IPv6). What a send response's msgId is."""
    try:
        return (pack_host(store_host) + _INT64.pack(physical_offset)).hex().upper()
    except struct.error:
        raise ValueError(f"physical offset {physical_offset} does not fit an int64") from None


def parse_offset_msg_id(msg_id: str) -> tuple[str, int]:
    """(store host, physical offset) of an offset message id; ValueError if it is not one."""
    if len(msg_id) in (32, 56):
        try:
            raw = bytes.fromhex(msg_id)
        except ValueError:
            pass
        else:
            if len(raw) * 2 == len(msg_id):
                host_size = 8 if len(raw) == 16 else 20
                return unpack_host(raw[:host_size]), _INT64.unpack_from(raw, host_size)[0]
    raise ValueError(f"{msg_id!r} is not an offset message id (32 or 56 hex digits)")


def _month_bounds(ms: int) -> tuple[int, int]:
    # Java's Calendar in the default (local) time zone: this month's start, the next one's.
    start = datetime.datetime.fromtimestamp(ms / 1000).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    if start.month == 12:
        following = start.replace(year=start.year + 1, month=1)
    else:
        following = start.replace(month=start.month + 1)
    return round(start.timestamp() * 1000), round(following.timestamp() * 1000)


class UniqueIdGenerator:
    """Makes UNIQ_KEY message ids laid out as Java's ``MessageClientIDSetter`` lays them.

    Upper-case hex of: the client's IP (4 or 16 bytes), the pid (2 bytes), a random
    stand-in for Java's class-loader hash (4 bytes), milliseconds since the start of the
    current month in local time (4 bytes), and a counter (2 bytes): 32 hex digits for an
    IPv4 address, 56 for IPv6. ``clock`` returns seconds since the epoch.
    """

    def __init__(
        self,
        address: str = "127.0.0.1",
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ip = _parse_ip(address, "UniqueIdGenerator address")
        if pid is None:
            pid = os.getpid()
        fixed = ip.packed + struct.pack(">HI", pid & 0xFFFF, int.from_bytes(os.urandom(4)))
        self._prefix = fixed.hex().upper()
        self._clock = clock
        self._counter = 0
        self._month_start, self._next_month_start = _month_bounds(self._now())

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def next_id(self) -> str:
        """A new id. Ids from one generator differ for 65536 calls within a millisecond."""
        now = self._now()
        if now >= self._next_month_start:
            self._month_start, self._next_month_start = _month_bounds(now)
        diff = (now - self._month_start) & 0xFFFFFFFF  # Java's (int) cast
        if diff >= 0xFFF0BDC1:  # -1,000,000 < diff < 0 as an int32: clock stepped back
            diff = 0
        counter = self._counter
        self._counter = (counter + 1) & 0xFFFF
        return f"{self._prefix}{diff:08X}{counter:04X}"
