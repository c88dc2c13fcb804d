"""The base of the dev broker's request processors: one class per concern answers a few
request codes, each with a method; typed headers are read here, and a header a client got
wrong becomes a clear error response instead of a traceback."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from zope.interface import implementer

from rmqtwist.codes import ResponseCode, Version
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import BodyError, HeaderError
from rmqtwist.interfaces import IRequestContext, IRequestProcessor

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from rmqtwist.broker.core import Broker

__all__ = ["BrokerProcessor", "answer"]

#: The version rmqtwist's broker puts into its responses: clients keep a HEART_BEAT
#: response's version as the broker's, and SQL92 and other features check it.
BROKER_VERSION = int(Version.V4_9_8)

Handler = Callable[
    [IRequestContext, RemotingCommand], "RemotingCommand | Deferred[RemotingCommand] | None"
]


def answer(
    request: RemotingCommand,
    code: int = ResponseCode.SUCCESS,
    remark: str | None = None,
    ext_fields: Mapping[str, Any] | None = None,
    body: bytes = b"",
) -> RemotingCommand:
    """The broker's response to ``request``."""
    return RemotingCommand.response_to(
        request, code, remark, ext_fields, body, version=BROKER_VERSION
    )


@implementer(IRequestProcessor)
class BrokerProcessor:
    """Dispatches by request code to the method named in :attr:`handlers`."""

    #: request code -> name of the method answering it
    handlers: ClassVar[dict[int, str]] = {}

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._methods: dict[int, Handler] = {
            code: getattr(self, name) for code, name in self.handlers.items()
        }

    @property
    def codes(self) -> tuple[int, ...]:
        return tuple(self.handlers)

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand | Deferred[RemotingCommand] | None:
        method = self._methods.get(request.code)
        if method is None:
            return answer(
                request,
                ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                f" request type {request.code} not supported",
            )
        try:
            return method(context, request)
        except (HeaderError, BodyError) as e:
            return answer(request, ResponseCode.SYSTEM_ERROR, f"bad request: {e}")

    def reject_request(self) -> bool:
        return False
