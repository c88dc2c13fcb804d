"""Makes the processors of demo_processors known to ``twist rmq-remoting``.

No ``__init__.py`` here or in ``twisted/``: Twisted finds this module by scanning every
``twisted/plugins`` directory on ``sys.path``. Keep it cheap to import: name objects, do
nothing else.
"""

from demo_processors import slow_plugin, upper_plugin

__all__ = ["slow_plugin", "upper_plugin"]
