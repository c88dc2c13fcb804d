"""``python -m rmqtwist``: the command line (see :mod:`rmqtwist.cli`)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from rmqtwist.cli import main

        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the command took over SIGINT
        print("python -m rmqtwist: interrupted", file=sys.stderr)
        sys.exit(130)
else:
    # Kept for imports of the echo server's protocol from its old home.
    from rmqtwist.cli._echo import EchoProtocol

    __all__ = ["EchoProtocol"]
