"""Prices in order/1: integer minor units, lines priced all or none, totals that add up; an order
without prices is taken as before. Checked on the wire (a terminal's order acked or rejected)."""

from __future__ import annotations

from typing import Any

import pytest

from edgehub.bus.payloads import check_prices
from edgehub.config import LimitsConfig
from edgehub.errors import PayloadError
from edgehub.hub import Hub
from tests.conftest import Terminal, order


def lines(*priced: tuple[int, int]) -> list[dict[str, Any]]:
    return [{"sku": f"S{i}", "qty": qty, "price_cents": price} for i, (qty, price) in enumerate(priced)]


@pytest.mark.parametrize(("doc", "total"), [
    ({"lines": [{"sku": "A", "qty": 1}]}, None),
    ({"lines": lines((2, 1800), (1, 1200))}, 4800),
    ({"lines": lines((2, 1800), (1, 1200)), "total_cents": 4800, "currency": "CNY"}, 4800),
    ({"lines": [{**lines((2, 1800))[0], "discount_cents": 600}], "discounts": [{"name": "会员", "amount_cents": 1000}],
      "total_cents": 2000}, 2000),
    ({"lines": [{"sku": "A", "qty": 1}], "total_cents": 5000}, 5000),  # the till knows; the lines do not say
    ({"lines": lines((1, 0))}, 0),
])
def test_prices_that_add_up(doc: dict[str, Any], total: int | None) -> None:
    assert check_prices(doc, LimitsConfig()) == total


@pytest.mark.parametrize(("doc", "error"), [
    ({"lines": [*lines((1, 100)), {"sku": "B", "qty": 1}]}, "lines[1].price_cents: missing: an order's lines are "
                                                             "priced all or none"),
    ({"lines": lines((1, 100)), "total_cents": 90}, "total_cents: is 90, but the lines come to 100 and the "
                                                    "discounts to 0: 100"),
    ({"lines": lines((1, 12.5))}, "lines[0].price_cents: must be an integer of minor units (fen, cents) from 0 to "
                                  "99999999, got 12.5"),
    ({"lines": lines((1, "12.50"))}, 'lines[0].price_cents: must be an integer of minor units (fen, cents) from 0 '
                                     'to 99999999, got "12.50"'),
    ({"lines": [{"sku": "A", "qty": 2, "price_cents": 100, "discount_cents": 300}]},
     "lines[0].discount_cents: is 300, more than the line's 200"),
    ({"lines": lines((1, 100)), "discounts": [{"name": "x", "amount_cents": 200}]},
     "discounts: take off 200, more than the lines' 100"),
    ({"lines": [{"sku": "A", "qty": 1}], "discounts": [{"name": "x", "amount_cents": 1}]},
     "discounts: need priced lines or a total_cents"),
    ({"lines": lines((1, 100)), "discounts": [{"amount_cents": 1}]}, "discounts[0].name: missing"),
    ({"lines": lines((1, 100)), "currency": "rmb"}, 'currency: must be an ISO 4217 code like CNY, got "rmb"'),
    ({"lines": lines((1, 100)), "total_cents": True}, "total_cents: must be an integer of minor units (fen, "
                                                      "cents) from 0 to 99999999, got true"),
])
def test_prices_that_do_not(doc: dict[str, Any], error: str) -> None:
    with pytest.raises(PayloadError) as exc:
        check_prices(doc, LimitsConfig())
    assert str(exc.value) == error


async def test_priced_orders_on_the_wire(hub: Hub) -> None:
    async with Terminal(hub.config, "pos-1") as pos:
        await pos.send(order("P-1", lines=lines((2, 1800), (1, 1200)), total_cents=4800, currency="CNY"))
        assert (await pos.ack())["status"] == "accepted"
        await pos.send(order("P-2", lines=lines((2, 1800)), total_cents=1))
        rejected = await pos.ack()
        assert rejected["status"] == "rejected"
        assert rejected["error"] == "total_cents: is 1, but the lines come to 3600 and the discounts to 0: 3600"
        await pos.send(order("P-3"))  # an old terminal: no prices at all
        assert (await pos.ack())["status"] == "accepted"
        # An amend that changes priced lines must bring a total that adds up too.
        await pos.send({"schema": "amend/1", "order_id": "P-1", "amend_id": "a1", "lines": lines((1, 1800)),
                        "total_cents": 4800}, hub.topics.amend("pos-1"))
        amend = await pos.ack()
        assert amend["status"] == "rejected" and amend["error"].startswith("total_cents: is 4800")
