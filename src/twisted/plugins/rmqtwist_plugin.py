"""Twisted plugins of rmqtwist: ``twist rmq-remoting`` and its processors and RPC hooks.

This module only names objects defined in :mod:`rmqtwist` (importing it must stay cheap:
``twist`` imports every plugin module to list them). There is deliberately no
``__init__.py`` in ``twisted/`` or ``twisted/plugins/``.
"""

from twisted.application.service import ServiceMaker

from rmqtwist.processors import echo_plugin, log_plugin, stats_plugin

serviceMaker = ServiceMaker(  # noqa: N816 (the name twisted's own plugins use)
    "rmqtwist dev broker",
    "rmqtwist.tap",
    "The rmqtwist dev broker: a RocketMQ name server and broker on one port "
    "(or, with --processor, a plain remoting server).",
    "rmq-remoting",
)

__all__ = ["echo_plugin", "log_plugin", "serviceMaker", "stats_plugin"]
