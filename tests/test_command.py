"""RemotingCommand: the immutable value, its constructors and helpers."""

from __future__ import annotations

import dataclasses

import pytest

from rmqtwist import (
    DEFAULT_VERSION,
    LanguageCode,
    RemotingCommand,
    RequestCode,
    ResponseCode,
    SerializeType,
    code_name,
)


def test_request_defaults() -> None:
    request = RemotingCommand.request(RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "T"})
    assert request.code == 105
    assert request.language == LanguageCode.PYTHON
    assert request.version == DEFAULT_VERSION
    assert request.flag == 0
    assert request.remark is None
    assert request.ext_fields == {"topic": "T"}
    assert request.body == b""
    assert request.serialize_type == SerializeType.JSON
    assert not request.is_response
    assert not request.is_oneway


def test_response_to_copies_opaque_and_serialize_type() -> None:
    request = RemotingCommand.request(10, opaque=77, serialize_type=SerializeType.ROCKETMQ)
    response = RemotingCommand.response_to(request, ResponseCode.SYSTEM_ERROR, "boom")
    assert response.opaque == 77
    assert response.is_response
    assert not response.is_oneway
    assert response.flag == 1
    assert response.serialize_type == SerializeType.ROCKETMQ
    assert response.code == 1
    assert response.remark == "boom"


def test_oneway() -> None:
    request = RemotingCommand.request(15)
    oneway = request.as_oneway()
    assert oneway.is_oneway and oneway.flag == 2
    assert not request.is_oneway  # the original is untouched
    assert RemotingCommand.request(15, oneway=True) == oneway


def test_immutable() -> None:
    command = RemotingCommand.request(10, {"a": "1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.code = 11  # type: ignore[misc]
    with pytest.raises(TypeError):
        command.ext_fields["a"] = "2"  # type: ignore[index]


def test_ext_fields_are_copied_and_spelled_as_java() -> None:
    source: dict[str, object] = {"queueId": 3, "unitMode": False, "topic": "T"}
    command = RemotingCommand.request(10, source)
    source["topic"] = "changed"
    assert command.ext_fields == {"queueId": "3", "unitMode": "false", "topic": "T"}
    assert command.ext("queueId") == "3"
    assert command.ext("missing", "d") == "d"
    assert RemotingCommand.request(10).ext("x") is None


def test_ext_fields_reject_other_types() -> None:
    with pytest.raises(TypeError, match="float"):
        RemotingCommand.request(10, {"x": 1.5})
    with pytest.raises(TypeError, match="keys must be str"):
        RemotingCommand.request(10, {1: "x"})  # type: ignore[dict-item]


def test_replace_keeps_invariants() -> None:
    command = RemotingCommand.request(10)
    changed = command.replace(opaque=5, ext_fields={"k": 1}, body=bytearray(b"xy"))
    assert changed.opaque == 5
    assert changed.ext_fields == {"k": "1"}
    assert changed.body == b"xy" and type(changed.body) is bytes


def test_equality_and_hash() -> None:
    a = RemotingCommand.request(10, {"k": "v"}, b"body", opaque=1)
    b = RemotingCommand.request(10, {"k": "v"}, b"body", opaque=1)
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(opaque=2)
    assert len({a, b, a.replace(body=b"")}) == 2


def test_repr_names_the_code() -> None:
    text = repr(RemotingCommand.request(RequestCode.SEND_MESSAGE_V2, body=b"x" * 100))
    assert "SEND_MESSAGE_V2" in text and "body[100]" in text
    response = RemotingCommand.response_to(RemotingCommand.request(10), 17)
    assert "TOPIC_NOT_EXIST" in repr(response)


def test_code_name() -> None:
    assert code_name(105) == "GET_ROUTEINFO_BY_TOPIC"
    assert code_name(3, response=True) == "REQUEST_CODE_NOT_SUPPORTED"
    assert code_name(31337) == "31337"


def test_response_to_with_a_read_only_map_equals_the_general_path() -> None:
    from types import MappingProxyType

    request = RemotingCommand.request(
        10, {"a": "1"}, opaque=7, serialize_type=SerializeType.ROCKETMQ
    )
    fast = RemotingCommand.response_to(request, 0, "ok", MappingProxyType({"k": "v"}), b"b")
    slow = RemotingCommand.response_to(request, 0, "ok", {"k": "v"}, b"b")
    assert fast == slow and hash(fast) == hash(slow)
    assert (fast.opaque, fast.is_response, fast.serialize_type) == (7, True, SerializeType.ROCKETMQ)
    assert fast.ext_fields == {"k": "v"}
