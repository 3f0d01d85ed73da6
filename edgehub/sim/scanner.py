"""A serial (USB-COM / CDC-ACM) barcode scanner on a pseudo-terminal: ``scan(code)`` sends code + suffix.

The suffix is what the scanner is programmed to send after each code. Scanner programming
guides offer several (PSC's: none, ETX, CR, LF, HT; Champtek's postamble: none, CR LF, CR, LF,
ETX) and units leave the factory with different ones, so each is a profile
(``SERIAL_SCANNER_PROFILES``).
"""

from __future__ import annotations

from typing import Any

from edgehub.sim.scale import PtyPort

__all__ = ["SERIAL_SCANNER_PROFILES", "SerialScannerSim"]

#: The serial scanners a store may meet: name -> ``SerialScannerSim`` arguments.
SERIAL_SCANNER_PROFILES: dict[str, dict[str, Any]] = {
    "serial-cr": {"terminator": b"\r"},
    "serial-crlf": {"terminator": b"\r\n"},
    "serial-lf": {"terminator": b"\n"},
    "serial-none": {"terminator": b""},
}


class SerialScannerSim(PtyPort):
    """Open ``sim.port`` like ``/dev/ttyACM0``; ``unplug()`` pulls the cable."""

    def __init__(self, terminator: bytes = b"\r") -> None:
        super().__init__()
        self.terminator = terminator

    @classmethod
    def from_profile(cls, name: str, **overrides: Any) -> SerialScannerSim:
        """The scanner of profile ``name``; ValueError for an unknown one."""
        if name not in SERIAL_SCANNER_PROFILES:
            raise ValueError(f"no serial scanner profile {name!r} (known: {', '.join(SERIAL_SCANNER_PROFILES)})")
        return cls(**{**SERIAL_SCANNER_PROFILES[name], **overrides})

    async def __aenter__(self) -> SerialScannerSim:
        await super().__aenter__()
        return self

    def scan(self, code: str | bytes) -> None:
        """One trigger pull: the code, then the suffix the scanner is set to send, in one burst."""
        data = code.encode() if isinstance(code, str) else code
        self.send_raw(data + self.terminator)
