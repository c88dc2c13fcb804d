"""The remoting connection: requests both ways over one length-prefixed stream.

A RocketMQ connection is symmetric: either side may send requests and must answer the
other's. :class:`RemotingProtocol` does both.

- Outgoing: :meth:`RemotingProtocol.invoke` registers the request in a pending table
  keyed by opaque (a per-connection counter) *before* writing it; the response pops its
  entry; a timeout or the loss of the connection fails it. Every Deferred fires once.
- Incoming: a request is routed to the processor registered for its code (else the
  default one, else REQUEST_CODE_NOT_SUPPORTED), through the RPC hooks, within the
  in-flight limits, and answered in its own serialize type; oneway requests never are.

What all connections of one server (or client) share lives in a
:class:`~rmqtwist.dispatcher.Dispatcher`: processors, hooks, listeners, budgets, limits,
the clock.
"""

from rmqtwist.budgets import Permit, Permits
from rmqtwist.dispatcher import Dispatcher, RequestContext
from rmqtwist.protocol._common import OVERLOAD_REMARK, REJECT_REMARK
from rmqtwist.protocol._common import _check_timeout as _check_timeout
from rmqtwist.protocol._protocol import RemotingProtocol

__all__ = [
    "OVERLOAD_REMARK",
    "REJECT_REMARK",
    "Dispatcher",
    "Permit",
    "Permits",
    "RemotingProtocol",
    "RequestContext",
]
