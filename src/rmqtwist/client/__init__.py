"""The remoting client: pooled connections, calls with one deadline, name-server choice.

:class:`RemotingClient` is what a program uses to talk to RocketMQ name servers and
brokers (Apache's or an rmqtwist server):

- :meth:`~RemotingClient.invoke` and :meth:`~RemotingClient.invoke_oneway` take an
  address (``"host:port"``, or None for "the current name server"). A call's timeout is
  one absolute deadline covering the connect, the wait for a permit, the write and the
  wait for the response. Every failure has its own type (see :mod:`rmqtwist.errors`):
  :class:`~rmqtwist.errors.ConnectError` (and its fail-fast subclasses
  :class:`~rmqtwist.errors.ConnectBackoffError`,
  :class:`~rmqtwist.errors.CircuitOpenError`,
  :class:`~rmqtwist.errors.ConnectionLimitError`,
  :class:`~rmqtwist.errors.NoNameServerError`),
  :class:`~rmqtwist.errors.SendRequestError`,
  :class:`~rmqtwist.errors.RemotingTimeoutError`,
  :class:`~rmqtwist.errors.ConnectionLostError`,
  :class:`~rmqtwist.errors.TooManyRequestsError`,
  :class:`~rmqtwist.errors.ClientClosedError`.
- The pool keeps one multiplexed connection per address, made on first use; calls that
  arrive while it is being made share the one attempt. A connection that is closing or
  closed is never handed out; one whose write buffer is full makes calls wait (within
  their deadline) until it drains. An idle sweep closes connections with nothing in
  flight and no traffic for ``idle_timeout`` seconds.
- Per address, failed connects back off (1 s doubling to 60 s, with jitter) and a
  circuit breaker opens after 5 consecutive failures (half-open after 30 s).
- Name servers are chosen by recent latency and consecutive errors, stuck to while
  healthy, and failed over at once; a background probe keeps
  :meth:`~RemotingClient.available_name_server_list` fresh.
- The server may push requests to the client (a broker asks a producer
  CHECK_TRANSACTION_STATE): register processors, hooks and listeners as on a server.

Everything runs on the reactor thread; time comes from the reactor given (a ``Clock``
in tests). For blocking code, see :mod:`rmqtwist.blocking`.
"""

from rmqtwist.client._client import RemotingClient
from rmqtwist.client._config import ClientConfig, parse_address
from rmqtwist.client._config import EndpointFactory as EndpointFactory
from rmqtwist.client._config import tcp_endpoint as tcp_endpoint
from rmqtwist.client._health import AddressHealth, PoolStats

__all__ = [
    "AddressHealth",
    "ClientConfig",
    "PoolStats",
    "RemotingClient",
    "parse_address",
]
