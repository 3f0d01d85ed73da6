"""edgehub/bus/strictjson.py: what it refuses, and that its fast path (a document whose text shows
nothing to find is not walked) never lets through what the walk would find."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.bus import strictjson
from edgehub.errors import PayloadError

MAX_DEPTH = 8


def tokens(value: Any) -> str:
    """JSON text of ``value``: dicts as pair lists (``("obj", [...])``) so keys may repeat."""
    if isinstance(value, tuple) and value[0] == "obj":
        return "{" + ",".join(f"{json.dumps(k)}:{tokens(v)}" for k, v in value[1]) + "}"
    if isinstance(value, tuple) and value[0] == "raw":
        return str(value[1])
    if isinstance(value, list):
        return "[" + ",".join(tokens(v) for v in value) + "]"
    # Strings with a surrogate as escapes (they cannot be UTF-8), others as UTF-8 text.
    surrogate = isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    return json.dumps(value, ensure_ascii=surrogate)


KEYS = st.sampled_from(["a", "b", "qty", "名", "x\x00y", "\ud800", ""]) | st.text(max_size=4)
LEAVES = (st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False)
          | st.text(max_size=6) | st.sampled_from(["\x00", "a\ud83d", "\udfff z", "🍜"])
          | st.sampled_from(["NaN", "Infinity", "1e400", "-1e999", "1" + "0" * 20]).map(lambda t: ("raw", t)))
DOCS = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3)
                    | st.lists(st.tuples(KEYS, kids), max_size=4).map(lambda pairs: ("obj", pairs)),
                    max_leaves=25).map(lambda doc: ("obj", [("root", doc)]))


@settings(max_examples=400, deadline=None)
@given(DOCS)
def test_a_document_not_walked_holds_nothing_the_walk_finds(doc: Any) -> None:
    parsed = strictjson.loads(tokens(doc).encode(), MAX_DEPTH)
    found = list(strictjson.problems(parsed, MAX_DEPTH))  # the walk, whether or not check would walk
    if found:
        with pytest.raises(PayloadError) as info:
            strictjson.check(parsed, MAX_DEPTH)
        assert str(info.value) == f"{found[0][0]}: {found[0][1]}"
    else:
        strictjson.check(parsed, MAX_DEPTH)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "payload is not JSON: Expecting value at byte 0 (line 1 column 1)"),
    ('{"名": }'.encode(), "payload is not JSON: Expecting value at byte 8 (line 1 column 7)"),
    (b'{"a": "\xe9"}', "payload is not UTF-8 text (byte 7: 0xE9 invalid continuation byte)"),
    (b"\xef\xbb\xbf{}", "payload starts with a UTF-8 byte-order mark EF BB BF at bytes 0-2"),
    ("{}".encode("utf-16-le"), "payload looks like UTF-16 or UTF-32 text (NUL at byte 1)"),
    (b"[" * 100_000, "payload is not JSON: nested too deeply to read"),
])
def test_what_cannot_be_read_says_why_and_where(raw: bytes, reason: str) -> None:
    with pytest.raises(strictjson.NotJson) as info:
        strictjson.loads(raw, MAX_DEPTH)
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(("text", "problem"), [
    ('{"a": {"b": 1, "b": 1}}', "a.b: appears more than once in one object; a key may appear once"),
    ('{"a": [1, 9007199254740992]}', "a[1]: 9007199254740992 is out of range"),
    ('{"a": -9007199254740991}', ""),
    ('{"a": 1e308, "b": -1e400}', "b: -1e400 is out of range"),
    ('{"a": "\\u0000"}', "a: contains NUL (U+0000) at character 0"),
    ('{"a": "\\ud83c\\udf5c \\ud83c"}', "a: contains a lone surrogate (U+D83C at character 2)"),
    ('{"a\\u0000": 1}', '["a\\u0000"]: the key contains NUL'),
    ('{"a": ' + "[" * 8 + "]" * 8 + "}", "a[0][0][0][0][0][0][0]: nested deeper than 8 levels"),
    ('{"a": ' + "[" * 7 + "]" * 7 + "}", ""),
])
def test_what_can_be_read_but_not_taken_is_named_by_its_path(text: str, problem: str) -> None:
    parsed = strictjson.loads(text.encode(), MAX_DEPTH)
    if not problem:
        strictjson.check(parsed, MAX_DEPTH)
        return
    with pytest.raises(PayloadError) as info:
        strictjson.check(parsed, MAX_DEPTH)
    assert str(info.value).startswith(problem)
