"""The fast canonical encoder produces exactly the RFC 8785 bytes (reference: `rfc8785`)."""

from __future__ import annotations

import typing

import msgspec
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import events as ev
from ledger.canonical import MAX_SAFE_INTEGER, canonical_bytes, validate
from ledger.chain import make_envelope
from ledger.errors import InvalidEventError

safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
# Any Unicode scalar value (no lone surrogates): control chars, DEL, U+2028, astral planes...
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
ascii_keys = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12)

json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(ascii_keys, children, max_size=5),
    max_leaves=30,
)


def strategy_for(annotation: typing.Any) -> st.SearchStrategy:
    origin = typing.get_origin(annotation)
    if annotation is str:
        return texts
    if annotation is int:
        return safe_ints
    if annotation is bool:
        return st.booleans()
    if annotation is type(None):
        return st.none()
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return st.one_of(*[strategy_for(a) for a in typing.get_args(annotation)])
    if origin is list:
        (inner,) = typing.get_args(annotation)
        return st.lists(strategy_for(inner), max_size=4)
    if origin is dict:
        _, value_type = typing.get_args(annotation)
        values = json_values if value_type is typing.Any else strategy_for(value_type)
        return st.dictionaries(ascii_keys, values, max_size=4)
    if annotation is typing.Any:
        return json_values
    raise AssertionError(f"no strategy for {annotation!r}: extend the test for the new field type")


def event_strategy(cls: type[ev.Event]) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = {name: strategy_for(hints[name]) for name in cls.__struct_fields__}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


EVENT_TYPES = sorted(ev.registered_types().items())


@pytest.mark.parametrize("name,cls", EVENT_TYPES, ids=[n for n, _ in EVENT_TYPES])
def test_every_event_type_encodes_to_rfc8785_bytes(name: str, cls: type[ev.Event]) -> None:
    @settings(max_examples=150, deadline=None)
    @given(event=event_strategy(cls), seq=st.integers(1, MAX_SAFE_INTEGER), version=st.integers(1, 2**31))
    def check(event: ev.Event, seq: int, version: int) -> None:
        envelope = make_envelope(
            seq=seq, type=name, stream="0b8f3c1e-1111-4d2e-9a55-7d4e0c2b9f10", version=version,
            at="2026-11-29T05:00:00.123456Z", data=event.to_data(), prev="ab" * 32,
        )
        assert canonical_bytes(envelope) == rfc8785.dumps(envelope)
        # and the data round-trips to the same event
        assert msgspec.convert(event.to_data(), cls) == event

    check()


@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_generated_values_encode_to_rfc8785_bytes(value: typing.Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"b": [1, {"z": "", "a": None}], "a": "é\u2028😀\x00\x1f\x7f"}},
        {"": "", "empty": [], "obj": {}},
        {"big": MAX_SAFE_INTEGER, "small": -MAX_SAFE_INTEGER},
        "\"\\/\b\f\n\r\t",
    ],
)
def test_hand_picked_edge_cases(value: typing.Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"x": 1.5}, "float"),
        ({"x": 2**53}, "outside"),
        ({"x": -(2**53)}, "outside"),
        ({"é": 1}, "not ASCII"),
        ({1: 1}, "not a string"),
        ({"x": "\ud800"}, "surrogate"),
        ({"x": b"bytes"}, "unsupported"),
    ],
)
def test_values_outside_the_canonical_subset_are_refused(bad: typing.Any, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason):
        validate(bad)
