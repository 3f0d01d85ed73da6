"""Build the bytes of a receipt or kitchen ticket for an ESC/POS printer.

A ticket is a small list of blocks (text lines with bold / double size / alignment, barcodes,
QR codes, paper feed, cuts, cash-drawer kicks) rendered by ``render()`` for one
``PrinterProfile`` (paper width, code page, how the printer prints Chinese).

Chinese (and any other text the printer's code page cannot hold) prints one of two ways:
``cjk="gb18030"`` for printers with a Chinese font (text sent in GB18030 inside ``FS &`` Kanji
mode), or ``cjk="raster"`` for printers without one: the line is drawn with a CJK font through
Pillow and sent as a ``GS v 0`` raster image. Kitchen tickets use ``Ticket(large_type=True)``:
every line doubled in width and height, readable from across the pass.
"""

from __future__ import annotations

import os
import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

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
    "render",
]

Align = Literal["left", "center", "right"]
CjkMode = Literal["gb18030", "raster"]

ESC = b"\x1b"
GS = b"\x1d"
FS = b"\x1c"

# Where Debian packages put fonts that have CJK glyphs (fonts-wqy-zenhei, fonts-wqy-microhei,
# fonts-noto-cjk, fonts-droid-fallback, fonts-arphic-uming), in the order we prefer them.
CJK_FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)

# ESC t n for the code pages we render Western text in.
_CODEPAGE_NUMBER: dict[str, int] = {"cp437": 0, "cp850": 2, "cp1252": 16, "cp866": 17, "cp858": 19}


class TicketRenderError(EdgehubError):
    """A ticket cannot be turned into printer bytes (bad barcode data, no CJK font, ...)."""


@dataclass(frozen=True)
class Text:
    """One line of text (wrapped to the paper width when longer)."""

    text: str
    bold: bool = False
    underline: bool = False
    double_width: bool = False
    double_height: bool = False
    align: Align = "left"


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


@dataclass(frozen=True)
class PrinterProfile:
    """What the renderer must know about one printer model.

    ``columns`` counts font-A characters per line (48 on 80 mm paper, 32 on 58 mm) and
    ``dots`` the printable width in dots (576 / 384). ``cjk`` says how text outside
    ``codepage`` prints; ``cjk_font`` is the font for the raster way (found on the system when
    not given).
    """

    columns: int = 48
    dots: int = 576
    codepage: str = "cp1252"
    cjk: CjkMode = "gb18030"
    cjk_font: str | None = None
    raster_font_px: int = 24  # font-A glyphs are 12x24 dots; CJK ones 24x24

    @classmethod
    def paper_58mm(cls, **overrides: object) -> PrinterProfile:
        return cls(columns=32, dots=384, **overrides)  # type: ignore[arg-type]  # dataclass kwargs


def find_cjk_font(candidates: Iterable[str] = CJK_FONT_CANDIDATES) -> str | None:
    """The first installed font with CJK glyphs, or None."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def display_width(text: str) -> int:
    """Columns ``text`` takes on the printer: CJK (wide / fullwidth) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


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
        w = display_width(ch)
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
        if profile.codepage not in _CODEPAGE_NUMBER:
            raise TicketRenderError(
                f"code page {profile.codepage!r} is not supported; use one of {sorted(_CODEPAGE_NUMBER)}"
            )
        self.p = profile
        self.large = large_type
        self.out = bytearray()

    def render(self, ticket: Ticket) -> bytes:
        # ESC @ resets styles; FS . because Chinese-model printers often start in Kanji mode,
        # which would swallow our code-page bytes as halves of Chinese characters.
        self.out += ESC + b"@" + FS + b"." + ESC + b"t" + bytes((_CODEPAGE_NUMBER[self.p.codepage],))
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
            self.text(Text(block.char * (width // max(1, len(block.char)))))
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

    def _encodable(self, text: str) -> bool:
        try:
            text.encode(self.p.codepage)
        except UnicodeEncodeError:
            return False
        return True

    def text(self, t: Text) -> None:
        dw = t.double_width or self.large
        dh = t.double_height or self.large
        bold = t.bold or self.large
        lines = _wrap(t.text, self._columns(dw, False))
        raster = self.p.cjk == "raster" and not self._encodable(t.text)
        self.out += ESC + b"a" + bytes((("left", "center", "right").index(t.align),))
        if raster:
            for line in lines:
                self.raster_line(line, t.align, bold, dw, dh)
            self.out += ESC + b"a\x00"
            return
        self.out += ESC + b"E" + (b"\x01" if bold else b"\x00")
        self.out += ESC + b"-" + (b"\x01" if t.underline else b"\x00")
        self.out += GS + b"!" + bytes((((1 if dw else 0) << 4) | (1 if dh else 0),))
        for line in lines:
            self.out += self.encode(line) + b"\n"
        self.out += ESC + b"E\x00" + ESC + b"-\x00" + GS + b"!\x00" + ESC + b"a\x00"

    def encode(self, line: str) -> bytes:
        """Code-page bytes, with runs the code page cannot hold sent as GB18030 in Kanji mode."""
        out = bytearray()
        run: list[str] = []
        run_cjk = False

        def flush() -> None:
            if not run:
                return
            s = "".join(run)
            if run_cjk:
                out.extend(FS + b"&" + s.encode("gb18030", "replace") + FS + b".")
            else:
                out.extend(s.encode(self.p.codepage, "replace"))
            run.clear()

        for ch in line:
            cjk = not self._encodable(ch)
            if cjk != run_cjk:
                flush()
                run_cjk = cjk
            run.append(ch)
        flush()
        return bytes(out)

    def raster_line(self, line: str, align: Align, bold: bool, dw: bool, dh: bool) -> None:
        """Draw one line with a CJK font and send it as a ``GS v 0`` raster image."""
        try:
            from PIL import Image, ImageDraw, ImageFont
        except ImportError as exc:  # pragma: no cover - Pillow is a dependency
            raise TicketRenderError("printing Chinese as an image needs Pillow (pip install pillow)") from exc
        font_path = self.p.cjk_font or find_cjk_font()
        if font_path is None:
            raise TicketRenderError(
                "this printer has no Chinese font and no CJK font is installed to draw one: "
                "install fonts-wqy-zenhei (or fonts-noto-cjk) or set the printer's cjk_font"
            )
        px = self.p.raster_font_px
        try:
            font = ImageFont.truetype(font_path, px)
        except OSError as exc:
            raise TicketRenderError(f"cannot load font {font_path}: {exc}") from exc
        left, _top, right, bottom = font.getbbox(line or " ")
        width = max(1, min(self.p.dots, right - min(0, left) + (1 if bold else 0)))
        height = max(px, bottom) + 2
        img = Image.new("1", (int(width), int(height)), 1)  # getbbox gives floats for some fonts
        draw = ImageDraw.Draw(img)
        draw.text((-min(0, left), 0), line, font=font, fill=0)
        if bold:  # faux bold: draw again one dot to the right
            draw.text((-min(0, left) + 1, 0), line, font=font, fill=0)
        if dw or dh:
            img = img.resize((min(self.p.dots, width * (2 if dw else 1)), height * (2 if dh else 1)))
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
        self.out += ESC + b"a" + bytes((("left", "center", "right").index(q.align),))
        self.out += GS + b"(k\x04\x00\x31\x41\x32\x00"  # model 2
        self.out += GS + b"(k\x03\x00\x31\x43" + bytes((max(1, min(16, q.module_size)),))
        self.out += GS + b"(k\x03\x00\x31\x45" + bytes((ecc,))
        self.out += GS + b"(k" + store.to_bytes(2, "little") + b"\x31\x50\x30" + data
        self.out += GS + b"(k\x03\x00\x31\x51\x30" + b"\n" + ESC + b"a\x00"


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
