"""Encode/decode cost per command for both header formats.

Run: python bench/codec.py [--number N] [--rounds R] [--json FILE]

Prints a table (microseconds per operation, best of --rounds timing rounds) and, with
--json, writes the same numbers as JSON. Cases: the 6-field request a producer sends
(SEND_MESSAGE_V2-like ext_fields, no body) and a response carrying a 1 KiB body.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rmqtwist import RemotingCommand, RequestCode, ResponseCode, SerializeType
from rmqtwist.codec import FrameDecoder, decode_frame, encode_frame

REQUEST_6 = RemotingCommand.request(
    RequestCode.SEND_MESSAGE_V2,
    {
        "a": "please_rename_unique_group_name",
        "b": "TopicTest",
        "c": "TBW102",
        "d": "4",
        "e": "1",
        "g": "1700000000000",
    },
    opaque=123456,
)
RESPONSE_1K = RemotingCommand.response_to(
    REQUEST_6,
    ResponseCode.SUCCESS,
    ext_fields={"msgId": "7F00000100002A9F0000000000000000", "queueId": "1", "queueOffset": "42"},
    body=bytes(range(256)) * 4,
)
CASES = {"request, 6 ext fields": REQUEST_6, "response, 1 KiB body": RESPONSE_1K}


def measure(func: object, number: int, rounds: int) -> float:
    """Best per-call time in microseconds."""
    timer = timeit.Timer(func)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=rounds, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing round")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (best is kept)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    rows = []
    for name, command in CASES.items():
        for stype in SerializeType:
            cmd = command.replace(serialize_type=stype)
            frame = encode_frame(cmd)
            assert decode_frame(frame) == cmd
            decoder = FrameDecoder()
            encode_us = measure(lambda cmd=cmd: encode_frame(cmd), args.number, args.rounds)
            decode_us = measure(lambda f=frame: decode_frame(f), args.number, args.rounds)
            feed_us = measure(lambda f=frame, d=decoder: d.feed(f), args.number, args.rounds)
            rows.append(
                {
                    "case": name,
                    "serialize_type": stype.name,
                    "frame_bytes": len(frame),
                    "encode_us": round(encode_us, 3),
                    "decode_us": round(decode_us, 3),
                    "feed_us": round(feed_us, 3),
                }
            )

    print(
        f"rmqtwist codec, {platform.python_implementation()} {platform.python_version()}, "
        f"best of {args.rounds} x {args.number} calls"
    )
    header = (
        f"{'case':<24}{'format':<10}{'bytes':>7}{'encode us':>11}{'decode us':>11}{'feed us':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<24}{r['serialize_type']:<10}{r['frame_bytes']:>7}"
            f"{r['encode_us']:>11.2f}{r['decode_us']:>11.2f}{r['feed_us']:>10.2f}"
        )
    result = {"python": platform.python_version(), "rows": rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
