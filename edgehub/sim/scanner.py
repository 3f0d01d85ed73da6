"""A serial (USB-COM / CDC-ACM) barcode scanner on a pseudo-terminal: ``scan(code)`` sends code + CR."""

from __future__ import annotations

from edgehub.sim.scale import PtyPort

__all__ = ["SerialScannerSim"]


class SerialScannerSim(PtyPort):
    """Open ``sim.port`` like ``/dev/ttyACM0``; ``unplug()`` pulls the cable."""

    def __init__(self, terminator: bytes = b"\r") -> None:
        super().__init__()
        self.terminator = terminator

    async def __aenter__(self) -> SerialScannerSim:
        await super().__aenter__()
        return self

    def scan(self, code: str | bytes) -> None:
        """One trigger pull: the code, then the terminator (CR, or CRLF if so configured)."""
        data = code.encode() if isinstance(code, str) else code
        self.send_raw(data + self.terminator)
