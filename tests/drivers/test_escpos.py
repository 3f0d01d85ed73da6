"""The ESC/POS printer driver against the simulated printer over real loopback TCP and a real pty,
and against raw servers that send malformed or truncated bytes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo, UsbMatch
from drivers.escpos import (
    CONFIRM_MODES,
    ESCPOS_VENDOR_IDS,
    ConfirmMode,
    EscposPrinter,
    PrinterNoAnswer,
    PrinterNotReady,
    PrinterStatus,
    PrinterTiming,
    PrintResult,
    confirm_request,
    estimated_lines,
)
from drivers.escpos_render import Ticket, render
from edgehub.errors import DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.sim.printer import PrinterCore, PrinterSim, PtyPrinterSim

FAST = PrinterTiming(
    connect=1.0,
    status_reply=0.2,
    frame_rest=0.1,
    settle=0.02,
    confirm=2.0,
    poll_interval=0.1,
    write_base=1.0,
    lines_per_second=1000.0,
    feed_and_cut=0.05,
)


def tcp_printer(
    address: str, timing: PrinterTiming = FAST, confirm: ConfirmMode | None = None
) -> EscposPrinter:
    return EscposPrinter(DeviceInfo("prn-test", "printer", "tcp", address, "escpos"), timing=timing, confirm=confirm)


def ticket_bytes(title: str = "Table 7", item: str = "2x Burger") -> bytes:
    return render(Ticket().title(title).text(item).text("Total 12.50", bold=True))


@pytest.fixture
async def sim() -> AsyncIterator[PrinterSim]:
    async with PrinterSim() as s:
        yield s


@pytest.fixture
async def printer(sim: PrinterSim) -> AsyncIterator[EscposPrinter]:
    p = tcp_printer(sim.address)
    yield p
    await p.close()


# -- declarations and pure parsing -----------------------------------------------------------


def test_declares_what_it_matches() -> None:
    assert EscposPrinter.kind == "printer"
    assert UsbMatch(interface_class=7) in EscposPrinter.usb_matches
    vids = {m.vendor_id for m in EscposPrinter.usb_matches}
    for vid in (0x04B8, 0x0519, 0x1504, 0x0419, 0x1D90, 0x2730, 0x154F, 0x0DD4):
        assert vid in vids and vid in ESCPOS_VENDOR_IDS
    # A chip maker's id alone makes nothing a printer (STM32 virtual COM ports, Nuvoton scanners).
    assert not vids & {0x0416, 0x0483, 0x1FC9}
    assert all(m.interface_class in (7, 0xFF) for m in EscposPrinter.usb_matches)
    assert "_pdl-datastream._tcp.local." in EscposPrinter.zeroconf_types
    assert "_printer._tcp.local." in EscposPrinter.zeroconf_types
    assert "_ipp._tcp.local." in EscposPrinter.zeroconf_types
    assert EscposPrinter.tcp_ports == (9100,)


def test_constructor_does_no_io() -> None:
    # A port nobody listens on: constructing must not try to connect.
    p = tcp_printer("127.0.0.1:1")
    assert p.last_status is None


def test_confirm_request_is_gs_paren_h_fn48() -> None:
    assert confirm_request(b"AB12") == bytes.fromhex("1d 28 48 06 00 30 30") + b"AB12"
    with pytest.raises(ValueError):
        confirm_request(b"\x00\x01\x02\x03")


@pytest.mark.parametrize(
    ("replies", "field", "health"),
    [
        ((0x1A, 0x12, 0x12, 0x12), "offline", ("failed", "offline")),
        ((0x12, 0x16, 0x12, 0x12), "cover_open", ("failed", "cover open")),
        ((0x12, 0x1A, 0x12, 0x12), "feed_button", ("ready", "")),
        ((0x12, 0x32, 0x12, 0x12), "paper_end", ("failed", "paper end")),
        ((0x12, 0x52, 0x12, 0x12), "error", ("failed", "printer error")),
        ((0x12, 0x12, 0x16, 0x12), "mechanical_error", ("failed", "mechanical error")),
        ((0x12, 0x12, 0x1A, 0x12), "autocutter_error", ("failed", "autocutter error")),
        ((0x12, 0x12, 0x32, 0x12), "unrecoverable_error", ("failed", "unrecoverable error")),
        ((0x12, 0x12, 0x52, 0x12), "recoverable_error", ("failed", "recoverable error")),
        ((0x12, 0x12, 0x12, 0x1E), "paper_near_end", ("degraded", "paper near end")),
        ((0x12, 0x12, 0x12, 0x72), "paper_end", ("failed", "paper end")),
    ],
)
def test_every_dle_eot_bit(replies: tuple[int, int, int, int], field: str, health: tuple[str, str]) -> None:
    status = PrinterStatus.from_dle_eot(*replies)
    flags = {name for name in PrinterStatus.__dataclass_fields__ if getattr(status, name) is True}
    assert flags == {field}
    assert status.health().state == health[0]
    assert status.health().reason.startswith(health[1])


def test_asb_frame_parsing() -> None:
    status = PrinterStatus.from_asb(bytes((0x10 | 0x08 | 0x20, 0x08, 0x0C, 0x00)))
    assert status.offline and status.cover_open and status.autocutter_error and status.paper_end
    assert not status.paper_near_end
    assert status.health().reason == "autocutter error (paper jammed in the cutter?), cover open, paper end"


# -- round trips against the simulator over TCP ----------------------------------------------


async def test_prints_the_ticket_once_with_its_text(sim: PrinterSim, printer: EscposPrinter) -> None:
    result = await printer.print_job("order-17", ticket_bytes("Table 7", "2x Burger"))
    assert isinstance(result, PrintResult)
    assert result.job_id == "order-17" and result.warning == ""
    assert len(sim.printed) == 1
    ticket = sim.printed[0]
    assert ticket.text.splitlines() == ["Table 7", "2x Burger", "Total 12.50"]
    assert ticket.cut
    assert ticket.lines[0].bold and ticket.lines[0].double_height and ticket.lines[0].align == "center"
    assert ticket.lines[2].bold and not ticket.lines[1].bold
    assert len(ticket.job_token) == 4


async def test_jobs_in_a_row_and_at_once_each_print_once(sim: PrinterSim, printer: EscposPrinter) -> None:
    await printer.print_job("a", ticket_bytes(item="first"))
    await asyncio.gather(
        printer.print_job("b", ticket_bytes(item="second")),
        printer.print_job("c", ticket_bytes(item="third")),
        printer.health(),
    )
    items = [t.lines[1].text for t in sim.printed]
    assert sorted(items) == ["first", "second", "third"]
    assert len({t.job_token for t in sim.printed}) == 3


@pytest.mark.parametrize(
    ("knob", "field", "state", "reason"),
    [
        ("paper_near_end", "paper_near_end", "degraded", "paper near end"),
        ("paper_out", "paper_end", "failed", "paper end"),
        ("cover_open", "cover_open", "failed", "cover open"),
        ("offline", "offline", "failed", "offline"),
        ("feed_button", "feed_button", "ready", ""),
        ("mechanical_error", "mechanical_error", "failed", "mechanical error"),
        ("autocutter_error", "autocutter_error", "failed", "autocutter error"),
        ("unrecoverable_error", "unrecoverable_error", "failed", "unrecoverable error"),
        ("recoverable_error", "recoverable_error", "failed", "recoverable error"),
    ],
)
async def test_every_status_bit_through_the_wire(
    sim: PrinterSim, printer: EscposPrinter, knob: str, field: str, state: str, reason: str
) -> None:
    assert (await printer.health()).state == "ready"
    setattr(sim, knob, True)
    status = await printer.status()
    assert getattr(status, field) is True
    health = await printer.health()
    assert health.state == state
    assert health.reason.startswith(reason)
    setattr(sim, knob, False)
    assert (await printer.health()).state == "ready"


async def test_paper_out_refuses_the_job_and_prints_nothing(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.paper_out = True
    with pytest.raises(PrinterNotReady) as caught:
        await printer.print_job("order-1", ticket_bytes())
    assert caught.value.job_sent is False
    assert "paper end" in str(caught.value) and "order-1" in str(caught.value)
    assert sim.printed == [] and sim.core.held == []


async def test_cover_open_refuses_the_job(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.cover_open = True
    with pytest.raises(PrinterNotReady, match="cover open"):
        await printer.print_job("order-2", ticket_bytes())
    assert sim.printed == []


async def test_paper_near_end_prints_with_a_warning(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.paper_near_end = True
    result = await printer.print_job("order-3", ticket_bytes())
    assert result.warning == "paper near end"
    assert len(sim.printed) == 1


async def test_slow_printer_is_waited_for(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.slow = 0.3
    started = time.monotonic()
    result = await printer.print_job("order-4", ticket_bytes())
    assert time.monotonic() - started >= 0.3
    assert result.seconds >= 0.3
    assert len(sim.printed) == 1


async def test_cover_opened_while_printing_fails_the_job_fast(
    sim: PrinterSim, printer: EscposPrinter
) -> None:
    sim.slow = 1.5  # printing takes longer than the test allows: the driver must notice the cover

    async def open_cover() -> None:
        await asyncio.sleep(0.1)
        sim.cover_open = True

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(open_cover())
        with pytest.raises(PrinterNotReady) as caught:
            await printer.print_job("order-5", ticket_bytes())
    assert caught.value.job_sent is True and caught.value.status.cover_open
    assert time.monotonic() - started < 1.0


async def test_silent_printer_is_no_answer_not_offline(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.silent = True
    health = await printer.health()
    # One probe without an answer is a *missed* probe (the watchdog decides), never "offline".
    assert (health.state, health.reason) == ("unknown", "no answer")
    with pytest.raises(DeviceTimeout, match="status unknown"):
        await printer.status()
    with pytest.raises(PrinterNoAnswer) as caught:
        await printer.print_job("order-6", ticket_bytes())
    assert caught.value.job_sent is False and "nothing was sent" in str(caught.value)
    assert sim.printed == []  # not sent: it can go to a spare as it is
    sim.silent = False
    async with asyncio.timeout(5):  # requests it dropped are given up within a few reply times
        while (await printer.health()).state != "ready":
            await asyncio.sleep(0.05)


async def test_dead_printer_is_unreachable_and_comes_back(sim: PrinterSim, printer: EscposPrinter) -> None:
    assert (await printer.health()).state == "ready"
    await sim.kill()
    assert await printer.health() == type(await printer.health())("failed", "not reachable")
    with pytest.raises(DeviceUnavailable):
        await printer.print_job("order-7", ticket_bytes())
    with pytest.raises(DeviceUnavailable):
        await printer.open()
    await sim.revive()
    assert (await printer.health()).state == "ready"
    await printer.print_job("order-7", ticket_bytes(item="after revive"))
    assert [t.lines[1].text for t in sim.printed] == ["after revive"]


async def test_stale_and_unsolicited_bytes_are_not_misread(sim: PrinterSim, printer: EscposPrinter) -> None:
    assert (await printer.health()).state == "ready"
    # An ASB frame saying "cover open, paper end", a stale status byte, an old job's echo.
    sim.inject(bytes((0x38, 0x00, 0x0C, 0x00)) + b"\x1e" + b"\x37\x22OLD!\x00")
    await asyncio.sleep(0.02)
    status = await printer.status()
    assert not status.cover_open and not status.paper_end and not status.paper_near_end
    assert printer.last_asb is not None and printer.last_asb.cover_open
    sim.slow = 0.2

    async def noise() -> None:
        await asyncio.sleep(0.05)
        sim.inject(bytes((0x10, 0x00, 0x03, 0x00)) + b"\x37\x22OLD!\x00")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(noise())
        await printer.print_job("order-8", ticket_bytes())
    assert len(sim.printed) == 1


async def test_automatic_status_back_enabled_does_not_confuse_status(
    sim: PrinterSim, printer: EscposPrinter
) -> None:
    await printer.print_job("asb", b"\x1d\x61\xff" + ticket_bytes())  # GS a 255: ASB on every change
    sim.paper_near_end = True  # sends an unsolicited ASB frame
    sim.feed_button = True  # and another
    await asyncio.sleep(0.02)
    assert (await printer.health()).state == "degraded"
    assert printer.last_asb is not None and printer.last_asb.paper_near_end
    await printer.print_job("after-asb", ticket_bytes())
    assert len(sim.printed) == 2


async def test_reset_restores_a_healthy_empty_printer(sim: PrinterSim, printer: EscposPrinter) -> None:
    await printer.print_job("x", ticket_bytes())
    sim.paper_out = True
    await sim.kill()
    await sim.reset()
    assert sim.printed == [] and not sim.paper_out and not sim.dead
    assert (await printer.health()).state == "ready"


# -- a serial printer on a pty ---------------------------------------------------------------


async def test_serial_printer_on_a_pty() -> None:
    async with PtyPrinterSim() as sim:
        info = DeviceInfo("prn-serial", "printer", "serial", sim.path, "escpos", extra={"baudrate": "19200"})
        printer = EscposPrinter(info, timing=FAST)
        try:
            await printer.print_job("serial-1", ticket_bytes(item="2x Noodles"))
            assert [t.lines[1].text for t in sim.printed] == ["2x Noodles"]
            sim.paper_near_end = True
            assert (await printer.health()).reason == "paper near end"
            sim.paper_out = True
            assert (await printer.health()).reason == "paper end"
            sim.paper_out = sim.paper_near_end = False
            sim.silent = True
            assert (await printer.health()).reason == "no answer"
            sim.silent = False
            async with asyncio.timeout(5):  # the dropped request is given up within a few reply times
                while (await printer.health()).state != "ready":
                    await asyncio.sleep(0.05)
            await sim.unplug()
            health = await printer.health()
            assert health.state == "failed" and health.reason in ("not reachable", "no answer")
            with pytest.raises((DeviceUnavailable, DeviceTimeout)):
                await printer.print_job("serial-2", ticket_bytes())
        finally:
            await printer.close()


# -- raw servers: malformed, truncated, wrong answers ----------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        with contextlib.suppress(Exception):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def replies(per_request: Callable[[bytes], bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(per_request(data))
            await writer.drain()

    return handler


async def test_invalid_status_byte_is_a_protocol_error() -> None:
    async with raw_server(replies(lambda _: b"\x00")) as address:
        printer = tcp_printer(address)
        with pytest.raises(ProtocolError, match="0x00"):
            await printer.status()
        assert await printer.health() == type(await printer.health())("failed", "garbled status reply")
        await printer.close()


async def test_truncated_frame_is_a_protocol_error() -> None:
    async with raw_server(replies(lambda _: b"\x37\x22")) as address:
        printer = tcp_printer(address)
        with pytest.raises(ProtocolError, match="truncated"):
            await printer.status()
        await printer.close()


async def test_printer_that_never_confirms_leaves_the_job_unconfirmed() -> None:
    # Answers every DLE EOT "all fine" but ignores GS ( H, like printers without fn48.
    def answer(data: bytes) -> bytes:
        return b"\x12" * data.count(b"\x10\x04")

    async with raw_server(replies(answer)) as address:
        printer = tcp_printer(address, PrinterTiming(**{**FAST.__dict__, "confirm": 0.3}), "process-id")
        with pytest.raises(DeviceTimeout, match="sent but not confirmed"):
            await printer.print_job("order-9", ticket_bytes())
        await printer.close()


async def test_connection_closed_mid_reply_is_unavailable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(3)
        writer.write(b"\x12")
        await writer.drain()
        writer.transport.abort()

    async with raw_server(handler) as address:
        printer = tcp_printer(address)
        with pytest.raises(DeviceUnavailable):
            await printer.status()
        assert (await printer.health()).state == "failed"
        await printer.close()


FUZZ = PrinterTiming(
    connect=0.5,
    status_reply=0.05,
    frame_rest=0.03,
    settle=0.01,
    confirm=0.3,
    poll_interval=0.1,
    write_base=0.5,
    lines_per_second=1000.0,
    feed_and_cut=0.05,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=12), max_size=6),
    close_after=st.booleans(),
    do_print=st.booleans(),
)
def test_random_device_bytes_never_crash_or_hang(
    chunks: list[bytes], close_after: bool, do_print: bool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:  # one chunk in answer to each write from the driver
            if not await reader.read(4096):
                return
            writer.write(chunk)
            await writer.drain()
        if close_after:
            writer.transport.abort()
        else:
            while await reader.read(4096):
                pass

    async def scenario() -> None:
        async with raw_server(handler) as address:
            printer = tcp_printer(address, FUZZ)
            started = time.monotonic()
            try:
                if do_print:
                    outcome: object = await printer.print_job("fuzz", b"hello\n")
                    assert isinstance(outcome, PrintResult)
                else:
                    outcome = await printer.status()
                    assert isinstance(outcome, PrinterStatus)
            except (ProtocolError, DeviceTimeout, DeviceUnavailable, PrinterNotReady):
                pass
            health = await printer.health()
            assert health.state in ("ready", "degraded", "failed", "unknown")
            assert time.monotonic() - started < 5.0
            await printer.close()

    asyncio.run(scenario())


async def test_health_during_a_long_job_answers_at_once(sim: PrinterSim, printer: EscposPrinter) -> None:
    sim.slow = 0.5
    job = asyncio.create_task(printer.print_job("long", ticket_bytes()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert (await printer.health()).state == "ready"
    assert time.monotonic() - started < 0.1
    await job
    assert len(sim.printed) == 1


# -- clones that ignore GS ( H: confirmation by status -----------------------------------------

SHORT_CONFIRM = PrinterTiming(**{**FAST.__dict__, "confirm": 0.3})
# A print time far longer than any test waits: the job can only end by the problem it meets.
SLOW_PAPER = PrinterTiming(**{**FAST.__dict__, "lines_per_second": 0.5, "feed_and_cut": 10.0})


@pytest.fixture
async def clone() -> AsyncIterator[PrinterSim]:
    async with PrinterSim(PrinterCore(manufacturer="Xprinter", model="XP-80C", clone=True)) as s:
        yield s


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5.0):
        while not condition():
            await asyncio.sleep(0.01)


def test_estimated_lines_counts_paper_not_bytes() -> None:
    assert estimated_lines(b"Table 7\n2x Burger\n") == 2
    assert estimated_lines(b"\x1bd\x05" + b"\x1dVB\x03") == 8  # ESC d 5, then feed 3 and cut
    image = b"\x1dv0\x00" + (2).to_bytes(2, "little") + (48).to_bytes(2, "little") + b"\n" * 96
    assert estimated_lines(image + b"after\n") == 3  # 48 dot rows = 2 lines; its 0x0A pixels are no feeds
    assert estimated_lines(ticket_bytes()) >= 3
    assert FAST.print_time(b"a\n" * 1000) > FAST.print_time(b"a\n")


def test_confirm_modes_are_the_ones_the_config_accepts() -> None:
    from edgehub.config import PRINTER_CONFIRM_MODES

    assert CONFIRM_MODES == PRINTER_CONFIRM_MODES == ("auto", "process-id", "status")
    with pytest.raises(ValueError, match="confirm must be one of"):
        tcp_printer("127.0.0.1:1", confirm="gs-h")  # type: ignore[arg-type]  # the wrong value on purpose
    from_config = EscposPrinter(DeviceInfo("p", "printer", "tcp", "127.0.0.1:1", "escpos", extra={"confirm": "status"}))
    assert from_config.confirm == "status" and from_config.confirmed_by == "status"
    assert tcp_printer("127.0.0.1:1").confirm == "auto" and tcp_printer("127.0.0.1:1").confirmed_by is None


async def test_clone_prints_in_status_mode(clone: PrinterSim) -> None:
    printer = tcp_printer(clone.address, confirm="status")
    try:
        first = await printer.print_job("order-20", ticket_bytes(item="2x Dumplings"))
        second = await printer.print_job("order-21", ticket_bytes(item="1x Soup"))
    finally:
        await printer.close()
    assert first.confirmed_by == second.confirmed_by == "status"
    assert [t.lines[1].text for t in clone.printed] == ["2x Dumplings", "1x Soup"]
    assert clone.core.process_id_requests == 0  # nothing sent that a clone might print as garbage


@pytest.mark.parametrize("profile", ["clone", "gbk-58", "basic"])
async def test_auto_mode_never_sends_gs_paren_h_to_a_clone(profile: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 21: the first job sent GS ( H; a clone printed its bytes and the job waited 30 s."""
    caplog.set_level(logging.WARNING, logger="drivers.escpos")
    async with PrinterSim(profile=profile) as clone:
        printer = tcp_printer(clone.address, PrinterTiming(**{**FAST.__dict__, "confirm": 30.0}))  # "auto"
        try:
            started = time.monotonic()
            results = [await printer.print_job(f"order-3{n}", ticket_bytes(item=f"item {n}")) for n in range(3)]
            took = time.monotonic() - started
        finally:
            await printer.close()
        assert [r.confirmed_by for r in results] == ["status"] * 3
        assert printer.confirmed_by == "status"
        assert [t.lines[1].text for t in clone.printed] == ["item 0", "item 1", "item 2"]
        assert not any("H" in line.text and "00" in line.text for t in clone.printed for line in t.lines)
        assert clone.core.process_id_requests == 0  # never asked: nothing printed as garbage
        assert took < 10.0  # no job held for the 30 s confirmation timeout
    [record] = [r for r in caplog.records if "GS I 66" in r.getMessage()]
    assert "prn-test" in record.getMessage() and "by status" in record.getMessage()


async def test_printer_that_answers_process_ids_keeps_them_in_auto_mode(
    sim: PrinterSim, caplog: pytest.LogCaptureFixture
) -> None:
    printer = tcp_printer(sim.address, SHORT_CONFIRM)
    caplog.set_level(logging.WARNING, logger="drivers.escpos")
    try:
        result = await printer.print_job("order-40", ticket_bytes())
        assert result.confirmed_by == "process-id" and printer.confirmed_by == "process-id"
        # Once it answered, a missing echo is a failure, never a reason to stop asking.
        sim.clone = True
        with pytest.raises(DeviceTimeout, match="sent but not confirmed"):
            await printer.print_job("order-41", ticket_bytes())
        assert printer.confirmed_by == "process-id"
    finally:
        await printer.close()
    assert not [r for r in caplog.records if "GS ( H" in r.getMessage()]


@pytest.mark.parametrize("mode", ["status", "auto"])
async def test_paper_end_after_a_job_on_a_clone_is_not_printed(clone: PrinterSim, mode: ConfirmMode) -> None:
    printer = tcp_printer(clone.address, PrinterTiming(**{**SLOW_PAPER.__dict__, "confirm": 30.0}), mode)
    try:
        job = asyncio.create_task(printer.print_job("order-50", ticket_bytes()))
        await until(lambda: bool(clone.printed))  # the clone took the job (and says nothing more)
        clone.paper_out = True
        with pytest.raises(PrinterNotReady) as caught:
            await job
    finally:
        await printer.close()
    assert caught.value.job_sent is True and caught.value.status.paper_end
    assert "order-50" in str(caught.value) and "paper end" in str(caught.value)
    assert printer.confirmed_by == "status"  # a clone (GS I 66: Xprinter) is confirmed by status


async def test_clone_offline_for_a_moment_is_waited_out(clone: PrinterSim) -> None:
    # Offline with no cause does not fail the job; it is waited out for up to another print time.
    printer = tcp_printer(clone.address, PrinterTiming(**{**FAST.__dict__, "feed_and_cut": 1.0}), "status")
    try:
        job = asyncio.create_task(printer.print_job("order-60", ticket_bytes()))
        await until(lambda: bool(clone.printed))
        clone.offline = True
        await until(lambda: printer.last_status is not None and printer.last_status.offline)
        assert not job.done()
        clone.offline = False
        result = await job
    finally:
        await printer.close()
    assert result.confirmed_by == "status" and not result.status.offline


async def test_process_id_on_a_clone_times_out_naming_the_printer(clone: PrinterSim) -> None:
    printer = tcp_printer(clone.address, SHORT_CONFIRM, "process-id")
    try:
        with pytest.raises(DeviceTimeout) as caught:
            await printer.print_job("order-70", ticket_bytes())
    finally:
        await printer.close()
    message = str(caught.value)
    assert caught.value.device_id == "prn-test" and message.startswith("prn-test: job order-70")
    assert "may or may not have printed" in message and clone.address in message
    assert "GS ( H" in message and 'confirm = "status"' in message
    assert printer.confirmed_by == "process-id"


async def test_the_simulated_printer_answers_on_the_loop_without_its_self_pipe(
    sim: PrinterSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` probes each simulated printer several times a second: a reply made on the event
    loop's own thread wakes the sender at once, not through the loop's self-pipe (a system call
    each way and an extra turn of the loop), which is left to other threads (USB workers)."""
    loop = asyncio.get_running_loop()
    woken_from_threads = []
    threadsafe = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        woken_from_threads.append(args)
        return threadsafe(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    host, port = sim.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for n in (1, 2, 3, 4):
            writer.write(bytes((0x10, 0x04, n)))
            await writer.drain()
            (reply,) = await asyncio.wait_for(reader.readexactly(1), 5)
            assert reply & 0x93 == 0x12, f"DLE EOT {n} answered {reply:#04x}"
    finally:
        writer.close()
    assert woken_from_threads == []

def test_the_drawer_pin_is_decoded_from_dle_eot_1_and_asb() -> None:
    """The cash drawer's open switch (kick connector pin 3): DLE EOT 1 bit 2, ASB byte 1 bit 2,
    also for a printer without DLE EOT 4 (status basic)."""
    assert PrinterStatus.from_dle_eot(0x16, 0x12, 0x12, 0x12).drawer_pin3_high
    assert PrinterStatus.from_dle_eot(0x16, 0x12, 0x12).drawer_pin3_high
    assert not PrinterStatus.from_dle_eot(0x12, 0x12, 0x12).drawer_pin3_high
    assert PrinterStatus.from_asb(bytes((0x14, 0, 0, 0))).drawer_pin3_high
