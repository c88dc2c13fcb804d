"""Replays what Apache RocketMQ 4.9.8's own Java clients sent (``../shared/transcripts/
java-4.9.8``, scenarios 01..07) against the dev broker and checks each answer against the
one Apache's name server and broker gave.

Each scenario gets one harness (name server and broker are one here), one ``Peer`` per
captured connection, and the Clock moved to each frame's time, so long polls, delays and
the transaction checker run on the captured timeline. Every client request is replayed in
capture order; an answer must have Apache's response code, the same set of extFields keys,
the same values where they do not depend on commit-log positions (queue ids and offsets,
pull offsets, pull remarks), and a body of the same shape: JSON bodies equal once the
broker address is normalised and lists are sorted, pull bodies the same messages (body,
tags, keys, user properties, queue, offset, flags, body CRC). Apache's held pulls must be
held here too (no immediate answer) and answered, with the same code, by the time Apache
answered them (ours expire after exactly suspendTimeoutMillis, Apache's after up to 5 s
more). Requests the broker pushed (NOTIFY_CONSUMER_IDS_CHANGED, CHECK_TRANSACTION_STATE)
must be pushed here too, on the same connection, by the time Apache pushed them, and no
others.

Messages that scenarios 02..05 and 07 consume were produced before their capture; they are
seeded first, from what Apache's pull answers in the same file show. Commit-log offsets
differ between the two brokers, so requests naming one (CONSUMER_SEND_MSG_BACK, and
END_TRANSACTION with the CHECK_TRANSACTION_STATE values it answers) are rewritten through
the map built from both brokers' answers.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rmqtwist.broker.config import BrokerConfig
from rmqtwist.codes import LanguageCode, RequestCode, ResponseCode
from rmqtwist.command import RemotingCommand
from rmqtwist.message import (
    MessageExt,
    Property,
    decode_properties,
    decode_record,
    decode_records,
    encode_properties,
    parse_offset_msg_id,
)

from .harness import BROKER, BrokerHarness, Peer

SHARED = Path(__file__).resolve().parents[3] / "shared"
TRANSCRIPTS = SHARED / "transcripts" / "java-4.9.8"
SCENARIOS = [
    "01-producer",
    "02-push-consumer",
    "03-retry-consumer",
    "04-orderly-consumer",
    "05-lite-pull-consumer",
    "06-transaction-producer",
    "07-two-consumers",
]
#: Apache's broker listened here during the capture; ours is BROKER.
APACHE_BROKER = "127.0.0.1:29911"
#: An Apache answer this long after its request was a held (long-polling) pull; a
#: heartbeat this soon after a pull raced it.
HELD_AFTER = 0.5
#: The capture's broker settings that matter here (README: transactionTimeOut=3000,
#: transactionCheckInterval=5000).
CONFIG = BrokerConfig(transaction_timeout=3.0, transaction_check_interval=5.0)
PULLS = (RequestCode.PULL_MESSAGE, RequestCode.LITE_PULL_MESSAGE)
SENDS = (RequestCode.SEND_MESSAGE, RequestCode.SEND_MESSAGE_V2, RequestCode.SEND_BATCH_MESSAGE)
SYSTEM_PROPERTIES = frozenset(
    value for name, value in vars(Property).items() if name.isupper() and isinstance(value, str)
)
#: Properties the seeding sends leave out: the broker adds or sets them itself.
NOT_SEEDED = frozenset({"CLUSTER", "REAL_TOPIC", "REAL_QID", "DELAY", "WAIT"})

#: Differences from Apache this replay found and accepts: (scenario, kind) -> why.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    ("03-retry-consumer", "heartbeat overtaken"): (
        "Apache answered a pull SUBSCRIPTION_NOT_LATEST (25) although the client's "
        "heartbeat carrying that subVersion came before it on the connection: Apache runs "
        "HEART_BEAT and PULL_MESSAGE in separate thread pools, so the pull overtook it. "
        "The dev broker handles a connection's requests in order and answers the pull."
    ),
    ("07-two-consumers", "heartbeat overtaken"): (
        "as in 03: the pull right after a heartbeat with a new %RETRY% subVersion"
    ),
    ("02-push-consumer", "heartbeat raced"): (
        "the same race the other way round: a J4 consumer sends a pull with a new "
        "subVersion and, a moment later, the heartbeat that carries it. Apache happened to "
        "handle the heartbeat first and held (or answered) the pull; the dev broker, in "
        "order, holds the pull until that heartbeat comes (up to 1 s) and answers it then, "
        "so its answer comes when the heartbeat does"
    ),
    ("03-retry-consumer", "heartbeat raced"): "as in 02 (two JpTopic03 pulls at start-up)",
    ("03-retry-consumer", "retry order"): (
        "Apache stored the three CONSUMER_SEND_MSG_BACK copies in %RETRY%jp_group_03 in "
        "another order than they arrived (it handles them concurrently); the dev broker "
        "stores them in arrival order. Same messages, same counts per answer, other "
        "queue offsets."
    ),
    ("06-transaction-producer", "check names the half message"): (
        "Apache's CHECK_TRANSACTION_STATE names a fresh copy of the half message it wrote "
        "for the check (new commitLogOffset and tranStateTableOffset); the dev broker "
        "names the half message itself. The producer answers with those values, which "
        "the replay maps."
    ),
    ("06-transaction-producer", "check sysFlag"): (
        "the message in Apache's CHECK_TRANSACTION_STATE has sysFlag 0 (Apache stores half "
        "messages with the transaction bits cleared); the dev broker's has PREPARED (4), "
        "as the producer sent it. Clients do not read it."
    ),
}


# -- transcript files ---------------------------------------------------------------------


@dataclasses.dataclass
class Frame:
    """One captured frame, and its place in the file."""

    data: dict[str, Any]
    index: int

    @property
    def t(self) -> float:
        return float(self.data["t"])

    @property
    def conn(self) -> str:
        return str(self.data["conn"])

    @property
    def code(self) -> int:
        return int(self.data["code"])

    @property
    def opaque(self) -> int:
        return int(self.data["opaque"])

    @property
    def is_response(self) -> bool:
        return bool(self.data["isResponse"])

    @property
    def is_oneway(self) -> bool:
        return bool(self.data["isOneway"])

    @property
    def from_client(self) -> bool:
        return bool(self.data["dir"] == "c2s")

    @property
    def ext(self) -> dict[str, str]:
        return dict(self.data.get("extFields") or {})

    @property
    def remark(self) -> str | None:
        return self.data.get("remark")

    @property
    def decoded(self) -> dict[str, Any]:
        return self.data.get("bodyDecoded") or {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.decoded.get("messages", []))

    def text(self) -> str:
        assert not self.data.get("bodyTruncated"), f"{self}: the body was truncated"
        return str(self.data.get("body") or "")

    def body(self) -> bytes:
        """The frame's body, rebuilt where the capture kept only its decoding."""
        decoded = self.decoded
        if "batch" in decoded:
            return batch_body(decoded["batch"], self)
        if "compression" in decoded:
            assert decoded["compression"] == "ZLIB"
            raw = full_text(decoded["body"], decoded["uncompressedLength"], truncated=True)
            return checked_compress(raw, self)
        if self.data.get("bodyLength", 0) == 0:
            return b""
        if "body" in self.data:
            return self.text().encode("utf-8")
        assert not self.data.get("bodyTruncated"), f"{self}: cannot rebuild the body"
        return bytes.fromhex(self.data["bodyHex"])

    def __str__(self) -> str:
        name = self.data.get("reqCodeName") or self.data.get("codeName")
        return f"t={self.t} {self.conn} opaque {self.opaque} {name}({self.code})"


def load(name: str) -> tuple[list[Frame], dict[str, Any]]:
    path = TRANSCRIPTS / f"{name}.jsonl"
    if not path.is_file():
        pytest.fail(
            f"The Apache 4.9.8 transcripts are missing: {path} does not exist. They are read "
            f"from ../shared beside the repository checkout ({SHARED}); put the shared "
            "directory there (CI has it beside the checkout).",
            pytrace=False,
        )
    frames: list[Frame] = []
    note: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        data = json.loads(line)
        if "note" in data:
            note = data
        elif not data["conn"].startswith("broker->"):  # Apache's broker as a client
            frames.append(Frame(data, len(frames)))
    return frames, note


LINE = "line {:04d}: the quick brown fox jumps over the lazy dog.\n"


def full_text(text: str, length: int, *, truncated: bool) -> bytes:
    """A captured body the capture cut to 300 characters, rebuilt: the producers' large
    bodies are numbered lines of a pangram."""
    if not truncated:
        return text.encode("utf-8")
    raw = "".join(LINE.format(i) for i in range(length // 40 + 1))[:length]
    assert raw.startswith(text), f"cannot rebuild a body starting {text[:40]!r}"
    return raw.encode("utf-8")


def checked_compress(raw: bytes, where: object, crc: int | None = None) -> bytes:
    """``raw`` as Java's Deflater (level 5) wrote it; checked against the capture."""
    body = zlib.compress(raw, 5)
    if crc is not None:
        assert zlib.crc32(body) & 0x7FFFFFFF == crc, f"{where}: rebuilt body CRC differs"
    return body


def batch_body(entries: list[dict[str, Any]], where: Frame) -> bytes:
    """A SEND_BATCH_MESSAGE body from its captured entries (broker.md §4.6)."""
    out = b""
    for entry in entries:
        body = full_text(
            entry["body"], entry["bodyLength"], truncated=bool(entry.get("bodyTruncated"))
        )
        props = encode_properties(entry["properties"]).encode("utf-8")
        size = 20 + len(body) + 2 + len(props)
        assert size == entry["storeSize"], f"{where}: rebuilt batch entry size differs"
        out += struct.pack(">iiiii", size, 0, 0, entry["flag"], len(body)) + body
        out += struct.pack(">h", len(props)) + props
    hex_prefix = where.data.get("bodyHex", "")
    assert out.hex().upper().startswith(hex_prefix.upper()), f"{where}: rebuilt batch differs"
    return out


def normalised(text: str) -> Any:
    """A JSON body with Apache's broker address replaced by ours, lists sorted."""
    return canonical(json.loads(text.replace(APACHE_BROKER, BROKER)))


def canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


# -- messages compared ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class View:
    """What must agree between a message Apache served and ours."""

    topic: str
    queue_id: int
    queue_offset: int
    sys_flag: int
    flag: int
    reconsume_times: int
    body_crc: int
    body: str
    tags: str | None
    keys: str | None
    user: tuple[tuple[str, str], ...]

    def unordered(self) -> View:
        return dataclasses.replace(self, queue_offset=-1)


def apache_view(message: dict[str, Any], body: str | None = None) -> View:
    props = message["properties"]
    return View(
        message["topic"],
        message["queueId"],
        message["queueOffset"],
        message["sysFlag"],
        message["flag"],
        message["reconsumeTimes"],
        message["bodyCRC"],
        message["body"] if body is None else body,
        props.get("TAGS"),
        props.get("KEYS"),
        tuple(sorted((k, v) for k, v in props.items() if k not in SYSTEM_PROPERTIES)),
    )


def our_view(message: MessageExt, apache: dict[str, Any]) -> View:
    text = message.decoded_body().decode("utf-8", "replace")
    if apache.get("bodyTruncated"):
        text = text[: len(apache["body"])]
    props = message.wire_properties()
    return View(
        message.topic,
        message.queue_id,
        message.queue_offset,
        message.sys_flag,
        message.flag,
        message.reconsume_times,
        message.body_crc,
        text,
        props.get("TAGS"),
        props.get("KEYS"),
        tuple(sorted((k, v) for k, v in props.items() if k not in SYSTEM_PROPERTIES)),
    )


# -- the replay -------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    """A replayed request still waiting for an answer (a held pull)."""

    request: Frame
    peer: Peer
    opaque: int
    answer: RemotingCommand | None = None


class Replay:
    """One scenario replayed against a fresh dev broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames, self.note = load(name)
        self.harness = BrokerHarness(CONFIG)
        self.harness.run_transaction_checks()
        self.start = self.harness.clock.seconds()
        self.peers: dict[str, Peer] = {}
        self.problems: list[str] = []
        self.known_seen: set[str] = set()
        #: Apache commit-log offset -> (ours, our queue offset)
        self.positions: dict[int, tuple[int, int]] = {}
        self.apache_answers = {
            (f.conn, f.opaque): f for f in self.frames if f.is_response and not f.from_client
        }
        self.held: dict[tuple[str, int], Sent] = {}
        self.after_heartbeat: dict[str, list[Sent]] = {}
        #: pulls whose answers are not compared (see KNOWN_DIFFERENCES)
        self.unchecked: list[Sent] = []
        self.pushed: dict[str, list[RemotingCommand]] = {}
        #: (conn, group, topic) -> the newest subVersion this connection heartbeated
        self.sub_versions: dict[tuple[str, str, str], int] = {}
        #: (topic, queue) -> every message each broker served, for "retry order"
        self.served: dict[tuple[str, int], tuple[list[View], list[View]]] = {}
        self.closes = sorted(
            (c["closedAt"], c["conn"])
            for c in self.note.get("connections", [])
            if "closedAt" in c and not c["conn"].startswith("broker->")
        )

    # -- bookkeeping --------------------------------------------------------------------

    def problem(self, frame: Frame, text: str) -> None:
        self.problems.append(f"{self.name} {frame}: {text}")

    def known(self, kind: str) -> bool:
        if (self.name, kind) in KNOWN_DIFFERENCES:
            self.known_seen.add(kind)
            return True
        return False

    def peer(self, conn: str) -> Peer:
        if conn not in self.peers:
            self.peers[conn] = self.harness.peer()
            self.pushed[conn] = []
        return self.peers[conn]

    def advance_to(self, t: float) -> None:
        while self.closes and self.closes[0][0] <= t:
            at, conn = self.closes.pop(0)
            self._move_clock(at)
            if conn in self.peers:
                self._collect_pushes()
                self.peers[conn].close()
        self._move_clock(t)
        self._collect_pushes()

    def _move_clock(self, t: float) -> None:
        target = self.start + t
        now = self.harness.clock.seconds()
        if target > now:
            self.harness.advance(target - now)

    def _collect_pushes(self) -> None:
        for conn, peer in self.peers.items():
            self.pushed[conn].extend(peer.take_pushed())

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        self.seed()
        for frame in self.frames:
            self.advance_to(frame.t)
            if frame.from_client and not frame.is_response:
                self.replay_request(frame)
            elif not frame.from_client and not frame.is_response:
                self.check_push(frame)
            elif not frame.from_client and frame.is_response:
                self.check_late_answer(frame)
        self.advance_to(max([at for at, _ in self.closes] + [self.frames[-1].t]))
        for conn, extra in self.pushed.items():
            for command in extra:
                self.problems.append(
                    f"{self.name} {conn}: we pushed {command.code} {dict(command.ext_fields or {})}"
                    " where Apache pushed nothing"
                )
        self.check_served()

    def seed(self) -> None:
        """Store the messages the scenario's consumers found already there."""
        sent = set()
        for frame in self.frames:
            if frame.from_client and frame.code in SENDS:
                properties = decode_properties(
                    frame.ext.get("i") or frame.ext.get("properties") or ""
                )
                sent.add(properties.get("UNIQ_KEY"))
                sent.update(e["properties"].get("UNIQ_KEY") for e in frame.decoded.get("batch", []))
        found: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
        for frame in self.frames:
            request = self.apache_request_of(frame)
            if request is None or request.code not in PULLS or frame.code != 0:
                continue
            for message in frame.messages:
                topic = message["topic"]
                if topic.startswith(("%RETRY%", "%DLQ%")):
                    continue
                if message["properties"].get("UNIQ_KEY") in sent:
                    continue
                found.setdefault((topic, message["queueId"]), {})[message["queueOffset"]] = message
        messages: list[dict[str, Any]] = []
        for (topic, queue_id), by_offset in found.items():
            assert sorted(by_offset) == list(range(len(by_offset))), (
                f"{self.name}: cannot seed {topic} queue {queue_id}: offsets {sorted(by_offset)}"
            )
            messages.extend(by_offset.values())
        if not messages:
            return
        seeder = self.harness.peer()
        for message in sorted(messages, key=lambda m: m["commitLogOffset"]):
            raw = full_text(
                message["body"],
                message.get("uncompressedLength", message["bodyLength"]),
                truncated=bool(message.get("bodyTruncated")),
            )
            body = raw
            if message["sysFlag"] & 1:
                body = checked_compress(raw, message["topic"], message["bodyCRC"])
            props = {k: v for k, v in message["properties"].items() if k not in NOT_SEEDED}
            ext = {
                "a": "seed_pg",
                "b": message["topic"],
                "c": "TBW102",
                "d": 4,
                "e": message["queueId"],
                "f": message["sysFlag"],
                "g": message["bornTimestamp"],
                "h": message["flag"],
                "i": encode_properties(props),
                "m": False,
            }
            response = seeder.request(RequestCode.SEND_MESSAGE_V2, ext, body)
            assert response.code == ResponseCode.SUCCESS and response.ext_fields is not None
            assert int(response.ext_fields["queueOffset"]) == message["queueOffset"]
            ours = parse_offset_msg_id(response.ext_fields["msgId"])[1]
            self.positions[message["commitLogOffset"]] = (ours, message["queueOffset"])
        seeder.close()

    def apache_request_of(self, response: Frame) -> Frame | None:
        if not response.is_response or response.from_client:
            return None
        for frame in self.frames:
            if (
                frame.from_client
                and frame.conn == response.conn
                and frame.opaque == response.opaque
            ):
                return frame
        return None

    # -- requests -----------------------------------------------------------------------

    def replay_request(self, frame: Frame) -> None:
        ext = self.rewrite(frame)
        if ext is None:
            return
        if frame.code == RequestCode.HEART_BEAT:
            self.note_heartbeat(frame)
        peer = self.peer(frame.conn)
        command = RemotingCommand.request(
            frame.code,
            ext,
            frame.body(),
            oneway=frame.is_oneway,
            language=LanguageCode.JAVA,
            version=int(frame.data["version"]),
        )
        opaque = peer.send(command)
        ours = peer.response(opaque)
        apache = self.apache_answers.get((frame.conn, frame.opaque))
        if frame.is_oneway:
            if ours is not None:
                self.problem(frame, f"a oneway request was answered: {ours!r}")
            return
        apache_held = apache is None or apache.t - frame.t >= HELD_AFTER
        if frame.code == RequestCode.HEART_BEAT:
            self.check_after_heartbeat(frame.conn)
        if ours is None:
            if frame.code not in PULLS:
                self.problem(frame, "no answer to a request that is not a pull")
            elif self.raced(frame, None):  # waiting for the heartbeat that follows
                self.after_heartbeat.setdefault(frame.conn, []).append(Sent(frame, peer, opaque))
            elif apache is not None and apache.code == ResponseCode.SUBSCRIPTION_NOT_LATEST:
                if not self.overtaken(frame):
                    self.problem(frame, "Apache answered 25 at once; we held it")
                self.unchecked.append(Sent(frame, peer, opaque))
            else:  # held: it must be answered by the time Apache answered, if it did
                self.held[(frame.conn, frame.opaque)] = Sent(frame, peer, opaque)
            return
        if apache_held:
            if not self.raced(frame, ours):
                self.problem(frame, f"Apache held it; we answered at once: {ours!r}")
            return
        assert apache is not None
        self.compare(frame, apache, ours)

    def rewrite(self, frame: Frame) -> dict[str, str] | None:
        """The request's extFields with Apache's commit-log positions made ours."""
        ext = frame.ext
        if frame.code == RequestCode.CONSUMER_SEND_MSG_BACK:
            apache = int(ext["offset"])
            if apache not in self.positions:
                self.problem(frame, f"no message of ours matches Apache's offset {apache}")
                return None
            ext["offset"] = str(self.positions[apache][0])
        elif frame.code == RequestCode.END_TRANSACTION:
            apache = int(ext["commitLogOffset"])
            if apache not in self.positions:
                self.problem(frame, f"no half message of ours matches Apache's {apache}")
                return None
            ours, queue_offset = self.positions[apache]
            ext["commitLogOffset"] = str(ours)
            ext["tranStateTableOffset"] = str(queue_offset)
        return ext

    def note_heartbeat(self, frame: Frame) -> None:
        for consumer in json.loads(frame.text()).get("consumerDataSet", []):
            for sub in consumer.get("subscriptionDataSet", []):
                key = (frame.conn, consumer["groupName"], sub["topic"])
                self.sub_versions[key] = max(self.sub_versions.get(key, -1), int(sub["subVersion"]))

    def raced(self, frame: Frame, ours: RemotingCommand | None) -> bool:
        """Our 25 (or, with ``ours`` None, our wait for the heartbeat) for a pull whose
        subVersion the next heartbeat on the connection, sent right after it, carries
        (Apache handled that heartbeat first)."""
        if frame.code not in PULLS:
            return False
        if ours is not None and ours.code != ResponseCode.SUBSCRIPTION_NOT_LATEST:
            return False
        ext = frame.ext
        for later in self.frames[frame.index + 1 :]:
            if later.t > frame.t + HELD_AFTER:
                break
            if not (
                later.from_client
                and later.conn == frame.conn
                and later.code == RequestCode.HEART_BEAT
            ):
                continue
            for consumer in json.loads(later.text()).get("consumerDataSet", []):
                if consumer["groupName"] != ext["consumerGroup"]:
                    continue
                for sub in consumer.get("subscriptionDataSet", []):
                    newer = int(sub["subVersion"]) >= int(ext["subVersion"])
                    if sub["topic"] == ext["topic"] and newer:
                        return self.known("heartbeat raced")
        return False

    def overtaken(self, frame: Frame) -> bool:
        """Apache's 25 for a pull whose subVersion a heartbeat sent before it carried."""
        ext = frame.ext
        key = (frame.conn, ext["consumerGroup"], ext["topic"])
        if self.sub_versions.get(key, -1) >= int(ext["subVersion"]):
            return self.known("heartbeat overtaken")
        return False

    def check_after_heartbeat(self, conn: str) -> None:
        """The pulls that waited for this heartbeat are answered now, or held (long poll)."""
        for sent in self.after_heartbeat.pop(conn, []):
            apache = self.apache_answers.get((sent.request.conn, sent.request.opaque))
            ours = sent.peer.response(sent.opaque)
            if ours is None:
                if apache is not None and apache.t - sent.request.t < HELD_AFTER:
                    self.problem(sent.request, "still held after the heartbeat it waited for")
                else:
                    self.held[(sent.request.conn, sent.request.opaque)] = sent
            elif apache is not None:
                self.compare(sent.request, apache, ours)

    # -- answers ------------------------------------------------------------------------

    def check_late_answer(self, apache: Frame) -> None:
        sent = self.held.pop((apache.conn, apache.opaque), None)
        if sent is None:
            return
        ours = sent.peer.response(sent.opaque)
        if ours is None:
            self.problem(sent.request, f"Apache answered {apache.code} at {apache.t}; we had not")
            return
        self.compare(sent.request, apache, ours)

    def compare(self, request: Frame, apache: Frame, ours: RemotingCommand) -> None:
        if ours.code != apache.code:
            if self.raced(request, ours):
                return
            self.problem(request, f"code {ours.code} ({ours.remark}), Apache {apache.code}")
            return
        our_ext = dict(ours.ext_fields or {})
        if set(our_ext) != set(apache.ext):
            self.problem(request, f"extFields keys {sorted(our_ext)}, Apache {sorted(apache.ext)}")
        for key in self.compared_values(request):
            if key in apache.ext and our_ext.get(key) != apache.ext[key]:
                self.problem(request, f"{key} {our_ext.get(key)!r}, Apache {apache.ext[key]!r}")
        remarked = request.code in PULLS or request.code == RequestCode.GET_ROUTEINFO_BY_TOPIC
        if remarked and ours.remark != apache.remark:
            self.problem(request, f"remark {ours.remark!r}, Apache {apache.remark!r}")
        if request.code in SENDS and apache.code == ResponseCode.SUCCESS:
            self.map_sent(apache.ext["msgId"], our_ext.get("msgId", ""), our_ext)
        if request.code in PULLS and apache.code == ResponseCode.SUCCESS:
            self.compare_messages(request, apache.messages, decode_records(ours.body))
        elif apache.data.get("bodyLength", 0):
            if not ours.body:
                self.problem(request, "no body; Apache sent one")
            elif normalised(ours.body.decode("utf-8")) != normalised(apache.text()):
                self.problem(request, f"body {ours.body!r}, Apache {apache.text()!r}")
        elif ours.body:
            self.problem(request, f"a body {ours.body!r} where Apache sent none")

    @staticmethod
    def compared_values(request: Frame) -> tuple[str, ...]:
        if request.code in PULLS:
            return ("suggestWhichBrokerId", "nextBeginOffset", "minOffset", "maxOffset")
        if request.code in SENDS:
            return ("queueId", "queueOffset", "MSG_REGION", "TRACE_ON")
        if request.code == RequestCode.QUERY_CONSUMER_OFFSET:
            return ("offset",)
        return ()

    def map_sent(self, apache_ids: str, our_ids: str, our_ext: dict[str, str]) -> None:
        first = int(our_ext.get("queueOffset", "0"))
        for i, (apache, ours) in enumerate(
            zip(apache_ids.split(","), our_ids.split(","), strict=True)
        ):
            self.positions[parse_offset_msg_id(apache)[1]] = (
                parse_offset_msg_id(ours)[1],
                first + i,
            )

    def compare_messages(
        self, request: Frame, apache: list[dict[str, Any]], ours: list[MessageExt]
    ) -> None:
        if len(apache) != len(ours):
            self.problem(request, f"{len(ours)} messages, Apache {len(apache)}")
            return
        theirs_views = [apache_view(m) for m in apache]
        our_views = [our_view(m, a) for m, a in zip(ours, apache, strict=True)]
        by_uniq = {(m.topic, m.properties.get("UNIQ_KEY")): m for m in ours}
        for theirs, mine, apache_one, our_one in zip(
            apache, ours, theirs_views, our_views, strict=True
        ):
            apache_list, our_list = self.served.setdefault(
                (theirs["topic"], theirs["queueId"]), ([], [])
            )
            apache_list.append(apache_one)
            our_list.append(our_one)
            same = by_uniq.get((theirs["topic"], theirs["properties"].get("UNIQ_KEY")), mine)
            self.positions[theirs["commitLogOffset"]] = (same.physical_offset, same.queue_offset)
        if theirs_views != our_views:
            topic = apache[0]["topic"]
            if not (topic.startswith("%RETRY%") and self.known("retry order")):
                self.problem(request, f"messages {our_views}, Apache {theirs_views}")

    def check_served(self) -> None:
        """Where "retry order" applies: the same messages over the whole queue."""
        if "retry order" not in self.known_seen:
            return
        for (topic, queue_id), (apache, ours) in self.served.items():
            if Counter(v.unordered() for v in apache) != Counter(v.unordered() for v in ours):
                self.problems.append(
                    f"{self.name} {topic} queue {queue_id}: served {ours}, Apache {apache}"
                )

    # -- pushes -------------------------------------------------------------------------

    def check_push(self, apache: Frame) -> None:
        pending = self.pushed.setdefault(apache.conn, [])
        for i, ours in enumerate(pending):
            if ours.code == apache.code:
                del pending[i]
                break
        else:
            self.problem(apache, f"Apache pushed {apache.code} {apache.ext}; we did not")
            return
        if not ours.is_oneway:
            self.problem(apache, "our push is not oneway")
        our_ext = dict(ours.ext_fields or {})
        if set(our_ext) != set(apache.ext):
            self.problem(apache, f"pushed keys {sorted(our_ext)}, Apache {sorted(apache.ext)}")
        if apache.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED:
            if our_ext != apache.ext:
                self.problem(apache, f"pushed {our_ext}, Apache {apache.ext}")
        elif apache.code == RequestCode.CHECK_TRANSACTION_STATE:
            [theirs] = apache.messages
            mine, end = decode_record(ours.body)
            if end != len(ours.body):
                self.problem(apache, "the pushed body holds more than one message")
            view, apache_one = our_view(mine, theirs), apache_view(theirs)
            if view.sys_flag != apache_one.sys_flag and self.known("check sysFlag"):
                view = dataclasses.replace(view, sys_flag=apache_one.sys_flag)
            if view.queue_offset != apache_one.queue_offset and self.known(
                "check names the half message"
            ):
                view = dataclasses.replace(view, queue_offset=apache_one.queue_offset)
            if view != apache_one:
                self.problem(apache, f"checked message {view}, Apache {apache_one}")
            if mine.properties.get("TRANSACTION_CHECK_TIMES") != theirs["properties"].get(
                "TRANSACTION_CHECK_TIMES"
            ):
                self.problem(apache, "TRANSACTION_CHECK_TIMES differs")
            if our_ext["commitLogOffset"] != apache.ext["commitLogOffset"] and self.known(
                "check names the half message"
            ):
                self.positions[int(apache.ext["commitLogOffset"])] = (
                    int(our_ext["commitLogOffset"]),
                    int(our_ext["tranStateTableOffset"]),
                )


@pytest.mark.parametrize("name", SCENARIOS)
def test_replay_matches_apache(name: str) -> None:
    replay = Replay(name)
    replay.run()
    assert not replay.problems, "\n".join(replay.problems)
    listed = {kind for scenario, kind in KNOWN_DIFFERENCES if scenario == name}
    assert replay.known_seen == listed, f"listed differences not seen: {listed - replay.known_seen}"
