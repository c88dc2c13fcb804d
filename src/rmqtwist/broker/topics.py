"""Topics: their queue counts and permissions, system topics, auto-creation, persistence."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from rmqtwist.broker.config import BrokerConfig
    from rmqtwist.broker.store import IMessageStore

__all__ = [
    "DELAY_TOPIC",
    "HALF_TOPIC",
    "OP_HALF_TOPIC",
    "PERM_INHERIT",
    "PERM_READ",
    "PERM_WRITE",
    "TEMPLATE_TOPIC",
    "TopicConfig",
    "TopicTable",
    "dlq_topic",
    "is_retry_topic",
    "retry_topic",
    "topic_problem",
]

_log = Logger()

PERM_READ = 4
PERM_WRITE = 2
PERM_INHERIT = 1

#: The template topic producers name as ``defaultTopic`` for topics that do not exist yet.
TEMPLATE_TOPIC = "TBW102"
#: Delayed messages wait here, one queue per level (queue id = level - 1).
DELAY_TOPIC = "SCHEDULE_TOPIC_XXXX"
#: Transaction half messages, and the record of which were committed or rolled back.
HALF_TOPIC = "RMQ_SYS_TRANS_HALF_TOPIC"
OP_HALF_TOPIC = "RMQ_SYS_TRANS_OP_HALF_TOPIC"

RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
_VALID = re.compile(r"^[%|a-zA-Z0-9_-]+$")
_MAX_TOPIC_LENGTH = 127
_METADATA = "topics"


def retry_topic(group: str) -> str:
    """The retry topic of consumer group ``group``."""
    return RETRY_PREFIX + group


def dlq_topic(group: str) -> str:
    """The dead-letter topic of consumer group ``group``."""
    return DLQ_PREFIX + group


def is_retry_topic(topic: str) -> bool:
    return topic.startswith(RETRY_PREFIX)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid topic name (Apache's rules), or None when it is."""
    if not topic:
        return "the specified topic is blank"
    if len(topic) > _MAX_TOPIC_LENGTH:
        return f"the specified topic is longer than topic max length {_MAX_TOPIC_LENGTH}"
    if not _VALID.match(topic):
        return (
            f"the specified topic[{topic}] contains illegal characters, allowing only "
            "^[%|a-zA-Z0-9_-]+$"
        )
    return None


@dataclasses.dataclass(frozen=True)
class TopicConfig:
    """One topic as the broker knows it."""

    name: str
    read_queue_nums: int
    write_queue_nums: int
    perm: int = PERM_READ | PERM_WRITE
    topic_sys_flag: int = 0
    order: bool = False
    filter_type: str = "SINGLE_TAG"
    #: System topics are hidden from nothing, but are never deleted or re-created.
    system: bool = False

    @property
    def readable(self) -> bool:
        return bool(self.perm & PERM_READ)

    @property
    def writable(self) -> bool:
        return bool(self.perm & PERM_WRITE)

    @property
    def queue_nums(self) -> int:
        """The number of queues that may hold messages."""
        return max(self.read_queue_nums, self.write_queue_nums)

    def to_json(self) -> dict[str, Any]:
        return {
            "readQueueNums": self.read_queue_nums,
            "writeQueueNums": self.write_queue_nums,
            "perm": self.perm,
            "topicSysFlag": self.topic_sys_flag,
            "order": self.order,
            "topicFilterType": self.filter_type,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> TopicConfig:
        return cls(
            name=name,
            read_queue_nums=int(data["readQueueNums"]),
            write_queue_nums=int(data["writeQueueNums"]),
            perm=int(data.get("perm", PERM_READ | PERM_WRITE)),
            topic_sys_flag=int(data.get("topicSysFlag", 0)),
            order=bool(data.get("order", False)),
            filter_type=str(data.get("topicFilterType", "SINGLE_TAG")),
        )


class TopicTable:
    """The broker's topics: the system ones, those created and those loaded from the store."""

    def __init__(self, config: BrokerConfig, store: IMessageStore) -> None:
        self._config = config
        self._store = store
        self._topics: dict[str, TopicConfig] = {}
        levels = len(config.delay_levels)
        for topic in (
            TopicConfig(
                TEMPLATE_TOPIC,
                config.template_queue_nums,
                config.template_queue_nums,
                PERM_READ | PERM_WRITE | PERM_INHERIT,
                system=True,
            ),
            TopicConfig(DELAY_TOPIC, levels, levels, system=True),
            TopicConfig(HALF_TOPIC, 1, 1, system=True),
            TopicConfig(OP_HALF_TOPIC, 1, 1, system=True),
        ):
            self._topics[topic.name] = topic

    def load(self) -> None:
        """Read the topics the store kept (after ``store.start()``)."""
        saved = self._store.load_metadata(_METADATA)
        if not isinstance(saved, dict):
            return
        for name, data in saved.get("topicConfigTable", {}).items():
            if name in self._topics and self._topics[name].system:
                continue
            try:
                self._topics[name] = TopicConfig.from_json(name, data)
            except (KeyError, TypeError, ValueError) as e:
                _log.warn("Ignoring the saved topic {topic}: {error}", topic=name, error=e)

    def _save(self) -> None:
        table = {name: t.to_json() for name, t in self._topics.items() if not t.system}
        self._store.save_metadata(_METADATA, {"topicConfigTable": table})

    def get(self, name: str) -> TopicConfig | None:
        return self._topics.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def __iter__(self) -> Iterator[TopicConfig]:
        return iter(list(self._topics.values()))

    def __len__(self) -> int:
        return len(self._topics)

    def names(self) -> list[str]:
        return sorted(self._topics)

    def put(self, topic: TopicConfig) -> TopicConfig:
        """Create or replace ``topic`` (a system topic cannot be replaced)."""
        existing = self._topics.get(topic.name)
        if existing is not None and existing.system:
            return existing
        self._topics[topic.name] = topic
        self._save()
        if existing is None:
            _log.info(
                "Created topic {topic} ({queues} queues, perm {perm})",
                topic=topic.name,
                queues=topic.queue_nums,
                perm=topic.perm,
            )
        return topic

    def ensure(self, name: str, queue_nums: int, perm: int = PERM_READ | PERM_WRITE) -> TopicConfig:
        """The topic ``name``, created with ``queue_nums`` queues if it does not exist."""
        topic = self._topics.get(name)
        if topic is None:
            topic = self.put(TopicConfig(name, queue_nums, queue_nums, perm))
        return topic

    def auto_create(
        self, name: str, template: str | None = None, queue_nums: int | None = None
    ) -> TopicConfig | None:
        """Create ``name`` for a send or a subscription, if auto-creation is on.

        ``template`` is the send's defaultTopic: it must exist and allow inheritance, as
        Apache checks; the queue count is ``queue_nums`` capped by the template's.
        """
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        if not self._config.auto_create_topic or topic_problem(name) is not None:
            return None
        count = self._config.default_queue_nums
        if template is not None:
            source = self._topics.get(template)
            if source is None or not source.perm & PERM_INHERIT:
                return None
            count = min(queue_nums if queue_nums else count, source.write_queue_nums)
        elif queue_nums:
            count = queue_nums
        return self.put(TopicConfig(name, max(count, 1), max(count, 1)))

    def delete(self, name: str) -> bool:
        """Forget ``name`` (not a system topic); True when it existed."""
        topic = self._topics.get(name)
        if topic is None or topic.system:
            return False
        del self._topics[name]
        self._save()
        _log.info("Deleted topic {topic}", topic=name)
        return True
