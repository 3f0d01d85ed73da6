"""What a simulated printer put on paper, drawn as an image (for tests and the eye).

``draw_paper(ticket, profile)`` lays the ``PrintedTicket`` out the way the printer's own
mechanism would: text in font-A cells (12x24 dots, a Chinese character 24x24, times the
character size), a line that does not fit the paper's dots wrapped onto the next line as the
printer wraps it, raster images as they were sent (cut off at the paper's edge), QR codes at the
module size the printer was told, barcodes as bars with their text. The printer's Chinese font
is the CJK font on this machine; what it decoded wrong (mojibake, replacement characters) is
drawn as it decoded it, so a picture shows what staff would see.

``Paper.problems`` lists what a person would call misprinted: wrapped lines, images wider than
the paper, replacement characters.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from edgehub.sim.printer import PrintedTicket, SimProfile

__all__ = ["Paper", "draw_paper"]

_CELL_W, _CELL_H = 12, 24
_MARGIN = 8  # paper beyond the printable width, each side
_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@dataclass
class Paper:
    image: Any  # a Pillow image, mode "1"
    problems: list[str] = field(default_factory=list)


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") or ord(ch) >= 0x1F000


def _font(px: int) -> Any:
    from PIL import ImageFont

    for path in _FONTS:
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            continue
    return ImageFont.load_default()


def draw_paper(ticket: PrintedTicket, profile: SimProfile) -> Paper:
    from PIL import Image, ImageDraw

    dots = profile.dots
    blocks: list[tuple[Any, int]] = []  # (image, x offset)
    problems: list[str] = []
    for kind, index in ticket.order:
        if kind == "line":
            line = ticket.lines[index]
            cells: list[list[str]] = [[]]
            used = 0
            for ch in line.text:
                w = (2 if _wide(ch) else 1) * _CELL_W * line.width
                if used + w > dots:
                    cells.append([])
                    used = 0
                cells[-1].append(ch)
                used += w
                if ch == "\ufffd":
                    problems.append(f"line {index + 1} has a character the printer could not decode: {line.text!r}")
            if len(cells) > 1:
                problems.append(f"line {index + 1} is wider than the paper and wrapped: {line.text!r}")
            for part in cells:
                blocks.append(_text_block(part, line.width, line.height, line.align, line.bold, dots))
        elif kind == "image":
            raster = ticket.images[index]
            if raster.width > dots:
                problems.append(f"image {index + 1} is {raster.width} dots wide, the paper {dots}")
            img = Image.frombytes("1", (raster.width, raster.height), b"".join(raster.rows))
            img = Image.eval(img.convert("L"), lambda v: 255 - v).convert("1").crop((0, 0, dots, raster.height))
            blocks.append((img, 0))
        elif kind == "qr":
            img = _qr(ticket.qr_codes[index], ticket.qr_module_sizes[index])
            if img.width > dots:
                problems.append(f"QR code {index + 1} is {img.width} dots wide, the paper {dots}")
            blocks.append((img.crop((0, 0, min(img.width, dots), img.height)), max(0, (dots - img.width) // 2)))
        elif kind == "barcode":
            symbology, text = ticket.barcodes[index]
            blocks.append(_text_block(list(f"|||| {symbology} {text} ||||"), 1, 2, "center", True, dots))
    height = sum(img.height for img, _ in blocks) + 2 * _MARGIN
    paper = Image.new("1", (dots + 2 * _MARGIN, max(height, 2 * _MARGIN)), 1)
    y = _MARGIN
    for img, x in blocks:
        paper.paste(img, (_MARGIN + x, y))
        y += img.height
    if ticket.cut:
        ImageDraw.Draw(paper).line((0, paper.height - 2, paper.width, paper.height - 2), fill=0)
    return Paper(paper, problems)


def _text_block(chars: list[str], width: int, height: int, align: str, bold: bool, dots: int) -> tuple[Any, int]:
    from PIL import Image, ImageDraw

    cell_w, cell_h = _CELL_W * width, _CELL_H * height
    total = sum((2 if _wide(ch) else 1) * cell_w for ch in chars)
    img = Image.new("1", (max(1, min(total, dots)), cell_h), 1)
    x = 0
    for ch in chars:
        w = (2 if _wide(ch) else 1) * cell_w
        glyph = Image.new("1", (2 * _CELL_W if _wide(ch) else _CELL_W, _CELL_H), 1)
        ImageDraw.Draw(glyph).text((0, 1), ch, font=_font(int(_CELL_H * 0.9)), fill=0)
        glyph = glyph.resize((w, cell_h))
        img.paste(glyph, (x, 0))
        if bold:
            img.paste(Image.new("1", glyph.size, 0), (x + 1, 0), Image.eval(glyph.convert("L"), lambda v: 255 - v))
        x += w
    offset = {"left": 0, "center": (dots - img.width) // 2, "right": dots - img.width}.get(align, 0)
    return img, max(0, offset)


def _qr(data: str, module: int) -> Any:
    import qrcode

    code = qrcode.QRCode(border=0, box_size=max(1, module))
    code.add_data(data.encode("utf-8"), optimize=0)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("1")
