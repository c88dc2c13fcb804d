"""``rmqtwist.blocking.BlockingClient`` against a real server over loopback.

crochet runs the global reactor in a thread of its own, which cannot share a process
with pytest-twisted's reactor: so every test runs a script in a subprocess. The script
(:data:`PRELUDE` and the test's own lines) starts ``crochet``, listens with a
:class:`~rmqtwist.server.RemotingServerFactory` on 127.0.0.1 port 0 inside that reactor,
and checks the client with plain ``assert``\\ s; it prints ``PASSED`` at the end. The
port closes when the subprocess exits.
"""

from __future__ import annotations

import subprocess
import textwrap

from tests.script_helpers import run_python

TIMEOUT = 60.0

PRELUDE = '''
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import crochet
from twisted.python import threadable
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode
from rmqtwist.blocking import WAIT_MARGIN, BlockingClient
from rmqtwist.client import ClientConfig
from rmqtwist.errors import (
    ClientClosedError,
    ConnectError,
    RemotingTimeoutError,
)
from rmqtwist.interfaces import IChannelEventListener, IRequestProcessor, IRPCHook
from rmqtwist.processors import EchoProcessor
from rmqtwist.server import RemotingServerFactory

crochet.setup()

SILENT, RECORD, ASK_BACK = 999, 300, 777
RECORDED = []  # (body, oneway) of each request the recorder saw, in the reactor thread


@implementer(IRequestProcessor)
class Silent:
    """Never answers."""

    blocking = False

    def process_request(self, context, request):
        return None

    def reject_request(self):
        return False


@implementer(IRequestProcessor)
class Recorder:
    blocking = False

    def process_request(self, context, request):
        RECORDED.append((request.body, request.is_oneway))
        if request.is_oneway:
            return None
        return RemotingCommand.response_to(request, ResponseCode.SUCCESS, "recorded")

    def reject_request(self):
        return False


@implementer(IRequestProcessor)
class AskBack:
    """Asks the client (code from ext 'ask') on the same connection; answers with that."""

    blocking = False

    def process_request(self, context, request):
        ask = RemotingCommand.request(int(request.ext("ask")), body=b"ping")
        return context.channel.invoke(ask, 5).addCallback(
            lambda answer: RemotingCommand.response_to(
                request, answer.code, answer.remark, body=answer.body
            )
        )

    def reject_request(self):
        return False


@crochet.run_in_reactor
def listen():
    from twisted.internet import reactor

    factory = RemotingServerFactory()
    factory.register_default_processor(EchoProcessor())
    factory.register_processor(SILENT, Silent())
    factory.register_processor(RECORD, Recorder())
    factory.register_processor(ASK_BACK, AskBack())
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


PORT = listen().wait(10)
ADDRESS = f"127.0.0.1:{PORT.getHost().port}"


def in_reactor(function, *args):
    return crochet.run_in_reactor(function)(*args).wait(10)


def refused_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def raises(error_type, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except error_type as e:
        return e
    raise AssertionError(f"{function} did not raise {error_type.__name__}")


def echo(ext=None, body=b""):
    return RemotingCommand.request(105, ext, body)
'''


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + ``body`` in a fresh interpreter (see run_python)."""
    return run_python(PRELUDE + textwrap.dedent(body) + '\nprint("PASSED")\n', TIMEOUT)


def test_invoke_round_trip_from_many_threads() -> None:
    run_script(
        """
        client = BlockingClient()
        response = client.invoke(ADDRESS, echo({"k": "v", "n": 4}, b"hello"), timeout=5)
        assert isinstance(response, RemotingCommand), response
        assert (response.code, response.remark, response.body) == (0, "ok", b"hello")
        assert dict(response.ext_fields) == {"k": "v", "n": "4"}

        def call(i):
            return client.invoke(ADDRESS, echo(body=b"%d" % i), timeout=10).body

        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(call, range(40)))
        assert bodies == [b"%d" % i for i in range(40)], bodies

        stats = client.pool_stats()
        assert (stats.open, stats.created, stats.requests, stats.errors) == (1, 1, 41, 0), stats
        assert client.health(ADDRESS).breaker == "closed"
        assert client.is_address_reachable(ADDRESS) is True
        assert client.is_address_reachable(refused_address(), timeout=5) is False
        client.close()
        """
    )


def test_oneway_is_written_and_processed() -> None:
    run_script(
        """
        client = BlockingClient()
        assert client.invoke_oneway(ADDRESS, RemotingCommand.request(RECORD, body=b"1")) is None
        # the next request on the same connection is processed after it
        reply = client.invoke(ADDRESS, RemotingCommand.request(RECORD, body=b"2"))
        assert reply.remark == "recorded"
        assert in_reactor(lambda: list(RECORDED)) == [(b"1", True), (b"2", False)]
        client.close()
        """
    )


def test_timeout_raises_the_clients_own_remoting_timeout_error() -> None:
    run_script(
        """
        client = BlockingClient()
        started = time.monotonic()
        error = raises(
            RemotingTimeoutError, client.invoke, ADDRESS, RemotingCommand.request(SILENT), 0.5
        )
        elapsed = time.monotonic() - started
        # the client's deadline fired (its message), not the blocking wait's margin
        assert "no response from" in str(error), error
        assert 0.45 <= elapsed < 0.5 + WAIT_MARGIN, elapsed
        assert client.pool_stats().in_flight == 0
        client.close()
        """
    )


def test_a_blocked_reactor_still_gives_remoting_timeout_error() -> None:
    run_script(
        """
        client = BlockingClient()
        from twisted.internet import reactor

        reactor.callFromThread(time.sleep, 2.5)  # the reactor thread cannot run the call
        started = time.monotonic()
        request = RemotingCommand.request(RECORD, body=b"given up")
        error = raises(RemotingTimeoutError, client.invoke, ADDRESS, request, 0.2)
        elapsed = time.monotonic() - started
        assert "the reactor thread was too busy" in str(error), error
        assert elapsed >= 0.2 + WAIT_MARGIN, elapsed
        # The call was cancelled: either before it was sent, or (if the connection came
        # first) its response is dropped as late. The client works once the reactor is free.
        after = RemotingCommand.request(RECORD, body=b"after")
        assert client.invoke(ADDRESS, after, 5).remark == "recorded"
        recorded = in_reactor(lambda: list(RECORDED))
        late = client.client.dispatcher.late_responses
        assert (recorded, late) in [
            ([(b"after", False)], 0),
            ([(b"given up", False), (b"after", False)], 1),
        ], (recorded, late)
        assert client.pool_stats().in_flight == 0
        client.close()
        """
    )


def test_connect_refused_raises_connect_error() -> None:
    run_script(
        """
        client = BlockingClient(ClientConfig(connect_timeout=5))
        address = refused_address()
        error = raises(ConnectError, client.invoke, address, echo(), 5)
        assert type(error) is ConnectError and error.address == address, repr(error)
        assert "refused" in str(error), error
        health = client.health(address)
        assert health.consecutive_failures == 1 and health.last_error, health
        error = raises(ConnectError, client.invoke_oneway, address, echo(), 0.1)
        client.close()
        """
    )


def test_close_then_calls_raise_client_closed_error() -> None:
    run_script(
        """
        client = BlockingClient()
        assert client.invoke(ADDRESS, echo(body=b"x")).body == b"x"
        assert not client.closed
        client.close(timeout=5)
        assert client.closed
        assert client.pool_stats().open == 0  # close() returned once all were closed
        raises(ClientClosedError, client.invoke, ADDRESS, echo())
        raises(ClientClosedError, client.invoke_oneway, ADDRESS, echo())
        client.close()  # again: the same end
        """
    )


def test_context_manager_closes_even_on_error() -> None:
    run_script(
        """
        with BlockingClient() as client:
            assert client.invoke(ADDRESS, echo(body=b"in")).body == b"in"
            assert client.pool_stats().open == 1
        assert client.closed and client.pool_stats().open == 0
        raises(ClientClosedError, client.invoke, ADDRESS, echo())

        try:
            with BlockingClient() as other:
                other.invoke(ADDRESS, echo())
                raise KeyError("boom")
        except KeyError:
            pass
        assert other.closed and other.pool_stats().open == 0
        """
    )


def test_calls_in_the_reactor_thread_raise_runtime_error() -> None:
    run_script(
        """
        client = BlockingClient()

        def in_the_reactor_thread():
            assert threadable.isInIOThread()
            errors = []
            for call in (
                lambda: client.invoke(ADDRESS, echo()),
                lambda: client.invoke_oneway(ADDRESS, echo()),
                lambda: client.pool_stats(),
                lambda: client.close(),
                lambda: BlockingClient(),
            ):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))
            return errors

        errors = in_reactor(in_the_reactor_thread)
        assert len(errors) == 5, errors
        assert all("called in the reactor thread" in e for e in errors), errors
        assert client.pool_stats().requests == 0  # nothing was sent
        assert not client.closed
        client.close()
        """
    )


def test_bad_arguments_raise_value_error() -> None:
    run_script(
        """
        with BlockingClient() as client:
            raises(ValueError, client.invoke, "no-port", echo())
            raises(ValueError, client.invoke, ADDRESS, echo(), -1)
            raises(ValueError, client.invoke_oneway, "[::1", echo())
            raises(ValueError, client.update_name_server_address_list, ["a:b"])
        """
    )


def test_name_servers_and_close_clients() -> None:
    run_script(
        """
        with BlockingClient() as client:
            dead = refused_address()
            client.update_name_server_address_list([dead, ADDRESS])
            assert client.name_server_address_list == [dead, ADDRESS]
            assert client.invoke(None, echo(body=b"ns"), 5).body == b"ns"  # failed over
            assert client.current_name_server == ADDRESS
            assert client.available_name_server_list() == [ADDRESS]

            client.close_clients([ADDRESS])
            assert in_reactor(lambda: client.client.connection(ADDRESS)) is None
            assert client.invoke(ADDRESS, echo(body=b"again")).body == b"again"
            assert client.pool_stats().created == 2
        """
    )


def test_processors_hooks_and_listeners_for_pushed_requests() -> None:
    run_script(
        """
        @implementer(IRequestProcessor)
        class Pong:
            def __init__(self, blocking):
                self.blocking = blocking

            def process_request(self, context, request):
                where = b"reactor" if threadable.isInIOThread() else b"worker"
                return RemotingCommand.response_to(
                    request, ResponseCode.SUCCESS, "pong", body=request.body + b" " + where
                )

            def reject_request(self):
                return False

        @implementer(IRPCHook)
        class Hook:
            seen = []

            def before_request(self, remote_address, request):
                self.seen.append(request.code)

            def after_response(self, remote_address, request, response):
                return None

        @implementer(IChannelEventListener)
        class Listener:
            events = []

            def on_connect(self, remote_address, channel):
                self.events.append(("connect", remote_address))

            def on_close(self, remote_address, channel):
                self.events.append(("close", remote_address))

            def on_exception(self, remote_address, channel, error):
                pass

            def on_idle(self, remote_address, channel):
                pass

        with BlockingClient() as client:
            client.register_processor(555, Pong(False))
            client.register_processor(556, Pong(False), blocking=True)
            client.register_default_processor(Pong(True))
            client.register_rpc_hook(Hook())
            client.register_listener(Listener())

            def ask(code):
                request = RemotingCommand.request(ASK_BACK, {"ask": code})
                return client.invoke(ADDRESS, request, 10).body

            assert ask(555) == b"ping reactor"
            assert ask(556) == b"ping worker"  # blocking=True: in the thread pool
            assert ask(557) == b"ping worker"  # the default one has blocking = True
        assert Hook.seen == [ASK_BACK, 555, ASK_BACK, 556, ASK_BACK, 557], Hook.seen
        assert Listener.events == [("connect", ADDRESS), ("close", ADDRESS)], Listener.events
        """
    )
