"""The dev broker's message store: the interface, an in-memory store and a commit log on disk."""

from rmqtwist.broker.store.disk import DiskStore
from rmqtwist.broker.store.interface import AppendResult, IMessageStore, ReadResult, StoreError
from rmqtwist.broker.store.memory import MemoryStore

__all__ = ["AppendResult", "DiskStore", "IMessageStore", "MemoryStore", "ReadResult", "StoreError"]
