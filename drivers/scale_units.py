"""The units a store's scale may show, and the one way a shown number becomes grams.

A scale reports the number on its display in the unit it is set to: kilograms, grams, pounds
or 斤 (jin, the market unit of mainland China: 500 g exactly). Every driver turns that into
integer grams here, rounding half up (the same rule a price-computing scale applies to its
display), and keeps the unit and the number as shown, so a till can print "2.20 lb" next to the
price it computed from the grams.

Where the frame carries the unit (CAS and the scales that copy its ECR frame) the token is read
with :func:`unit_from_token`; the tokens are those of the CAS-style ECR frame as the Gram ZFOC
manual documents them (``KG``, ``G``, ``LB``, ``SJ`` for 市斤). The 8217 frame carries no unit:
its unit is part of the device's profile (``[[device]] unit``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Literal, get_args

from edgehub.errors import ProtocolError

__all__ = ["GRAMS_PER_UNIT", "WEIGHT_UNITS", "WeightUnit", "to_grams", "unit_from_token"]

WeightUnit = Literal["kg", "g", "lb", "jin"]
WEIGHT_UNITS: tuple[WeightUnit, ...] = get_args(WeightUnit)

# lb: the international avoirdupois pound (1959), exactly 0.45359237 kg.
# jin: 市斤, fixed at 500 g by the PRC's 1959 order on units of measurement.
GRAMS_PER_UNIT: dict[WeightUnit, Decimal] = {
    "kg": Decimal(1000),
    "g": Decimal(1),
    "lb": Decimal("453.59237"),
    "jin": Decimal(500),
}

# Unit tokens of the CAS-style ECR frame (case as the scale sends it does not matter).
_TOKENS: dict[bytes, WeightUnit] = {b"KG": "kg", b"G": "g", b"LB": "lb", b"SJ": "jin"}
# Tokens the same frame may carry for units we do not sell by: said by name in the error.
_UNSUPPORTED = {b"TJ": "Taiwan catty (台斤)", b"TL": "Taiwan tael (台兩)", b"OZ": "ounce"}


def unit_from_token(token: bytes) -> WeightUnit:
    """The unit a frame's unit field names (``b"kg"``, ``b" g"``, ``b"SJ"`` …)."""
    key = token.strip().upper()
    unit = _TOKENS.get(key)
    if unit is not None:
        return unit
    if key in _UNSUPPORTED:
        raise ProtocolError(f"the scale weighs in {_UNSUPPORTED[key]}: set it to kg, g, lb or 斤 (jin)")
    raise ProtocolError(f"unit field {token!r} is not kg, g, lb or SJ (斤)")


def to_grams(text: bytes, unit: WeightUnit) -> int:
    """``b"2.20"`` in ``lb`` → 998. ProtocolError on anything that is not a plain decimal."""
    try:
        value = Decimal(text.decode("ascii").strip())
    except (UnicodeDecodeError, InvalidOperation) as exc:
        raise ProtocolError(f"weight field {text!r} is not a number") from exc
    if not value.is_finite():
        raise ProtocolError(f"weight field {text!r} is not a number")
    return int((value * GRAMS_PER_UNIT[unit]).quantize(Decimal(1), rounding=ROUND_HALF_UP))
