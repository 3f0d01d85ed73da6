"""Build the bytes of a receipt or kitchen ticket for an ESC/POS printer.

A ticket is a small list of blocks (text lines with bold / double size / alignment, barcodes,
QR codes, paper feed, cuts, cash-drawer kicks) rendered by ``render()`` for one
``PrinterProfile`` (drivers/escpos_profile.py: paper width, code page, how the printer prints
Chinese). Rendering happens when a job is sent, for the printer that serves the role then, so
a job that moves from an 80 mm to a 58 mm printer is laid out again for 58 mm.

Each line goes out the best way the printer can print it: in its code page; in its Chinese
font (``cjk`` ``gb18030`` / ``gbk`` / ``big5``: the line's Chinese runs sent in that encoding
inside ``FS &`` Kanji mode); or, when any character of the line is in neither (Chinese on a
printer without a Chinese font, ``cjk="raster"``; an emoji in a delivery note on any printer:
no printer font has emoji), the whole line is drawn on the box with a CJK font and an emoji
font (Debian's fonts-wqy-microhei and fonts-symbola) and sent as a ``GS v 0`` raster image.
Kitchen tickets use ``Ticket(large_type=True)``: every line doubled in width and height,
readable from across the pass.
"""

from __future__ import annotations

import functools
import os
import textwrap
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.escpos_profile import PrinterProfile
from edgehub.errors import EdgehubError

__all__ = [
    "Barcode",
    "Block",
    "Cut",
    "DrawerKick",
    "Feed",
    "PrinterProfile",
    "QrCode",
    "Rule",
    "Text",
    "Ticket",
    "TicketRenderError",
    "check",
    "columns",
    "display_width",
    "find_cjk_font",
    "find_symbol_font",
    "render",
    "ticket_from_doc",
]

Align = Literal["left", "center", "right"]

ESC = b"\x1b"
GS = b"\x1d"
FS = b"\x1c"

# Where Debian packages put fonts with CJK glyphs, in the order we prefer them; the image and
# ``make system-deps`` install fonts-wqy-microhei (the first).
CJK_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
# Emoji and symbols no CJK font has (🌶, ☕, ✓ ...): Symbola (fonts-symbola) is monochrome,
# which is what a thermal printer prints; colour emoji fonts draw nothing in 1-bit.
SYMBOL_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
    "/usr/share/fonts/truetype/ancient-scripts/Symbola.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
_ZERO_WIDTH = {"\u200d", "\ufe0e", "\ufe0f", "\u200b"}  # ZWJ, variation selectors: nothing to draw

class TicketRenderError(EdgehubError):
    """A ticket cannot be turned into printer bytes (bad barcode data, no CJK font, ...)."""


@dataclass(frozen=True)
class Text:
    """One line of text (wrapped to the paper width when longer). With ``right`` (a price, a
    time), ``text`` goes left and ``right`` flush right on the same line, padded to the width
    of the printer it is rendered for; a ``text`` too long for both is shortened."""

    text: str
    bold: bool = False
    underline: bool = False
    double_width: bool = False
    double_height: bool = False
    align: Align = "left"
    right: str = ""


@dataclass(frozen=True)
class Barcode:
    """A 1-D barcode; ``data`` is printed below it as well (HRI) unless ``hri`` is False."""

    data: str
    symbology: Literal["CODE128", "EAN13"] = "CODE128"
    height: int = 80
    module_width: int = 2
    hri: bool = True
    align: Align = "center"


@dataclass(frozen=True)
class QrCode:
    data: str
    module_size: int = 6
    error_correction: Literal["L", "M", "Q", "H"] = "M"
    align: Align = "center"


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class Rule:
    """A separator line across the paper."""

    char: str = "-"


@dataclass(frozen=True)
class Cut:
    """Feed the ticket past the cutter, then cut (partial cut leaves a hinge the staff tear)."""

    partial: bool = True
    feed_lines: int = 4


@dataclass(frozen=True)
class DrawerKick:
    """Open the cash drawer on connector pin 2 (the usual one) or pin 5."""

    pin: Literal[2, 5] = 2


Block = Text | Barcode | QrCode | Feed | Rule | Cut | DrawerKick


@dataclass
class Ticket:
    """A ticket under construction; the builder methods return ``self`` so they chain."""

    blocks: list[Block] = field(default_factory=list)
    large_type: bool = False
    cut_at_end: bool = True

    def add(self, block: Block) -> Ticket:
        self.blocks.append(block)
        return self

    def text(
        self,
        text: str,
        *,
        bold: bool = False,
        underline: bool = False,
        double_width: bool = False,
        double_height: bool = False,
        align: Align = "left",
    ) -> Ticket:
        return self.add(Text(text, bold, underline, double_width, double_height, align))

    def title(self, text: str) -> Ticket:
        return self.add(Text(text, bold=True, double_width=True, double_height=True, align="center"))

    def rule(self, char: str = "-") -> Ticket:
        return self.add(Rule(char))

    def feed(self, lines: int = 1) -> Ticket:
        return self.add(Feed(lines))

    def barcode(self, data: str, symbology: Literal["CODE128", "EAN13"] = "CODE128") -> Ticket:
        return self.add(Barcode(data, symbology))

    def qr(self, data: str, module_size: int = 6) -> Ticket:
        return self.add(QrCode(data, module_size))

    def cut(self, partial: bool = True) -> Ticket:
        return self.add(Cut(partial))

    def kick_drawer(self, pin: Literal[2, 5] = 2) -> Ticket:
        return self.add(DrawerKick(pin))


def find_cjk_font(candidates: Iterable[str] = CJK_FONT_CANDIDATES) -> str | None:
    """The first installed font with CJK glyphs, or None."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def find_symbol_font(candidates: Iterable[str] = SYMBOL_FONT_CANDIDATES) -> str | None:
    """The first installed font for emoji and symbols, or None."""
    return find_cjk_font(candidates)


def _char_width(ch: str) -> int:
    if ch in _ZERO_WIDTH:
        return 0
    if unicodedata.east_asian_width(ch) in ("W", "F") or ord(ch) >= 0x1F000:
        return 2  # CJK, fullwidth, and emoji (drawn as wide as a Chinese character)
    return 1


def display_width(text: str) -> int:
    """Columns ``text`` takes on the printer: CJK (wide / fullwidth) characters and emoji take two."""
    return sum(_char_width(ch) for ch in text)


def columns(left: str, right: str, width: int) -> str:
    """``left`` and ``right`` on one line, e.g. an item and its price, padded to ``width``."""
    gap = width - display_width(left) - display_width(right)
    if gap < 1:
        left = _truncate(left, max(0, width - display_width(right) - 1))
        gap = width - display_width(left) - display_width(right)
    return left + " " * max(1, gap) + right


def _truncate(text: str, width: int) -> str:
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


def _wrap(text: str, width: int) -> list[str]:
    """Wrap on spaces; CJK text (no spaces) is cut by display width."""
    if display_width(text) <= width:
        return [text]
    lines: list[str] = []
    for piece in textwrap.wrap(text, width=max(1, width), break_long_words=False) or [""]:
        while display_width(piece) > width:
            head = _truncate(piece, width) or piece[0]
            lines.append(head)
            piece = piece[len(head) :]
        lines.append(piece)
    return lines


def ticket_from_doc(doc: Mapping[str, Any], ticket: Ticket | None = None) -> Ticket:
    """A ``print/1`` ticket (``{"lines": [...], "large_type": bool}``, validated by
    edgehub/bus/payloads.py) as blocks, appended to ``ticket`` when given."""
    ticket = ticket or Ticket()
    ticket.large_type = ticket.large_type or bool(doc.get("large_type", False))
    for line in doc["lines"]:
        if isinstance(line, str):
            ticket.add(Text(line))
        elif "text" in line:
            ticket.add(Text(line["text"] or "", line.get("bold", False), line.get("underline", False),
                            line.get("double_width", False), line.get("double_height", False),
                            line.get("align", "left"), line.get("right", "") or ""))
        elif "rule" in line:
            ticket.add(Rule(line["rule"]))
        elif "feed" in line:
            ticket.add(Feed(line["feed"]))
        elif "barcode" in line:
            ticket.add(Barcode(line["barcode"], line.get("symbology", "CODE128")))
        elif "qr" in line:
            ticket.add(QrCode(line["qr"]))
        elif line.get("cut"):
            ticket.add(Cut())
        elif line.get("drawer"):
            ticket.add(DrawerKick())
    return ticket


def check(block: Block) -> None:
    """Raise ``TicketRenderError`` when ``block`` can print on no printer at all: barcode data its
    symbology cannot hold, a QR code too big. What depends on the printer (fonts, code page) is
    not checked. ``render`` applies the same rules."""
    if isinstance(block, Barcode):
        _barcode_data(block)
    elif isinstance(block, QrCode):
        _qr_data(block)


def render(ticket: Ticket | Sequence[Block], profile: PrinterProfile | None = None) -> bytes:
    """The ESC/POS bytes for ``ticket`` on a printer described by ``profile``."""
    if not isinstance(ticket, Ticket):
        ticket = Ticket(list(ticket))
    return _Renderer(profile or PrinterProfile(), ticket.large_type).render(ticket)


class _Renderer:
    def __init__(self, profile: PrinterProfile, large_type: bool) -> None:
        if profile.codepage_number is None:
            raise TicketRenderError(
                f"code page {profile.codepage!r} is not one this printer has; use one of "
                f"{', '.join(sorted(profile.codepages))}"
            )
        self.p = profile
        self.large = large_type
        self.out = bytearray()

    def render(self, ticket: Ticket) -> bytes:
        # ESC @ resets styles; FS . because Chinese-model printers often start in Kanji mode,
        # which would swallow our code-page bytes as halves of Chinese characters.
        self.out += ESC + b"@" + FS + b"." + ESC + b"t" + bytes((self.p.codepage_number or 0,))
        for block in ticket.blocks:
            self.block(block)
        if ticket.cut_at_end and not (ticket.blocks and isinstance(ticket.blocks[-1], Cut)):
            self.block(Cut())
        return bytes(self.out)

    def block(self, block: Block) -> None:
        if isinstance(block, Text):
            self.text(block)
        elif isinstance(block, Rule):
            width = self._columns(self.large, self.large)
            self.text(Text(block.char * (width // max(1, display_width(block.char)))))
        elif isinstance(block, Feed):
            self.out += ESC + b"d" + bytes((max(0, min(255, block.lines)),))
        elif isinstance(block, Cut):
            # GS V 66/65 n: feed n lines to the cutter, then cut partially/fully.
            self.out += GS + b"V" + bytes((66 if block.partial else 65, max(0, min(255, block.feed_lines))))
        elif isinstance(block, DrawerKick):
            # ESC p m t1 t2: pulse 50 ms on, 500 ms off: long enough for every drawer solenoid.
            self.out += ESC + b"p" + bytes((0 if block.pin == 2 else 1, 25, 250))
        elif isinstance(block, Barcode):
            self.barcode(block)
        elif isinstance(block, QrCode):
            self.qr(block)
        else:  # pragma: no cover - the Block union is closed
            raise TicketRenderError(f"unknown ticket block {block!r}")

    # -- text --------------------------------------------------------------------------------
    def _columns(self, double_width: bool, large: bool) -> int:
        return self.p.columns // 2 if (double_width or large) else self.p.columns

    def text(self, t: Text) -> None:
        dw = t.double_width or self.large
        dh = t.double_height or self.large
        bold = t.bold or self.large
        width = self._columns(dw, False)
        lines = [columns(t.text, t.right, width)] if t.right else _wrap(t.text, width)
        self.out += ESC + b"a" + bytes((("left", "center", "right").index(t.align),))
        self.out += ESC + b"E" + (b"\x01" if bold else b"\x00")
        self.out += ESC + b"-" + (b"\x01" if t.underline else b"\x00")
        self.out += GS + b"!" + bytes((((1 if dw else 0) << 4) | (1 if dh else 0),))
        for line in lines:
            encoded = self.encode(line)
            if encoded is None:
                self.raster_line(line, t.align, bold, dw, dh)
            else:
                self.out += encoded + b"\n"
        self.out += ESC + b"E\x00" + ESC + b"-\x00" + GS + b"!\x00" + ESC + b"a\x00"

    def _in_codepage(self, ch: str) -> bool:
        try:
            ch.encode(self.p.codepage)
        except UnicodeEncodeError:
            return False
        return True

    def _kanji(self, ch: str) -> bytes | None:
        """``ch`` in the printer's Chinese font's encoding, or None when its font has no glyph."""
        cjk = self.p.cjk
        if cjk == "raster":
            return None
        try:
            data = ch.encode(cjk)
        except UnicodeEncodeError:
            return None
        if len(data) == 2:
            return data
        # GB18030's 4-byte sequences: printer fonts hold the mandatory BMP set (CJK Extension A),
        # never emoji or other planes.
        if cjk == "gb18030" and 0x3400 <= ord(ch) <= 0x4DBF:
            return data
        return None

    def encode(self, line: str) -> bytes | None:
        """Code-page bytes, with the runs the code page cannot hold sent in Kanji mode; None when
        some character is in neither (the line is then drawn)."""
        out = bytearray()
        kanji_run = False
        for ch in line:
            if ch in _ZERO_WIDTH:
                continue
            if self._in_codepage(ch):
                if kanji_run:
                    out += FS + b"."
                    kanji_run = False
                out += ch.encode(self.p.codepage)
                continue
            data = self._kanji(ch)
            if data is None:
                return None
            if not kanji_run:
                out += FS + b"&"
                kanji_run = True
            out += data
        if kanji_run:
            out += FS + b"."
        return bytes(out)

    def raster_line(self, line: str, align: Align, bold: bool, dw: bool, dh: bool) -> None:
        """Draw one line with the CJK font (and the symbol font for what it lacks) and send it
        as a ``GS v 0`` raster image."""
        try:
            from PIL import Image, ImageDraw
        except ImportError as exc:  # pragma: no cover - Pillow is a dependency
            raise TicketRenderError("printing Chinese as an image needs Pillow (pip install pillow)") from exc
        cjk_path = self.p.cjk_font or find_cjk_font()
        if cjk_path is None:
            raise TicketRenderError(
                "this printer cannot print some text of the line and no CJK font is installed to draw "
                "it: install fonts-wqy-microhei and fonts-symbola (Debian) or set the printer's cjk_font"
            )
        px = self.p.raster_font_px
        cjk = _font(cjk_path, px)
        symbol_path = find_symbol_font()
        # Laid out on the printer's own font-A grid (12 dots a column, 24 for a wide character),
        # so a drawn line lines up with the printed ones above and below it.
        cell = max(1, self.p.dots // max(1, self.p.columns))
        ascent, descent = cjk.getmetrics()
        height = max(px, ascent + descent) + 2
        width = max(1, min(self.p.dots, display_width(line) * cell + (1 if bold else 0)))
        img = Image.new("1", (width, height), 1)
        draw = ImageDraw.Draw(img)
        x = 0
        for ch in line:
            span = _char_width(ch) * cell
            if not span:
                continue
            font = cjk
            if symbol_path is not None and ord(ch) not in _cmap(cjk_path) and ord(ch) in _cmap(symbol_path):
                font = _font(symbol_path, px)
            left = x + max(0.0, (span - font.getlength(ch)) / 2)
            for offset in (0, 1) if bold else (0,):  # faux bold: drawn again one dot to the right
                draw.text((left + offset, ascent + 1), ch, font=font, fill=0, anchor="ls")
            x += span
        if dw or dh:
            img = img.resize((min(self.p.dots, img.width * (2 if dw else 1)), img.height * (2 if dh else 1)))
        # Align by placing the drawing on a full-width canvas: ESC a does not move raster images
        # on every model.
        canvas = Image.new("1", (self.p.dots, img.height), 1)
        x = {"left": 0, "center": (self.p.dots - img.width) // 2, "right": self.p.dots - img.width}[align]
        canvas.paste(img, (x, 0))
        self.image(canvas)

    def image(self, img: object) -> None:
        """Send a 1-bit Pillow image as ``GS v 0`` bands (black = 1 bits, MSB left)."""
        from PIL import Image, ImageOps

        assert isinstance(img, Image.Image)
        inverted = ImageOps.invert(img.convert("L")).convert("1")
        width_bytes = (inverted.width + 7) // 8
        data = inverted.tobytes()  # mode "1" rows are padded to whole bytes, MSB first
        # Bands of at most 256 rows: some printers' receive buffer cannot take a taller image.
        for top in range(0, inverted.height, 256):
            rows = min(256, inverted.height - top)
            band = data[top * width_bytes : (top + rows) * width_bytes]
            self.out += GS + b"v0\x00" + width_bytes.to_bytes(2, "little") + rows.to_bytes(2, "little") + band

    # -- codes -------------------------------------------------------------------------------
    def barcode(self, b: Barcode) -> None:
        payload = _barcode_data(b)
        self.out += ESC + b"a" + bytes((("left", "center", "right").index(b.align),))
        self.out += GS + b"h" + bytes((max(1, min(255, b.height)),))
        self.out += GS + b"w" + bytes((max(2, min(6, b.module_width)),))
        self.out += GS + b"H" + (b"\x02" if b.hri else b"\x00")
        self.out += GS + b"k" + payload + b"\n" + ESC + b"a\x00"

    def qr(self, q: QrCode) -> None:
        data = _qr_data(q)
        store = len(data) + 3
        ecc = {"L": 48, "M": 49, "Q": 50, "H": 51}[q.error_correction]
        # The symbol must fit the paper: a 58 mm printer has 384 dots, so a long URL at the
        # module size an 80 mm ticket uses would be cut off; shrink the modules to fit.
        size = max(1, min(16, q.module_size))
        modules = _qr_modules(data, q.error_correction)
        while size > 1 and modules * size > self.p.dots:
            size -= 1
        self.out += ESC + b"a" + bytes((("left", "center", "right").index(q.align),))
        self.out += GS + b"(k\x04\x00\x31\x41\x32\x00"  # model 2
        self.out += GS + b"(k\x03\x00\x31\x43" + bytes((size,))
        self.out += GS + b"(k\x03\x00\x31\x45" + bytes((ecc,))
        self.out += GS + b"(k" + store.to_bytes(2, "little") + b"\x31\x50\x30" + data
        self.out += GS + b"(k\x03\x00\x31\x51\x30" + b"\n" + ESC + b"a\x00"


@functools.cache
def _font(path: str, px: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, px)
    except OSError as exc:
        raise TicketRenderError(f"cannot load font {path}: {exc}") from exc


@functools.cache
def _cmap(path: str) -> frozenset[int]:
    """The code points ``path`` has glyphs for (its first face, for a .ttc collection)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or ())
    except Exception as exc:  # fontTools raises many kinds for a broken file
        raise TicketRenderError(f"cannot read the glyph table of font {path}: {exc}") from exc


def _qr_modules(data: bytes, ecc: str) -> int:
    """Modules across the QR symbol the printer makes for ``data`` (the smallest version that
    holds it in byte mode, as printers choose)."""
    try:
        import qrcode
        import qrcode.constants as levels
    except ImportError:  # qrcode comes with python-escpos; without it assume the largest symbol
        return 177
    level = {"L": levels.ERROR_CORRECT_L, "M": levels.ERROR_CORRECT_M, "Q": levels.ERROR_CORRECT_Q,
             "H": levels.ERROR_CORRECT_H}[ecc]
    code = qrcode.QRCode(error_correction=level, border=0)
    code.add_data(data, optimize=0)
    code.make(fit=True)
    return 17 + 4 * int(code.version)


def _barcode_data(b: Barcode) -> bytes:
    """What follows ``GS k``: the symbology, the length and the data."""
    if b.symbology == "EAN13":
        return bytes((67, 13)) + _ean13(b.data).encode("ascii")
    payload = _code128(b.data)
    return bytes((73, len(payload))) + payload


def _qr_data(q: QrCode) -> bytes:
    data = q.data.encode("utf-8")
    if len(data) > 7089:
        raise TicketRenderError(f"QR code data is {len(data)} bytes; a QR code holds at most 7089")
    return data


def _ean13(data: str) -> str:
    digits = data.strip()
    if not digits.isdigit() or len(digits) not in (12, 13):
        raise TicketRenderError(f"EAN-13 barcode needs 12 or 13 digits, got {data!r}")
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits[:12])) % 10) % 10
    if len(digits) == 13 and int(digits[12]) != check:
        raise TicketRenderError(f"EAN-13 barcode {data!r} has check digit {digits[12]}, expected {check}")
    return digits[:12] + str(check)


def _code128(data: str) -> bytes:
    """GS k 73 data: code set C (digit pairs, half the width) when all digits, else code set B."""
    if not data:
        raise TicketRenderError("CODE128 barcode data is empty")
    if any(not (32 <= ord(ch) < 127) for ch in data):
        raise TicketRenderError(f"CODE128 barcode {data!r} has characters outside printable ASCII")
    if data.isdigit() and len(data) % 2 == 0 and len(data) >= 4:
        payload = b"{C" + bytes(int(data[i : i + 2]) for i in range(0, len(data), 2))
    else:
        payload = b"{B" + data.replace("{", "{{").encode("ascii")
    if len(payload) > 255:
        raise TicketRenderError(f"CODE128 barcode data is too long ({len(data)} characters)")
    return payload
