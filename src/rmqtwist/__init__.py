"""rmqtwist: the Apache RocketMQ remoting protocol on Twisted.

The pure wire core (:mod:`rmqtwist.codec`, :mod:`rmqtwist.command`, :mod:`rmqtwist.codes`,
:mod:`rmqtwist.headers`) imports nothing from Twisted; :mod:`rmqtwist.framing` puts it on a
Twisted connection.
"""

from rmqtwist._version import __version__
from rmqtwist.codes import (
    DEFAULT_VERSION,
    FLAG_ONEWAY,
    FLAG_RESPONSE,
    LanguageCode,
    RequestCode,
    ResponseCode,
    SerializeType,
    Version,
    code_name,
)
from rmqtwist.command import RemotingCommand
from rmqtwist.errors import (
    EncodeError,
    FrameTooLarge,
    HeaderError,
    MalformedFrame,
    ProtocolError,
    RemotingError,
    WrongProtocol,
)

__all__ = [
    "DEFAULT_VERSION",
    "FLAG_ONEWAY",
    "FLAG_RESPONSE",
    "EncodeError",
    "FrameTooLarge",
    "HeaderError",
    "LanguageCode",
    "MalformedFrame",
    "ProtocolError",
    "RemotingCommand",
    "RemotingError",
    "RequestCode",
    "ResponseCode",
    "SerializeType",
    "Version",
    "WrongProtocol",
    "__version__",
    "code_name",
]
