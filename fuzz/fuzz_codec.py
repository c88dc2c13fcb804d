"""atheris fuzz target for the decoders a peer's bytes reach (issue 14).

Each input is cut in up to four pieces that a FrameDecoder is fed in turn (with small
limits, so that the limit checks are reached), then given whole to decode_frame and, as
a PULL or batch body, to decode_records and decode_batch. A ProtocolError (frames) or
MalformedMessage (bodies) is the expected refusal; any other exception, or the
FrameDecoder's "undecodable frame" catch-all (which hides a decoder bug from the
connection), is a crash.

    python fuzz/fuzz_codec.py -max_total_time=60      # add a corpus directory to keep one

Without a corpus directory it starts from a temporary one holding valid frames (JSON and
ROCKETMQ headers), records and a batch, so that the fuzzer mutates the paths past the
length checks rather than having to discover a valid header first, and a copy of
``fuzz/corpus/``: what a 30-minute run (41.5M inputs, no crash) kept, so that the 60 s in
CI start where that run ended. To grow it, give it as the corpus directory:

    python fuzz/fuzz_codec.py fuzz/corpus -max_total_time=1800
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from rmqtwist import RemotingCommand, SerializeType
    from rmqtwist.codec import FrameDecoder, decode_frame, encode_frame
    from rmqtwist.errors import MalformedMessage, ProtocolError
    from rmqtwist.message import Message, decode_batch, decode_records, encode_batch
    from rmqtwist.message._record import encode_record


def test_one_input(data: bytes) -> None:
    """Feed ``data`` to every decoder; raise on anything but their refusal."""
    if not data:
        return
    # The first byte chooses the cuts, so that the same frame is fed in many splits.
    cut_seed, data = data[0], data[1:]
    size = len(data)
    cuts = sorted({(cut_seed * (i + 1) * 37) % (size + 1) for i in range(cut_seed % 4)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    decoder = FrameDecoder(max_frame_length=1 << 20, max_header_length=64 * 1024, max_ext_fields=64)
    try:
        for piece in pieces:
            decoder.feed(piece)
    except ProtocolError as e:
        if str(e).startswith("undecodable frame"):
            raise AssertionError(f"FrameDecoder hid a decoder bug: {e}") from None
    with contextlib.suppress(ProtocolError):
        decode_frame(data)
    for decode in (decode_records, decode_batch):
        with contextlib.suppress(MalformedMessage):
            decode(data)


def seeds() -> list[bytes]:
    """Valid inputs, each after the byte that chooses the cuts."""
    command = RemotingCommand(
        code=310, remark="r\u00e9", ext_fields={"a": "topic", "b": "1", "i": "TAGS\x01A\x02"}
    )
    frames = [encode_frame(command, stype) for stype in SerializeType]
    frames.append(encode_frame(RemotingCommand(code=11, body=b"x" * 8), SerializeType.ROCKETMQ))
    # A JSON header as other peers write it: numbers, nesting, escapes and a non-whole number.
    text = (
        b'{"code":310,"flag":0,"language":"JAVA","opaque":7,"serializeTypeCurrentRPC":"JSON",'
        b'"version":395,"remark":"\\u00e9","extFields":{"a":1.5e3,"b":[1,{"c":null}],"d":true}}'
    )
    frames.append((4 + len(text)).to_bytes(4, "big") + len(text).to_bytes(4, "big") + text)
    record = bytes(
        encode_record(
            topic="T",
            body=b"hello",
            properties="TAGS\x01A\x02KEYS\x01k",
            queue_id=1,
            born_timestamp=1,
            born_host="127.0.0.1:1",
            store_timestamp=2,
            store_host="[::1]:2",
        )
    )
    batch = encode_batch([Message("T", b"one", tags="A"), Message("T", b"two")])
    return [b"\0" + data for data in (*frames, b"".join(frames), record, record * 2, batch)]


def main() -> None:
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="rmqtwist-fuzz-corpus-"))
        for i, data in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(data)
        for kept in (Path(__file__).parent / "corpus").iterdir():
            (corpus / kept.name).write_bytes(kept.read_bytes())
        argv.append(str(corpus))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
