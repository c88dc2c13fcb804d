"""The dev broker's message store: the interface, an in-memory store and a commit log on disk."""

from rmqtwist.broker.store.interface import AppendResult, IMessageStore, ReadResult, StoreError

__all__ = ["AppendResult", "IMessageStore", "ReadResult", "StoreError"]
