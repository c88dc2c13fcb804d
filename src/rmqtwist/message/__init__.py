"""Messages and the byte layouts that carry them. Pure: no Twisted, no I/O, time injected.

- :class:`Message` is what a producer sends (topic, body, tags, keys, other properties);
  :class:`MessageExt` is a stored message as a consumer gets it back.
- Properties travel as one string, ``k\\x01v\\x02k\\x01v``: :func:`encode_properties` and
  :func:`decode_properties` (with Java's parsing quirks); :class:`Property` names the keys.
- The stored record, the commit-log entry that a PULL body concatenates:
  :func:`encode_record`, :func:`set_record_offsets`, :func:`summarize_record` (a cheap look,
  for a store's index), :func:`decode_record` and :func:`decode_records`. Decoding checks
  every length against the record and the buffer: a lying one raises
  :class:`~rmqtwist.errors.MalformedMessage` naming the field and the byte.
- The body of SEND_BATCH_MESSAGE: :func:`encode_batch`, :func:`decode_batch`.
- Ids: :func:`offset_msg_id` (store host + commit-log offset, what a send response
  carries) and :class:`UniqueIdGenerator` (the client-made UNIQ_KEY). :func:`tag_hash` is
  Java's ``String.hashCode``, the tag code a consume queue filters on.
- :func:`compress_body` / :func:`decompress_body`: the zlib bodies of large messages.

Layouts are Apache RocketMQ 4.9's byte for byte, big-endian, plus 5.x's V2 magic code
(a 2-byte topic length) for topics over 127 UTF-8 bytes.
"""

from rmqtwist.message._batch import BatchItem, decode_batch, encode_batch
from rmqtwist.message._compression import COMPRESS_OVER, compress_body, decompress_body
from rmqtwist.message._flags import MAGIC_CODE_V1, MAGIC_CODE_V2, MessageSysFlag, transaction_type
from rmqtwist.message._hosts import (
    UniqueIdGenerator,
    offset_msg_id,
    pack_host,
    parse_offset_msg_id,
    unpack_host,
)
from rmqtwist.message._model import Message, MessageExt
from rmqtwist.message._properties import Property, decode_properties, encode_properties, tag_hash
from rmqtwist.message._record import (
    RECORD_PHYSICAL_OFFSET_POS,
    RECORD_QUEUE_OFFSET_POS,
    RecordSummary,
    decode_record,
    decode_records,
    encode_record,
    set_record_offsets,
    summarize_record,
)

__all__ = [
    "COMPRESS_OVER",
    "MAGIC_CODE_V1",
    "MAGIC_CODE_V2",
    "RECORD_PHYSICAL_OFFSET_POS",
    "RECORD_QUEUE_OFFSET_POS",
    "BatchItem",
    "Message",
    "MessageExt",
    "MessageSysFlag",
    "Property",
    "RecordSummary",
    "UniqueIdGenerator",
    "compress_body",
    "decode_batch",
    "decode_properties",
    "decode_record",
    "decode_records",
    "decompress_body",
    "encode_batch",
    "encode_properties",
    "encode_record",
    "offset_msg_id",
    "pack_host",
    "parse_offset_msg_id",
    "set_record_offsets",
    "summarize_record",
    "tag_hash",
    "transaction_type",
    "unpack_host",
]
