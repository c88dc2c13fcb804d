"""Hypothesis strategies for remoting commands."""

from __future__ import annotations

from hypothesis import strategies as st

from rmqtwist import LanguageCode, RemotingCommand, SerializeType

INT16 = st.integers(-(1 << 15), (1 << 15) - 1)
INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
# Any text Python can encode as UTF-8 (no lone surrogates).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@st.composite
def commands(draw: st.DrawFn, serialize_type: SerializeType | None = None) -> RemotingCommand:
    """Arbitrary commands that ``serialize_type`` can carry (either format if None)."""
    stype = serialize_type if serialize_type is not None else draw(st.sampled_from(SerializeType))
    binary = stype == SerializeType.ROCKETMQ
    language = draw(st.one_of(st.sampled_from(LanguageCode), st.integers(0, 255)))
    return RemotingCommand(
        code=draw(INT16 if binary else INT32),
        language=language,
        version=draw(INT16 if binary else INT32),
        opaque=draw(INT32),
        flag=draw(INT32),
        remark=draw(st.none() | TEXT),
        ext_fields=draw(st.none() | st.dictionaries(TEXT, TEXT, max_size=8)),
        body=draw(st.binary(max_size=300)),
        serialize_type=stype,
    )


def wire_normal(command: RemotingCommand) -> RemotingCommand:
    """What ``command`` becomes after a trip through its format: the binary header
    cannot tell an empty remark or an empty ext_fields from none."""
    if command.serialize_type == SerializeType.ROCKETMQ:
        return command.replace(remark=command.remark or None, ext_fields=command.ext_fields or None)
    return command
