"""
Provides rmqtwist version information.
"""

# This file is auto-generated! Do not edit!
# Use `python -m incremental.update rmqtwist` to change this file.

from incremental import Version

__version__ = Version("rmqtwist", 0, 1, 0, dev=0)
__all__ = ["__version__"]
