"""``advertise``: routes name the advertised address; stored records need an IP."""

from __future__ import annotations

import json

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import RequestCode

from .harness import BrokerHarness, ok


def test_advertise_with_a_host_name_still_takes_sends() -> None:
    # a host name is advertised in routes; records hold the IP the client connected to
    harness = BrokerHarness(BrokerConfig(advertise="localhost:9876"))
    peer = harness.peer()
    ok(peer.send_message("T"))
    route = ok(peer.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "T"}))
    assert json.loads(route.body)["brokerDatas"][0]["brokerAddrs"] == {"0": "localhost:9876"}


def test_advertise_with_an_ip_is_also_the_store_host() -> None:
    harness = BrokerHarness(BrokerConfig(advertise="192.0.2.7:9876"))
    peer = harness.peer()
    ok(peer.send_message("T"))
    [message] = harness.messages("T")
    assert message.store_host == "192.0.2.7:9876"
