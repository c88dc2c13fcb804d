"""What the connection's parts share: the busy remarks, the pending-request entry and the
helpers that stamp and address commands."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from rmqtwist.budgets import Permit, Permits
from rmqtwist.codes import FLAG_ONEWAY, FLAG_RESPONSE, SerializeType
from rmqtwist.command import RemotingCommand, _from_wire

REJECT_REMARK = "[REJECTREQUEST]system busy, start flow control for a while"
OVERLOAD_REMARK = "[OVERLOAD]system busy, start flow control for a while"
_INT32_MAX = (1 << 31) - 1


def _stamped(
    command: RemotingCommand, opaque: int, flag: int, forced: SerializeType | None
) -> RemotingCommand:
    """``command`` with ``opaque``, ``flag`` and the serialize type (``forced``, or its own).

    Like ``command.replace(...)``, but through the codec's constructor: the command's
    fields were checked when it was built, and these three are ours (3x faster).
    """
    return _from_wire(
        command.code,
        command.language,
        command.version,
        opaque,
        flag,
        command.remark,
        command.ext_fields,
        command.body,
        command.serialize_type if forced is None else forced,
    )


def _check_timeout(timeout: float) -> None:
    # A real reactor's callLater asserts delay >= 0: failing there would leak the permit.
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")


def _addressed(response: RemotingCommand, request: RemotingCommand) -> RemotingCommand:
    """``response`` with the opaque and serialize type of ``request`` and flag bit 0 set."""
    if (
        response.opaque != request.opaque
        or response.flag != FLAG_RESPONSE
        or response.serialize_type != request.serialize_type
    ):
        response = response.replace(
            opaque=request.opaque,
            flag=(response.flag | FLAG_RESPONSE) & ~FLAG_ONEWAY,
            serialize_type=request.serialize_type,
        )
    return response


#: A request of ours waiting for its response, as one tuple (a class costs more per
#: request): ``(deadline, sequence, opaque, request, deferred, permit, timeout)``.
#: It is both the pending table's value and the deadline heap's item: the heap orders
#: by ``(deadline, sequence)``, and the unique sequence keeps it from comparing further.
#: ``request`` is the request as given (stamped with opaque and flag only when RPC
#: hooks need to see it so); ``permit`` is a :class:`Permit`, or the budget itself when
#: taken with :meth:`Permits.take`.
_Pending = tuple[
    float, int, int, RemotingCommand, Deferred[RemotingCommand], "Permit | Permits", float
]
