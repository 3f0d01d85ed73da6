"""Ticket rendering: the bytes are checked by feeding them to the simulated printer and looking at
what comes out, as staff would."""

from __future__ import annotations

import pytest

from drivers.escpos_render import (
    Barcode,
    PrinterProfile,
    QrCode,
    Text,
    Ticket,
    TicketRenderError,
    check,
    columns,
    display_width,
    find_cjk_font,
    render,
)
from edgehub.sim.printer import PrintedTicket, PrinterCore

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def print_out(data: bytes) -> list[PrintedTicket]:
    core = PrinterCore()
    session = core.session()
    session.feed(data)
    session.close()
    return core.printed


def test_receipt_prints_with_styles_codes_and_cut() -> None:
    ticket = (
        Ticket()
        .title("Burger Bar")
        .text("Order 1042", align="center")
        .rule()
        .text(columns("2x Cheeseburger", "17.00", 48))
        .text(columns("Total", "17.00", 48), bold=True, underline=True)
        .barcode("ORDER-1042")
        .barcode("400638133393", "EAN13")
        .qr("https://example.invalid/r/1042")
        .kick_drawer()
    )
    (out,) = print_out(render(ticket))
    lines = [line for line in out.lines if line.text.strip()]
    assert [line.text for line in lines[:2]] == ["Burger Bar", "Order 1042"]
    assert lines[0].bold and lines[0].double_width and lines[0].double_height and lines[0].align == "center"
    assert lines[1].align == "center" and not lines[1].bold
    assert lines[2].text == "-" * 48
    assert lines[3].text == "2x Cheeseburger" + " " * 28 + "17.00"
    assert lines[4].bold and lines[4].underline
    assert out.barcodes == [("CODE128", "ORDER-1042"), ("EAN13", "4006381333931")]
    assert out.qr_codes == ["https://example.invalid/r/1042"]
    assert out.drawer_kicks == 1 and out.cut


def test_numeric_code128_uses_code_set_c() -> None:
    data = render(Ticket().barcode("12345678"))
    assert b"\x1dkI\x06{C\x0c\x22\x38\x4e" in data
    assert print_out(data)[0].barcodes == [("CODE128", "12345678")]


def test_bad_barcodes_are_refused_with_a_reason() -> None:
    with pytest.raises(TicketRenderError, match="check digit"):
        render(Ticket().barcode("4006381333932", "EAN13"))
    with pytest.raises(TicketRenderError, match="12 or 13 digits"):
        render([Barcode("12AB", "EAN13")])
    with pytest.raises(TicketRenderError, match="printable ASCII"):
        render(Ticket().barcode("café"))


@pytest.mark.parametrize(
    "block",
    [Barcode("123", "EAN13"), Barcode("4006381333932", "EAN13"), Barcode("café"), Barcode("A" * 300),
     QrCode("x" * 7090)],
)
def test_check_refuses_what_render_refuses(block: Barcode | QrCode) -> None:
    """Intake (``print/1``) checks blocks with ``check``: it must refuse exactly what printing would."""
    with pytest.raises(TicketRenderError) as at_check:
        check(block)
    with pytest.raises(TicketRenderError) as at_render:
        render([block])
    assert str(at_check.value) == str(at_render.value)


def test_check_passes_good_codes() -> None:
    for block in (Barcode("400638133393", "EAN13"), Barcode("ORDER-1042"), QrCode("https://example.invalid/r/1")):
        check(block)


def test_chinese_item_names_print_in_gb18030_kanji_mode() -> None:
    data = render(Ticket().text("2x 宫保鸡丁 Kung Pao").text("1x 麻婆豆腐"))
    assert b"\x1c&" + "宫保鸡丁".encode("gb18030") + b"\x1c." in data
    (out,) = print_out(data)
    assert out.text.splitlines() == ["2x 宫保鸡丁 Kung Pao", "1x 麻婆豆腐"]


def test_western_text_uses_the_code_page() -> None:
    data = render(Ticket().text("Crème brûlée 5€"), PrinterProfile(codepage="cp858"))
    assert b"\x1bt\x13" in data
    assert print_out(data)[0].text == "Crème brûlée 5€"


def test_text_outside_the_code_page_prints_as_an_image_on_printers_without_cjk_font() -> None:
    profile = PrinterProfile(cjk="raster", cjk_font=DEJAVU)
    (out,) = print_out(render(Ticket().text("Борщ x2", align="center").text("Fries x1"), profile))
    assert [line.text for line in out.lines if line.text.strip()] == ["Fries x1"]
    (image,) = out.images
    assert image.width == 576 and image.ink() > 100
    # Centered: the ink is in the middle of the paper, none at the edges.
    assert all(row[0] == 0 and row[-1] == 0 for row in image.rows)


def test_chinese_as_an_image_needs_a_cjk_font() -> None:
    profile = PrinterProfile(cjk="raster")
    font = find_cjk_font()
    if font is None:
        with pytest.raises(TicketRenderError, match="fonts-wqy-microhei"):
            render(Ticket().text("宫保鸡丁"), profile)
    else:
        (out,) = print_out(render(Ticket().text("宫保鸡丁"), profile))
        assert out.images and out.images[0].ink() > 100


def test_large_type_kitchen_ticket() -> None:
    ticket = Ticket(large_type=True).text("TABLE 12").text("2x Burger no onions extra pickles please")
    (out,) = print_out(render(ticket, PrinterProfile.paper_58mm()))
    assert all(line.double_height and line.double_width and line.bold for line in out.lines if line.text)
    texts = [line.text for line in out.lines if line.text]
    assert texts[0] == "TABLE 12"
    assert all(display_width(t) <= 16 for t in texts)  # 32 columns halved
    assert " ".join(texts[1:]) == "2x Burger no onions extra pickles please"


def test_long_chinese_lines_wrap_by_display_width() -> None:
    ticket = Ticket().add(Text("宫保鸡丁" * 10))
    (out,) = print_out(render(ticket, PrinterProfile.paper_58mm()))
    texts = [line.text for line in out.lines if line.text]
    assert "".join(texts) == "宫保鸡丁" * 10
    assert all(display_width(t) <= 32 for t in texts)


def test_columns_pads_by_display_width() -> None:
    assert columns("宫保鸡丁", "9.50", 20) == "宫保鸡丁" + " " * 8 + "9.50"
    assert display_width(columns("a very long item name indeed", "9.50", 20)) == 20


def test_unknown_code_page_is_refused() -> None:
    with pytest.raises(TicketRenderError, match="code page"):
        render(Ticket().text("x"), PrinterProfile(codepage="cp999"))


def test_a_simulated_printer_remembers_only_the_newest_tickets() -> None:
    """`make run` and `edgehub sim store` run for days: the paper log is bounded (PAPER_KEPT)."""
    from edgehub.sim.printer import PAPER_KEPT

    core = PrinterCore()
    session = core.session()
    for n in range(PAPER_KEPT + 5):
        session.feed(f"slip {n}\n".encode() + b"\x1dV\x00")  # text, then a full cut
    session.close()
    printed = core.printed
    assert len(printed) == PAPER_KEPT
    assert "slip 5" in printed[0].lines[0].text and f"slip {PAPER_KEPT + 4}" in printed[-1].lines[0].text
