"""The day's close as a receipt in Chinese: a ``print/1`` ticket for the receipt printer's queue."""

from __future__ import annotations

import datetime as dt
from typing import Any

TENDERS_ZH = {"cash": "现金", "qr": "扫码", "card": "银行卡"}
WIDTH = 32  # font-A columns on 58 mm paper; a Chinese character takes two


def money(cents: int, currency: str = "CNY") -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    symbol = "¥" if currency == "CNY" else f"{currency} "
    return f"{sign}{symbol}{cents // 100:,}.{cents % 100:02d}"


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)


def row(left: str, right: str) -> str:
    """``left`` and ``right`` on one line of WIDTH columns (CJK characters are two wide)."""
    gap = max(1, WIDTH - _width(left) - _width(right))
    return f"{left}{' ' * gap}{right}"


def ticket(report: dict[str, Any], store_name: str, printed_at: float, tz: dt.tzinfo | None) -> dict[str, Any]:
    cur = report["currency"]
    takings, payments = report["takings"], report["payments"]

    def when(at: float) -> str:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        return (moment.astimezone(tz) if tz is not None else moment.astimezone()).strftime("%Y-%m-%d %H:%M")

    lines: list[Any] = [
        {"text": "日结报表", "bold": True, "double_height": True, "align": "center"},
        {"text": store_name or report["store_id"], "align": "center"},
        {"rule": "-"},
        f"营业日 {report['day']}",
        f"自 {when(report['starts_at'])}",
        f"至 {when(report['ends_at'])}",
        f"{'结账' if report.get('closed_at') else '截至'} {when(report.get('closed_at') or printed_at)}",
        {"rule": "-"},
        {"text": row("收款合计", money(takings["total_cents"], cur)), "bold": True},
        row("收款笔数", f"{takings['count']}笔"),
    ]
    for entry in takings["by_tender"]:
        name = TENDERS_ZH.get(entry["tender"], entry["tender"])
        lines.append(row(f"  {name} {entry['count']}笔", money(entry["amount_cents"], entry["currency"])))
    lines.append("按设备/通道")
    for entry in takings["by_device"]:
        lines.append(row(f"  {entry['device']} {entry['count']}笔", money(entry["amount_cents"], entry["currency"])))
    cash = report["cash"]
    lines += [
        {"rule": "-"},
        row("现金收入", money(cash["received_cents"], cur)),
        row("找零", money(cash["change_cents"], cur)),
        row("钱箱应有", money(cash["net_cents"], cur)),
        {"rule": "-"},
        row("未成功支付", f"{payments['declined'] + payments['aborted'] + payments['not_found']}笔"),
        row("结果未知(待确认)", f"{len(payments['unknown'])}笔"),
    ]
    for entry in payments["unknown"]:
        lines.append(row(f"  {entry['payment_id']}", money(entry["amount_cents"], entry["currency"])))
    lines.append(row("人工确认", f"{len(payments['settled_by_operator'])}笔"))
    for entry in payments["settled_by_operator"]:
        amount = money(entry["amount_cents"], entry["currency"])
        lines.append(row(f"  {entry['payment_id']} {entry['decision']}", amount))
    orders = report["orders"]
    lines += [
        {"rule": "-"},
        row("订单", f"{orders['count']}单"),
        row("就餐人数", f"{orders['covers']}人"),
        row("订单金额", money(orders["value_cents"], cur)),
        row("拆单结账", f"{report['sales']['split']}单"),
        row("退单", f"{report['voids']['orders']}单"),
        row("作废菜品", f"{report['voids']['tickets']}份"),
        row("改单", f"{report['amends']}次"),
        row("重打", f"{report['reprints']}次"),
        {"rule": "-"},
        "每小时订单 / 人数",
    ]
    for slot in report["hours"]:
        if slot["orders"] or slot["covers"]:
            lines.append(row(f"  {slot['hour']:02d}时", f"{slot['orders']}单 {slot['covers']}人"))
    lines += [{"feed": 2}, {"cut": True}]
    return {"lines": lines}
