"""The remoting client behind blocking methods (:class:`BlockingClient`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import crochet

from rmqtwist.blocking._common import (
    REACTOR_TIMEOUT,
    TIMED_OUT,
    WAIT_MARGIN,
    check_timeout,
    quick,
    refuse_reactor_thread,
    wait,
)
from rmqtwist.client import (
    AddressHealth,
    ClientConfig,
    EndpointFactory,
    PoolStats,
    RemotingClient,
    tcp_endpoint,
)
from rmqtwist.errors import RemotingTimeoutError

if TYPE_CHECKING:
    from types import TracebackType

    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IChannelEventListener, IRequestProcessor, IRPCHook

__all__ = ["REACTOR_TIMEOUT", "WAIT_MARGIN", "BlockingClient"]

_T = TypeVar("_T")

#: How long past its drain timeout ``close()`` may take: the client aborts connections
#: that have not closed one second after the drain.
_CLOSE_EXTRA = 1.0
_INSTEAD = "the asynchronous BlockingClient.client (a RemotingClient)"


class BlockingClient:
    """A :class:`~rmqtwist.client.RemotingClient` behind blocking methods.

    ``config`` is the client's :class:`~rmqtwist.client.ClientConfig`;
    ``endpoint_factory`` is passed on as is (see :class:`~rmqtwist.client.RemotingClient`).
    Creating one calls ``crochet.setup()`` (the first time, it starts the global reactor
    in a thread; later times do nothing) and makes the client in the reactor thread.

    Use it as a context manager, or call :meth:`close` when done.
    """

    #: The asynchronous client underneath, for advanced use. Its methods must only be
    #: called in the reactor thread (e.g. through ``crochet.run_in_reactor``).
    client: RemotingClient

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        endpoint_factory: EndpointFactory = tcp_endpoint,
    ) -> None:
        self._refuse_reactor_thread("BlockingClient()")
        crochet.setup()
        self.config = config if config is not None else ClientConfig()
        config = self.config
        self.client = self._quick(
            lambda: RemotingClient(config=config, endpoint_factory=endpoint_factory),
            what="BlockingClient()",
        )

    # -- how calls reach the reactor thread --------------------------------------------

    @staticmethod
    def _refuse_reactor_thread(what: str) -> None:
        refuse_reactor_thread(what, _INSTEAD)

    @staticmethod
    def _wait(function: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> Any:
        return wait(function, args, seconds)

    def _quick(self, function: Callable[..., _T], *args: Any, what: str) -> _T:
        """Run ``function(*args)``, which does no I/O, in the reactor thread."""
        return quick(function, *args, what=what, instead=_INSTEAD)

    # -- calls ------------------------------------------------------------------------

    def invoke(
        self, address: str | None, request: RemotingCommand, timeout: float = 3.0
    ) -> RemotingCommand:
        """Send ``request`` to ``address`` (``"host:port"``; None: the current name
        server) and return its response.

        ``timeout`` is one deadline for connecting, writing and waiting for the response,
        as in :meth:`RemotingClient.invoke <rmqtwist.client.RemotingClient.invoke>`.
        Raises the client's errors (:class:`~rmqtwist.errors.RemotingTimeoutError`,
        :class:`~rmqtwist.errors.ConnectError`, ...), ValueError for a malformed address
        or a negative timeout, RuntimeError in the reactor thread.
        """
        return cast(
            "RemotingCommand", self._call("invoke()", self.client.invoke, address, request, timeout)
        )

    def invoke_oneway(
        self, address: str | None, request: RemotingCommand, timeout: float = 3.0
    ) -> None:
        """Send ``request`` with the oneway flag set; return once it is written.

        ``timeout`` bounds connecting and waiting for a oneway permit. No response
        comes, so nothing tells whether the peer processed it. Raises as :meth:`invoke`.
        """
        self._call("invoke_oneway()", self.client.invoke_oneway, address, request, timeout)

    def _call(
        self,
        what: str,
        method: Callable[..., Any],
        address: str | None,
        request: RemotingCommand,
        timeout: float,
    ) -> Any:
        self._refuse_reactor_thread(what)
        check_timeout(timeout)  # here too: a negative wait would not wait for the answer
        result = self._wait(method, (address, request, timeout), timeout + WAIT_MARGIN)
        if result is TIMED_OUT:
            raise RemotingTimeoutError(
                f"{what} to {address or 'the name server'}: no outcome within the "
                f"{timeout:g} s deadline (the reactor thread was too busy to report it)"
            )
        return result

    def is_address_reachable(self, address: str, timeout: float | None = None) -> bool:
        """Whether a writable connection to ``address`` exists or can be made within
        ``timeout`` seconds (default the config's ``connect_timeout``). Never raises for
        an unreachable address; respects its backoff and circuit breaker."""
        self._refuse_reactor_thread("is_address_reachable()")
        wait = self.config.connect_timeout if timeout is None else timeout
        if not wait >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        reachable = self._wait(
            self.client.is_address_reachable, (address, timeout), wait + WAIT_MARGIN
        )
        return reachable is True

    # -- name servers -----------------------------------------------------------------

    def update_name_server_address_list(self, addresses: Iterable[str]) -> None:
        """Use ``addresses`` (``host:port``, in order of preference) as the name servers
        that ``invoke(None, ...)`` goes to. Raises ValueError for a bad one."""
        self._quick(
            self.client.update_name_server_address_list,
            list(addresses),
            what="update_name_server_address_list()",
        )

    @property
    def name_server_address_list(self) -> list[str]:
        """The name servers set by :meth:`update_name_server_address_list`, in order."""
        return self._quick(
            lambda: self.client.name_server_address_list, what="name_server_address_list"
        )

    def available_name_server_list(self) -> list[str]:
        """The name servers found reachable (by the background probe or the last call)."""
        return self._quick(
            self.client.available_name_server_list, what="available_name_server_list()"
        )

    @property
    def current_name_server(self) -> str | None:
        """The name server calls with ``address=None`` stick to, once one has answered."""
        return self._quick(lambda: self.client.current_name_server, what="current_name_server")

    # -- the pool ---------------------------------------------------------------------

    def close_clients(self, addresses: Iterable[str]) -> None:
        """Close the connections to ``addresses``; their pending calls fail with
        ConnectionLostError. A later call connects anew."""
        self._quick(self.client.close_clients, list(addresses), what="close_clients()")

    def pool_stats(self) -> PoolStats:
        """A snapshot of the pool (see :class:`~rmqtwist.client.PoolStats`)."""
        return self._quick(self.client.pool_stats, what="pool_stats()")

    def health(self, address: str) -> AddressHealth:
        """What the client knows of connecting to ``address`` (breaker, backoff, errors)."""
        return self._quick(self.client.health, address, what="health()")

    # -- requests servers push to us --------------------------------------------------

    def register_processor(
        self, code: int, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Answer requests with ``code`` that a server pushes to us with ``processor``.

        The processor runs in the reactor thread: it must not block (nor call this
        client's blocking methods, which raise RuntimeError there) unless it is
        registered with ``blocking=True`` (or has ``blocking = True``), which runs it in
        a thread pool instead.
        """
        self._quick(
            self.client.register_processor, code, processor, blocking, what="register_processor()"
        )

    def register_default_processor(
        self, processor: IRequestProcessor, blocking: bool | None = None
    ) -> None:
        """Answer pushed requests no other processor takes (see
        :meth:`register_processor` on blocking)."""
        self._quick(
            self.client.register_default_processor,
            processor,
            blocking,
            what="register_default_processor()",
        )

    def register_rpc_hook(self, hook: IRPCHook) -> None:
        """Run ``hook`` around every request sent and pushed; it runs in the reactor
        thread and must not block."""
        self._quick(self.client.register_rpc_hook, hook, what="register_rpc_hook()")

    def register_listener(self, listener: IChannelEventListener) -> None:
        """Tell ``listener`` of connects, closes and errors; it runs in the reactor thread
        and must not block."""
        self._quick(self.client.register_listener, listener, what="register_listener()")

    # -- closing ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self.client.closed

    def close(self, timeout: float | None = None) -> None:
        """Refuse new calls, let calls in flight (from other threads) finish for up to
        ``timeout`` seconds (default the config's ``drain_timeout``), fail the rest with
        ClientClosedError, and close every connection; return once all are closed.

        Calling it again waits for the same end. The reactor thread keeps running (it is
        shared by everything that uses crochet in the process).
        """
        self._refuse_reactor_thread("close()")
        drain = self.config.drain_timeout if timeout is None else timeout
        if not drain >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        wait = drain + _CLOSE_EXTRA + WAIT_MARGIN
        if self._wait(self.client.close, (timeout,), wait) is TIMED_OUT:
            raise RemotingTimeoutError(f"close(): the client did not finish closing in {wait:g} s")

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.client.closed else "open"
        return f"<BlockingClient {state} {self.client!r}>"
