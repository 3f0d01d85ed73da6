"""JSON as the store's terminals must send it (RFC 8259): UTF-8 text with one meaning.

The standard library's ``json.loads`` takes more than that, and each extra was a way for one
order to poison others or to reach the cloud changed: UTF-16 and byte-order marks (it guesses
the encoding), UTF-8 that encodes lone surrogates, ``\\ud800`` escapes (strings no encoder
writes back out, so the whole batch failed when it was journaled), ``NaN`` and ``Infinity``
(not JSON), numbers beyond a double (``1e400`` becomes infinity), integers of more than 4,300
digits (a plain ValueError), and duplicate keys (the last one silently wins).

``loads`` refuses what makes a document unreadable (``NotJson``, with the byte offset into the
payload as sent). What leaves a document readable but not acceptable is marked, and ``check``
finds it with the path of the field (``lines[0].note: contains NUL …``), so an order whose
``order_id`` is usable is answered ``rejected`` naming the field rather than dead-lettered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from edgehub.errors import PayloadError

# Integers beyond this lose digits in a double, which is what JavaScript and most JSON
# libraries read numbers into (RFC 8259 §6: the interoperable range).
MAX_SAFE_INTEGER = 2**53 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")  # NUL's and surrogates' escapes
# 16 digits in a row, found as 16 zeros once every digit is one (a regex took ten times longer).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_SIXTEEN_DIGITS = b"0" * 16
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # shown bare in a path (fullmatch)
# Byte-order marks, longest first (UTF-32 LE starts like UTF-16 LE).
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xef\xbb\xbf", "UTF-8"),
         (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


class NotJson(Exception):
    """The payload cannot be read as one JSON text; ``reason`` says why and where."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadNumber:
    """A number the document holds but JSON consumers cannot: found by ``check``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"BadNumber({self.text!r})"


class _Marked(dict[str, Any]):
    """A document (its top object) that may hold something ``check`` must find. Only such a
    document is walked: for a clean order the walk cost twice its parse."""


class _Duplicated(_Marked):
    """An object in which a key appeared more than once (the last value is kept here);
    ``differing``: the keys among them whose values were not all the same."""

    duplicates: tuple[str, ...] = ()
    differing: frozenset[str] = frozenset()


def _duplicated(pairs: list[tuple[str, Any]], doc: dict[str, Any]) -> _Duplicated:
    marked = _Duplicated(doc)
    first: dict[str, Any] = {}
    duplicates: dict[str, None] = {}
    differing = set()
    for key, value in pairs:
        if key not in first:
            first[key] = value
            continue
        duplicates[key] = None
        if value != first[key]:
            differing.add(key)
    marked.duplicates, marked.differing = tuple(duplicates), frozenset(differing)
    return marked


def _float(text: str) -> float | BadNumber:
    value = float(text)
    return value if math.isfinite(value) else BadNumber(text)


def _constant(text: str) -> BadNumber:
    return BadNumber(text)  # NaN, Infinity, -Infinity: JavaScript's, not JSON's


def encoding_problem(raw: bytes) -> str:
    """Why ``raw`` is not UTF-8 text ("" when it is), with the byte where it shows."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            mark = f"byte-order mark {bom.hex(' ').upper()} at bytes 0-{len(bom) - 1}"
            if name == "UTF-8":
                return f"payload starts with a UTF-8 {mark}: send UTF-8 without one (RFC 8259 §8.1)"
            return f"payload is {name} text ({mark}): send JSON as UTF-8 (RFC 8259 §8.1)"
    # UTF-16 and UTF-32 without a mark: JSON starts with an ASCII character, so one of the first
    # two bytes is NUL (RFC 4627 §3).
    if len(raw) >= 2 and (raw[0] == 0) != (raw[1] == 0):
        where = 0 if raw[0] == 0 else 1
        return f"payload looks like UTF-16 or UTF-32 text (NUL at byte {where}): send JSON as UTF-8"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"payload is not UTF-8 text (byte {exc.start}: 0x{raw[exc.start]:02X} {exc.reason})"
    return ""


def loads(raw: bytes, max_depth: int) -> Any:
    """Parse a payload as strict JSON, or raise ``NotJson`` with the reason and byte offset.

    Objects with a duplicate key, numbers out of range and strings with NUL or lone surrogates
    are kept and marked; ``check`` reports them with their path, and nesting deeper than
    ``max_depth``. A top object that may hold any of them comes back as a ``_Marked`` dict."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotJson(encoding_problem(raw)) from None
    if text.startswith("\ufeff") or (len(raw) >= 2 and (raw[0] == 0) != (raw[1] == 0)):
        raise NotJson(encoding_problem(raw))
    found: list[object] = []  # what the walk is to find: a duplicate key, a number out of range

    def obj(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(pairs)
        if len(doc) == len(pairs):
            return doc
        found.append(pairs)
        return _duplicated(pairs, doc)

    def number(text: str) -> float | BadNumber:  # floats, NaN and Infinity: rare in an order
        value = _float(text) if text[-1].isdigit() else BadNumber(text)
        if isinstance(value, BadNumber):
            found.append(value)
        return value

    def integer(text: str) -> int | BadNumber:  # only once an integer was too long for Python
        if len(text.lstrip("-")) <= 16 and -MAX_SAFE_INTEGER <= (value := int(text)) <= MAX_SAFE_INTEGER:
            return value
        found.append(text)
        return BadNumber(text)

    try:
        try:
            doc = json.loads(text, object_pairs_hook=obj, parse_float=number, parse_constant=number)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            # An integer Python will not read (more than 4,300 digits): read the integers here,
            # each one beyond 2**53 as a BadNumber, which the check names.
            doc = json.loads(text, object_pairs_hook=obj, parse_float=number, parse_constant=number,
                             parse_int=integer)
    except json.JSONDecodeError as exc:
        offset = len(text[:exc.pos].encode("utf-8"))
        raise NotJson(f"payload is not JSON: {exc.msg} at byte {offset} (line {exc.lineno} column {exc.colno})") \
            from None
    except RecursionError:
        raise NotJson("payload is not JSON: nested too deeply to read") from None
    # What the walk may find shows in the text: NUL and lone surrogates only as escapes (raw
    # control characters are not JSON, raw surrogates not UTF-8), integers beyond 2**53 as 16
    # digits or more, nesting deeper than max_depth as more brackets than that.
    if type(doc) is dict and (found or ("\\u" in text and _ESCAPES.search(text))
                              or _SIXTEEN_DIGITS in raw.translate(_DIGITS_TO_ZERO)
                              or text.count("{") + text.count("[") > max_depth):
        doc = _Marked(doc)
    return doc


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    # Shown as a JSON string, ASCII only: a key with a lone surrogate must not spoil the answer.
    return f"{path}[{json.dumps(key)}]"


def _text_problem(text: str) -> str:
    if not text.isascii() and (found := _SURROGATE.search(text)) is not None:
        return (f"contains a lone surrogate (U+{ord(found.group()):04X} at character {found.start()}), "
                "which is not a Unicode character")
    index = text.find("\x00")
    return f"contains NUL (U+0000) at character {index}" if index >= 0 else ""


def problems(doc: Any, max_depth: int) -> Iterator[tuple[str, str]]:
    """``(path, what is wrong)`` for every mark ``loads`` left in ``doc``, in document order:
    a duplicate key, a number out of range, a string or key with NUL or a lone surrogate, and
    nesting deeper than ``max_depth`` objects and arrays."""
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            if problem := _text_problem(value):
                yield path or "payload", problem
        elif isinstance(value, dict):
            if depth >= max_depth:
                yield path or "payload", f"nested deeper than {max_depth} levels of objects and arrays"
                continue
            for key in getattr(value, "duplicates", ()):
                yield _join(path, key), "appears more than once in one object; a key may appear once"
            children = []
            for key, child in value.items():
                where = _join(path, key)
                if problem := _text_problem(key):
                    yield where, f"the key {problem}"
                children.append((where, child, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            if depth >= max_depth:
                yield path or "payload", f"nested deeper than {max_depth} levels of objects and arrays"
                continue
            stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in reversed(list(enumerate(value))))
        elif isinstance(value, BadNumber):
            yield path or "payload", _number_problem(value.text)
        elif type(value) is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            yield path or "payload", _number_problem(str(value))


def _number_problem(text: str) -> str:
    if text in ("NaN", "Infinity", "-Infinity"):
        return f"{text} is not a JSON number"
    shown = text if len(text) <= 24 else f"{text[:12]}…{text[-6:]} ({len(text)} characters)"
    return (f"{shown} is out of range: numbers must be finite, and integers within ±{MAX_SAFE_INTEGER} "
            "(RFC 8259 §6)")


def check(doc: Any, max_depth: int) -> None:
    """Raise ``PayloadError`` for the first of ``problems`` of a document ``loads`` read with
    the same ``max_depth``: one it did not mark (a plain dict) holds none."""
    if type(doc) is dict:
        return
    for path, problem in problems(doc, max_depth):
        raise PayloadError(path, problem)
