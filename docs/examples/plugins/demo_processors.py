"""Two request processors of "your project", and the plugin objects that name them.

``twist rmq-remoting --processor upper`` and ``--processor slow`` find them through the
plugin module ``twisted/plugins/demo_plugin.py`` next to this file.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from rmqtwist import RemotingCommand, ResponseCode
from rmqtwist.interfaces import IRequestContext, IRequestProcessor
from rmqtwist.processors import ProcessorPlugin

UPPER = 9001  # the request codes these processors answer by default
SLOW = 9002


@implementer(IRequestProcessor)
class Upper:
    """Answers with the request's body in upper case."""

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        return RemotingCommand.response_to(request, ResponseCode.SUCCESS, body=request.body.upper())

    def reject_request(self) -> bool:
        return False


@implementer(IRequestProcessor)
class Slow:
    """Answers after one second."""

    def process_request(
        self, context: IRequestContext, request: RemotingCommand
    ) -> Deferred[RemotingCommand]:
        from twisted.internet import reactor

        return task.deferLater(
            reactor, 1.0, RemotingCommand.response_to, request, ResponseCode.SUCCESS, "slept 1 s"
        )

    def reject_request(self) -> bool:
        return False


upper_plugin = ProcessorPlugin(
    "upper", "Answer with the request's body in upper case.", Upper, (UPPER,)
)
slow_plugin = ProcessorPlugin("slow", "Answer after one second.", Slow, (SLOW,))
