"""The code under test of the example suites: send an order to the ``Orders`` topic
through the RocketMQ name server it is given, as an application's producer would.

(rmqtwist has no producer class yet; this is a blocking sketch of what one does: ask
the name server for the topic's route, falling back to the template topic TBW102 for a
topic that does not exist yet, and send to the broker the route names.)

Run it:  python orders.py NAME_SERVER ORDER_ID
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from typing import Any

from rmqtwist import RequestCode, ResponseCode
from rmqtwist.blocking import BlockingClient
from rmqtwist.headers import (
    GetRouteInfoRequestHeader,
    SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
)
from rmqtwist.message import Message, encode_properties

TOPIC = "Orders"
#: Queues of the topic when the broker creates it on the first send (at most TBW102's).
DEFAULT_QUEUES = 4


class SendFailed(Exception):
    """The order could not be sent (the broker's remark says why)."""


def _route(client: BlockingClient, name_server: str, topic: str) -> dict[str, Any] | None:
    request = GetRouteInfoRequestHeader(topic=topic).to_request(RequestCode.GET_ROUTEINFO_BY_TOPIC)
    response = client.invoke(name_server, request)
    if response.code == ResponseCode.TOPIC_NOT_EXIST:
        return None
    if response.code != ResponseCode.SUCCESS:
        raise SendFailed(f"route of {topic}: {response.remark}")
    route: dict[str, Any] = json.loads(response.body)
    return route


def send_order(client: BlockingClient, name_server: str, order_id: str) -> int:
    """Send order ``order_id``; return the offset it got in its queue."""
    route = _route(client, name_server, TOPIC)
    if route is not None:
        queues = route["queueDatas"][0]["writeQueueNums"]
    else:  # as Java's producer: the template topic's route, and the broker creates TOPIC
        route = _route(client, name_server, "TBW102")
        assert route is not None, "the name server knows no TBW102"
        queues = min(DEFAULT_QUEUES, route["queueDatas"][0]["writeQueueNums"])
    broker = route["brokerDatas"][0]["brokerAddrs"]["0"]
    message = Message(
        TOPIC, json.dumps({"order": order_id}).encode(), tags="created", keys=[order_id]
    )
    header = SendMessageRequestHeaderV2(
        a="orders-app",
        b=TOPIC,
        d=DEFAULT_QUEUES,
        e=zlib.crc32(order_id.encode()) % queues,  # one order's messages stay in order
        g=int(time.time() * 1000),
        i=encode_properties(message.wire_properties()),
    )
    response = client.invoke(broker, header.to_request(RequestCode.SEND_MESSAGE_V2, message.body))
    if response.code != ResponseCode.SUCCESS:
        raise SendFailed(response.remark)
    return SendMessageResponseHeader.from_command(response).queue_offset


if __name__ == "__main__":
    with BlockingClient() as blocking_client:
        print(send_order(blocking_client, sys.argv[1], sys.argv[2]))
