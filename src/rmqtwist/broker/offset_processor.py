"""Offsets: QUERY_CONSUMER_OFFSET (14), UPDATE_CONSUMER_OFFSET (15), GET_MAX_OFFSET (30),
GET_MIN_OFFSET (31) and SEARCH_OFFSET_BY_TIMESTAMP (29)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rmqtwist.broker.processors import BrokerProcessor, answer
from rmqtwist.codes import RequestCode, ResponseCode
from rmqtwist.headers import (
    GetMaxOffsetRequestHeader,
    GetMinOffsetRequestHeader,
    QueryConsumerOffsetRequestHeader,
    SearchOffsetRequestHeader,
    UpdateConsumerOffsetRequestHeader,
)

if TYPE_CHECKING:
    from rmqtwist.command import RemotingCommand
    from rmqtwist.interfaces import IRequestContext

__all__ = ["OffsetProcessor"]


class OffsetProcessor(BrokerProcessor):
    handlers: ClassVar[dict[int, str]] = {
        RequestCode.QUERY_CONSUMER_OFFSET: "query_consumer_offset",
        RequestCode.UPDATE_CONSUMER_OFFSET: "update_consumer_offset",
        RequestCode.GET_MAX_OFFSET: "max_offset",
        RequestCode.GET_MIN_OFFSET: "min_offset",
        RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: "search_offset",
    }

    def query_consumer_offset(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        header = QueryConsumerOffsetRequestHeader.from_command(request)
        broker = self.broker
        offset = broker.offsets.query(header.consumer_group, header.topic, header.queue_id)
        if offset is not None:
            return answer(request, ext_fields={"offset": str(offset)})
        # Apache 4.9 answers 0 for a group new to a queue whose first message is still
        # there (a "young" queue), so a new group starts from the beginning; else 22.
        # A 5.x client that asks setZeroIfNotFound=false always gets 22.
        young = broker.store.min_offset(header.topic, header.queue_id) <= 0
        if young and header.set_zero_if_not_found is not False:
            return answer(request, ext_fields={"offset": "0"})
        return answer(
            request,
            ResponseCode.QUERY_NOT_FOUND,
            "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first",
        )

    def update_consumer_offset(
        self, context: IRequestContext, request: RemotingCommand
    ) -> RemotingCommand:
        header = UpdateConsumerOffsetRequestHeader.from_command(request)
        if header.commit_offset >= 0:  # ali-ons commits -1 on close: "no offset"
            self.broker.offsets.commit(
                header.consumer_group, header.topic, header.queue_id, header.commit_offset
            )
        return answer(request)

    def max_offset(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = GetMaxOffsetRequestHeader.from_command(request)
        offset = self.broker.store.max_offset(header.topic, header.queue_id)
        return answer(request, ext_fields={"offset": str(offset)})

    def min_offset(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = GetMinOffsetRequestHeader.from_command(request)
        offset = self.broker.store.min_offset(header.topic, header.queue_id)
        return answer(request, ext_fields={"offset": str(offset)})

    def search_offset(self, context: IRequestContext, request: RemotingCommand) -> RemotingCommand:
        header = SearchOffsetRequestHeader.from_command(request)
        offset = self.broker.store.offset_for_timestamp(
            header.topic, header.queue_id, header.timestamp
        )
        return answer(request, ext_fields={"offset": str(offset)})
