"""What the hub must know about one ESC/POS printer: its profile.

A profile says how wide the paper is (font-A columns and dots), which code page Western text
goes out in, how Chinese prints (``cjk``), how the printer reports status (``status``) and how
a serial line is paced (``flow_control``). It comes from three places, later ones winning:

1. the printer-capability database that python-escpos ships (``escpos/capabilities.json``,
   from the escpos-printer-db project): paper width in mm and dots, font-A columns, and the
   ``ESC t`` numbers of the code pages the model has. Looked up by ``profile = "TM-T20II"``
   or, when that is not given, by the model name discovery found (IEEE-1284 ``MDL:``, mDNS
   ``usb_MDL``) or the ``[[device]] model``;
2. ``paper_mm`` (58 or 80) for the common paper widths;
3. explicit ``columns``, ``dots``, ``codepage``, ``cjk``, ``status``, ``flow_control`` keys.

``cjk``: ``gb18030`` / ``gbk`` / ``big5`` — the printer has a Chinese font and reads that
encoding in Kanji mode (``FS &``); ``raster`` — it has none, Chinese is drawn on the box. Text
the printer's font cannot hold (emoji, any character outside its set) is drawn on the box in
every case (drivers/escpos_render.py).

``status``: ``auto`` (learn it at first contact), ``full`` (``DLE EOT 1``-``4``), ``basic``
(``DLE EOT 1``-``3``: Citizen CBM-820 and others without n=4), ``asb`` (only automatic status
back, ``GS a``), ``none`` (the printer says nothing: USB without a bulk-IN endpoint, write-only
LAN boards; jobs are reported ``sent``, unconfirmed).

The capability data is read as a file, not through ``escpos.capabilities`` (which writes a
pickle cache into a new temporary folder at every import); python-escpos is pinned exactly in
pyproject.toml and tests/drivers/test_escpos_profile.py fails when the file moves or changes shape.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal, get_args

__all__ = [
    "CJK_MODES",
    "FLOW_CONTROLS",
    "PROFILE_KEYS",
    "STATUS_MODES",
    "CjkMode",
    "FlowControl",
    "PrinterProfile",
    "StatusMode",
    "capability_profile",
    "capability_profile_names",
    "profile_from_settings",
    "profile_problems",
]

CjkMode = Literal["gb18030", "gbk", "big5", "raster"]
StatusMode = Literal["auto", "full", "basic", "asb", "none"]
FlowControl = Literal["none", "rtscts", "dsrdtr", "xonxoff"]
CJK_MODES: tuple[CjkMode, ...] = get_args(CjkMode)
STATUS_MODES: tuple[StatusMode, ...] = get_args(StatusMode)
FLOW_CONTROLS: tuple[FlowControl, ...] = get_args(FlowControl)

#: The ``[[device]]`` keys of a printer profile (all optional).
PROFILE_KEYS = ("profile", "paper_mm", "columns", "dots", "codepage", "cjk", "status", "flow_control")

# Font A is 12 dots wide on every 203-dpi ESC/POS printer: 48 columns on 576 dots (80 mm paper,
# 72 mm printable), 32 on 384 (58 mm paper, 48 mm printable). Epson TM-T20II / Zjiang POS-5890
# in the capability data say the same.
_PAPER: dict[int, tuple[int, int]] = {80: (48, 576), 58: (32, 384)}

# ESC t numbers when the capability data has no entry for the model (Epson's table, which the
# clones copy for these pages).
_EPSON_CODEPAGES: dict[str, int] = {"cp437": 0, "cp850": 2, "cp860": 3, "cp863": 4, "cp865": 5, "cp1252": 16,
                                    "cp866": 17, "cp852": 18, "cp858": 19}


@dataclass(frozen=True)
class PrinterProfile:
    """One printer's profile (see the module doc). ``codepages`` maps the Python codec names of
    the code pages it has to their ``ESC t`` numbers; ``source`` says where the facts came from."""

    columns: int = 48
    dots: int = 576
    codepage: str = "cp1252"
    cjk: CjkMode = "gb18030"
    status: StatusMode = "auto"
    flow_control: FlowControl = "none"
    cjk_font: str | None = None  # the CJK font for drawing (found on the system when None)
    raster_font_px: int = 24  # font-A glyphs are 12x24 dots; CJK ones 24x24
    codepages: Mapping[str, int] = ()  # type: ignore[assignment]  # a frozen default; see __post_init__
    source: str = "default (80 mm)"

    def __post_init__(self) -> None:
        if not self.codepages:
            object.__setattr__(self, "codepages", dict(_EPSON_CODEPAGES))

    @classmethod
    def paper_58mm(cls, **overrides: Any) -> PrinterProfile:
        return cls(columns=32, dots=384, **overrides)

    @property
    def codepage_number(self) -> int | None:
        """The ``ESC t n`` that selects ``codepage``, or None when the printer has no such page."""
        return self.codepages.get(self.codepage)

    def describe(self) -> dict[str, Any]:
        return {"columns": self.columns, "dots": self.dots, "codepage": self.codepage, "cjk": self.cjk,
                "status": self.status, "flow_control": self.flow_control, "source": self.source}


def _codec(name: str) -> str | None:
    """The capability data's code page name as a Python codec name (``CP437`` → ``cp437``)."""
    key = name.lower().replace("_", "-")
    if key.startswith("cp") and key[2:].isdigit():
        return key
    if key.startswith("iso-8859-"):
        return key.replace("-", "_", 1).replace("iso_", "iso8859-")
    return None


@functools.cache
def _capabilities() -> dict[str, Any]:
    ref = resources.files("escpos") / "capabilities.json"
    data: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return data


def capability_profile_names() -> list[str]:
    return sorted(_capabilities()["profiles"])


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def capability_profile(name: str) -> tuple[str, dict[str, Any]] | None:
    """The capability database's entry for a model, by its profile name or a model string that
    contains it (``EPSON TM-T20II Receipt`` → ``TM-T20II``); the longest match wins."""
    profiles: dict[str, Any] = _capabilities()["profiles"]
    if name in profiles:
        return name, profiles[name]
    wanted = _normal(name)
    if not wanted:
        return None
    best = [key for key in profiles if key not in ("default", "simple") and len(_normal(key)) >= 4
            and _normal(key) in wanted]
    if not best:
        return None
    key = max(best, key=lambda k: len(_normal(k)))
    return key, profiles[key]


def _from_capabilities(key: str, data: Mapping[str, Any], base: PrinterProfile) -> PrinterProfile:
    width = data.get("media", {}).get("width", {})
    pixels, mm = width.get("pixels"), width.get("mm")
    columns = data.get("fonts", {}).get("0", {}).get("columns")
    codepages = {codec: int(n) for n, page in data.get("codePages", {}).items()
                 if (codec := _codec(str(page))) is not None and str(n).isdigit()}
    found = base
    if isinstance(pixels, int) and pixels > 0:
        found = replace(found, dots=pixels)
    elif isinstance(mm, int | float) and mm > 0:
        found = replace(found, dots=_PAPER[58][1] if mm < 60 else _PAPER[80][1])
    if isinstance(columns, int) and columns > 0:
        found = replace(found, columns=columns)
    if codepages:
        found = replace(found, codepages=codepages)
    return replace(found, source=f"capability database {key}")


def profile_problems(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a printer's profile keys, as ``(key, message)`` (config checker)."""
    problems: list[tuple[str, str]] = []

    def bad(key: str, message: str) -> None:
        problems.append((key, message))

    name = settings.get("profile")
    if name is not None and (not isinstance(name, str) or name not in _capabilities()["profiles"]):
        bad("profile", f"{name!r} is not in the printer capability database (python-escpos); known: "
            + ", ".join(capability_profile_names()))
    paper = settings.get("paper_mm")
    if paper is not None and (isinstance(paper, bool) or paper not in _PAPER):
        bad("paper_mm", f"must be 58 or 80, got {paper!r}")
    for key, low, high in (("columns", 16, 96), ("dots", 128, 832)):
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            bad(key, f"must be a whole number from {low} to {high}, got {value!r}")
    dots = settings.get("dots")
    if isinstance(dots, int) and not isinstance(dots, bool) and dots % 8:
        bad("dots", f"must be a multiple of 8 (raster images go out in whole bytes), got {dots}")
    page = settings.get("codepage")
    if page is not None:
        try:
            "x".encode(str(page))
            known = isinstance(page, str) and page.lower() in _all_codepages()
        except LookupError:
            known = False
        if not known:
            bad("codepage", f"{page!r} is not a code page ESC/POS printers have; e.g. cp437, cp858, cp1252")
    for key, allowed in (("cjk", CJK_MODES), ("status", STATUS_MODES), ("flow_control", FLOW_CONTROLS)):
        value = settings.get(key)
        if value is not None and value not in allowed:
            bad(key, f"must be one of {', '.join(allowed)}, got {value!r}")
    if isinstance(page, str) and isinstance(name, str) and "codepage" not in dict(problems) and "profile" not in dict(
            problems):
        pages = _from_capabilities(name, _capabilities()["profiles"][name], PrinterProfile()).codepages
        if page.lower() not in pages:
            bad("codepage", f"{page!r} is not a code page of {name} (it has {', '.join(sorted(pages))})")
    return problems


@functools.cache
def _all_codepages() -> frozenset[str]:
    found = set(_EPSON_CODEPAGES)
    for data in _capabilities()["profiles"].values():
        for page in data.get("codePages", {}).values():
            codec = _codec(str(page))
            if codec:
                found.add(codec)
    return frozenset(found)


def profile_from_settings(settings: Mapping[str, str], model: str = "") -> PrinterProfile:
    """The profile from a device's settings (``DeviceInfo.extra``: strings, already checked by
    the config loader) and its model name. Unknown or bad values fall back to the defaults."""
    profile = PrinterProfile()
    key = settings.get("profile") or ""
    found = capability_profile(key) if key else (capability_profile(model) if model else None)
    if found is not None:
        profile = _from_capabilities(found[0], found[1], profile)
    paper = settings.get("paper_mm", "")
    if paper.isdigit() and int(paper) in _PAPER:
        columns, dots = _PAPER[int(paper)]
        profile = replace(profile, columns=columns, dots=dots, source=f"{profile.source}, {paper} mm paper")
    changes: dict[str, Any] = {}
    for name in ("columns", "dots"):
        value = settings.get(name, "")
        if value.isdigit():
            changes[name] = int(value)
    if settings.get("codepage"):
        changes["codepage"] = settings["codepage"].lower()
    elif profile.codepage not in profile.codepages:
        # The default (cp1252) is not among this model's pages: cp437 (page 0) every printer has.
        changes["codepage"] = "cp437" if "cp437" in profile.codepages else min(profile.codepages)
    for name, allowed in (("cjk", CJK_MODES), ("status", STATUS_MODES), ("flow_control", FLOW_CONTROLS)):
        if settings.get(name) in allowed:
            changes[name] = settings[name]
    if changes:
        profile = replace(profile, **changes, source=f"{profile.source}, [[device]] " + ", ".join(sorted(changes)))
    return profile
