"""``twist rmq-remoting``: the options and ``makeService`` of the remoting server plugin.

:class:`Options` parses the command line (on its own it raises
:class:`~twisted.python.usage.UsageError` for bad input); :func:`makeService` turns it into
a :class:`~rmqtwist.server.RemotingServer`. Under ``twist`` or ``twistd`` a bad option is
reported as one line on stderr with exit status 2 (``twist`` itself would print its whole
``--help`` and exit 64), and an endpoint that cannot be listened on as one line with exit
status 1, never a traceback.
"""

from rmqtwist.tap._options import Options
from rmqtwist.tap._plugins import DEFAULT_PORT, DEFAULT_PROCESSORS, ProcessorChoice, parse_code
from rmqtwist.tap._service import _limits as _limits  # tests read the limits
from rmqtwist.tap._service import broker_config, makeService

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PROCESSORS",
    "Options",
    "ProcessorChoice",
    "broker_config",
    "makeService",
    "parse_code",
]
