"""``BlockingTransactionProducer`` against a dev broker in crochet's reactor.

As in ``test_blocking_messaging.py``, crochet's reactor thread cannot share a process
with pytest-twisted's reactor, so every test runs a script in a subprocess: it starts a
dev broker with short transaction check timings (a half message left UNKNOWN is checked
after 0.3 s, looked for every 0.1 s), checks with plain ``assert``\\ s and prints
``PASSED`` at the end.
"""

from __future__ import annotations

import subprocess
import textwrap

from tests.script_helpers import run_python

TIMEOUT = 90.0

PRELUDE = """
import threading
import time

import crochet

from rmqtwist.blocking import BlockingConsumer, BlockingTransactionProducer
from rmqtwist.consumer import ConsumeFrom
from rmqtwist.message import Message
from rmqtwist.producer import (
    LocalTransactionState,
    ProducerClosedError,
    SendStatus,
    TransactionSendResult,
)
from rmqtwist.testing import start_broker_in_thread

COMMIT = LocalTransactionState.COMMIT
ROLLBACK = LocalTransactionState.ROLLBACK
UNKNOWN = LocalTransactionState.UNKNOWN

crochet.setup()
BROKER = start_broker_in_thread(transaction_timeout=0.3, transaction_check_interval=0.1)
ADDRESS = BROKER.address


def reactor_thread():
    @crochet.wait_for(timeout=10)
    def which():
        return threading.current_thread()
    return which()


def raises(error_type, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except error_type as e:
        return e
    raise AssertionError(f"{function} did not raise {error_type.__name__}")


def consumed(group, topic, timeout=1.5):
    with BlockingConsumer(group, ADDRESS, topic, consume_from=ConsumeFrom.FIRST) as c:
        return [m.body for m in c.messages(timeout=timeout)]


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


class Local:
    # A local transaction log: execute and check record their calls and threads.
    def __init__(self, check_states):
        self.check_states = list(check_states)
        self.executed = []
        self.checked = []
        self.threads = []

    def check(self, message):
        self.threads.append(threading.current_thread())
        self.checked.append(message)
        state = self.check_states.pop(0) if len(self.check_states) > 1 else self.check_states[0]
        if isinstance(state, Exception):
            raise state
        return state

    def execute(self, message, arg):
        self.threads.append(threading.current_thread())
        self.executed.append((message, arg))
        if isinstance(arg, Exception):
            raise arg
        return arg
"""

EPILOGUE = """
BROKER.stop()
print("PASSED")
"""


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + ``body`` in a fresh interpreter (see run_python)."""
    return run_python(PRELUDE + textwrap.dedent(body) + EPILOGUE, TIMEOUT, tracebacks=True)


def test_commit_is_consumed_and_execute_runs_off_the_reactor_thread() -> None:
    run_script(
        """
        local = Local([ROLLBACK])
        with BlockingTransactionProducer("tx_pg", ADDRESS, local.check) as producer:
            message = Message("TxT", b"paid", tags="TagTx", keys="order-1")
            result = producer.send(message, local.execute, COMMIT)
            assert isinstance(result, TransactionSendResult), result
            assert result.local_state is COMMIT and result.status is SendStatus.SEND_OK, result
            [(sent, arg)] = local.executed
            assert arg is COMMIT and sent.body == b"paid", sent
            assert sent.properties["UNIQ_KEY"] == result.transaction_id, sent.properties
            assert local.threads[0] is not reactor_thread(), local.threads
            assert local.threads[0] is not threading.current_thread(), local.threads
            assert consumed("c1", "TxT") == [b"paid"]
            time.sleep(0.8)
            assert local.checked == []  # committed: never checked
            assert "BlockingTransactionProducer" in repr(producer), repr(producer)
        """
    )


def test_rollback_is_never_consumed() -> None:
    run_script(
        """
        local = Local([COMMIT])
        with BlockingTransactionProducer("tx_pg", ADDRESS, local.check) as producer:
            result = producer.send(Message("TxT", b"cancelled"), local.execute, ROLLBACK)
            assert result.local_state is ROLLBACK, result
            time.sleep(0.8)
            assert BROKER.messages("TxT") == [] and local.checked == []
            assert consumed("c2", "TxT", timeout=0.5) == []
        """
    )


def test_unknown_then_the_check_commits_in_a_worker_thread() -> None:
    run_script(
        """
        local = Local([COMMIT])
        with BlockingTransactionProducer("tx_pg", ADDRESS, local.check) as producer:
            result = producer.send(Message("TxT", b"later", tags="T"), local.execute, UNKNOWN)
            assert result.local_state is UNKNOWN, result
            assert BROKER.messages("TxT") == []
            eventually(lambda: [m.body for m in BROKER.messages("TxT")] == [b"later"])
            checked = local.checked[0]
            assert (checked.topic, checked.body, checked.tags) == ("TxT", b"later", "T")
            assert checked.msg_id == result.transaction_id, checked
            assert all(t is not reactor_thread() for t in local.threads), local.threads
            assert consumed("c3", "TxT") == [b"later"]
        """
    )


def test_execute_raising_is_unknown_and_a_check_that_blocks_is_fine() -> None:
    run_script(
        """
        released = threading.Event()
        checked = []

        def check(message):
            checked.append(message)
            # Blocking here must not hold up the reactor: sends go on meanwhile.
            released.wait(10)
            return COMMIT

        with BlockingTransactionProducer("tx_pg", ADDRESS, check) as producer:
            local = Local([COMMIT])
            result = producer.send(Message("TxT", b"failed"), local.execute, KeyError("db"))
            assert result.local_state is UNKNOWN, result
            eventually(lambda: checked)
            other = producer.send(Message("TxT", b"meanwhile"), local.execute, COMMIT)
            assert other.local_state is COMMIT, other
            eventually(lambda: [m.body for m in BROKER.messages("TxT")] == [b"meanwhile"])
            assert not released.is_set() and len(checked) >= 1
            released.set()
            eventually(lambda: sorted(m.body for m in BROKER.messages("TxT"))
                       == [b"failed", b"meanwhile"])
        """
    )


def test_errors_after_shutdown_and_in_the_reactor_thread() -> None:
    run_script(
        """
        local = Local([COMMIT])
        producer = BlockingTransactionProducer("tx_pg", ADDRESS, local.check)
        raises(ValueError, producer.send, Message("TxT", b"x", delay_level=2), local.execute)
        raises(ValueError, producer.send, Message("TxT", b"x"), local.execute, timeout=-1)

        @crochet.wait_for(timeout=10)
        def in_reactor():
            return [
                raises(RuntimeError, producer.send, Message("TxT", b"x"), local.execute),
                raises(RuntimeError, BlockingTransactionProducer, "g", ADDRESS, local.check),
            ]

        sending, making = in_reactor()
        assert "BlockingTransactionProducer.producer" in str(sending), sending
        assert "use TransactionProducer there" in str(making), making
        producer.shutdown()
        error = raises(ProducerClosedError, producer.send, Message("TxT", b"late"), local.execute)
        assert "shut down" in str(error), error
        producer.shutdown()  # again: nothing
        assert local.executed == [] and BROKER.messages("TxT") == []
        raises(ValueError, BlockingTransactionProducer, "tx_pg", ADDRESS, local.check, threads=0)
        """
    )


def test_a_producer_never_shut_down_lets_the_process_exit() -> None:
    # The pool's workers are daemon threads: Python joins the others at exit, before
    # crochet's exit handler runs, so an idle worker would hang the process.
    run_script(
        """
        local = Local([COMMIT])
        producer = BlockingTransactionProducer("tx_pg", ADDRESS, local.check)
        assert producer.send(Message("TxT", b"x"), local.execute, COMMIT).local_state is COMMIT
        assert local.threads[0].daemon
        """
    )
