"""The ZVT driver against terminals as they behave in the field: "please wait" acceptances,
refusals a terminal goes on after, messages left from an earlier command, BMPs the driver does
not use (and one no spec defines), per-terminal password and currency, probing without side
effects, and the serial line with an abort racing the payment's frames.

Each terminal is ``edgehub.sim.pinpad`` (its ``PROFILES`` and knobs) or a few raw bytes on a
loopback socket; every test here failed on the driver before these behaviours were handled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.zvt import RegistrationRefused, TerminalBusy, ZvtPinpad, currency_of, parse_bmps, read_bmps
from edgehub.errors import PaymentError, ProtocolError
from edgehub.sim.pinpad import ZvtPinpadSim, ZvtSerialPinpadSim


def _info(port: int, **extra: str) -> DeviceInfo:
    return DeviceInfo("pinpad-1", "pinpad", "tcp", f"127.0.0.1:{port}", "zvt", extra=extra)


# -- acceptance, refusal, and what is left over -----------------------------------------------


@pytest.mark.parametrize("profile", ["please-wait", "ack-84-00"])
async def test_please_wait_then_approval_is_approved_once(profile: str) -> None:
    async with ZvtPinpadSim(profile=profile) as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, transaction_timeout=3.0)
        result = await pinpad.pay(1250)
        assert result.outcome == "approved" and (result.trace_no, result.receipt_no) == (1, 1)
        assert [c.amount_cents for c in sim.charges] == [1250]
        # Nothing of that payment is left to be read as the answer to the next command.
        assert await pinpad.status() == 0
        assert sim.commands == [(0x06, 0x00), (0x06, 0x01), (0x05, 0x01)]
        await pinpad.close()


async def test_a_terminal_that_goes_on_after_a_negative_answer_is_waited_for() -> None:
    # 84 A0 ("receiver not ready") and then the transaction all the same: the card is charged.
    async with ZvtPinpadSim(auth_ack=b"\x84\xa0\x00") as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, transaction_timeout=3.0)
        result = await pinpad.pay(900)
        assert result.outcome == "approved" and [c.amount_cents for c in sim.charges] == [900]
        await pinpad.close()


async def test_after_a_refusal_an_approval_for_another_amount_is_not_taken_as_this_one() -> None:
    # Refused ("receiver not ready"), then the result of a 9.99 sale begun on the keypad arrives.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(3)
                await reader.readexactly(head[2])
                if head[:2] == b"\x06\x00":
                    writer.write(b"\x80\x00\x00\x06\x0f\x00")
                elif head[:2] == b"\x06\x01":
                    writer.write(b"\x84\xa0\x00\x04\xff\x01\x0a")
                    writer.write(b"\x04\x0f\x0d\x27\x00\x04\x00\x00\x00\x00\x09\x99\x0b\x00\x00\x05")
                    writer.write(b"\x06\x0f\x02\x27\x00")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pinpad = ZvtPinpad(_info(server.sockets[0].getsockname()[1]), ack_timeout=0.5, transaction_timeout=1.0)
    try:
        result = await pinpad.pay(100)
        assert result.outcome == "unknown" and "approved 999 cents, not 100" in result.reason
    finally:
        await pinpad.close()
        server.close()
        await server.wait_closed()


async def test_a_refusal_followed_by_silence_is_a_refusal() -> None:
    async with ZvtPinpadSim(auth_refusal=0x83) as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, refusal_grace=0.2)
        with pytest.raises(PaymentError, match="refused 06 01: function not possible"):
            await pinpad.pay(900)
        assert sim.charges == []
        assert (await pinpad.pay(900)).outcome == "approved"  # the link stayed in step
        await pinpad.close()


async def _raw_terminal(after_status: bytes) -> tuple[asyncio.Server, list[bytes]]:
    """A terminal that registers, answers one status enquiry and then sends ``after_status``
    on its own (busy with a transaction started on its keypad). ``seen`` is what it received."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(3)
                body = await reader.readexactly(head[2])
                seen.append(head[:2])
                if head[:2] == b"\x06\x00":
                    writer.write(b"\x80\x00\x00\x06\x0f\x00")
                elif head[:2] == b"\x05\x01":
                    writer.write(b"\x80\x00\x00\x06\x0f\x04\xf0\xf0\xf0\x00")
                    await writer.drain()
                    await reader.readexactly(3)  # the ECR's ACK of the completion
                    seen.append(b"\x80\x00")
                    writer.write(after_status)
                elif head[:2] not in (b"\x80\x00",):
                    writer.write(b"\x84\x83\x00")
                del body
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), seen


async def test_messages_left_from_another_command_never_answer_the_next_one() -> None:
    server, seen = await _raw_terminal(b"\x04\xff\x01\x0a")  # "insert card": the terminal is busy
    port = server.sockets[0].getsockname()[1]
    pinpad = ZvtPinpad(_info(port), ack_timeout=0.5, transaction_timeout=1.0)
    try:
        assert await pinpad.status() == 0
        await asyncio.sleep(0.1)  # the terminal's own intermediate status arrives
        with pytest.raises(TerminalBusy, match="nothing was sent"):
            await pinpad.pay(100)
        assert b"\x06\x01" not in seen  # the payment was never sent: a spare may take it
        assert seen[-1] == b"\x80\x00"  # and the terminal's message was acknowledged
    finally:
        await pinpad.close()
        server.close()
        await server.wait_closed()


# -- BMPs ---------------------------------------------------------------------------------------


def test_read_bmps_skips_what_it_does_not_use_by_the_spec_length_rules() -> None:
    data = (
        b"\x27\x00"
        + b"\x70" + bytes(4) + b"\x71" + bytes(4) + b"\x72\x01\x73\x00\x74\x01\x75\x00\xfd\x01"
        + b"\x8b\xf0\xf3ABC"  # LLVAR
        + b"\x3c\xf0\xf0\xf2hi"  # LLLVAR
        + b"\x06\x81\x80" + bytes(128)  # TLV container, one length byte after 0x81
        + b"\x06\x82\x01\x00" + bytes(256)  # two after 0x82
        + b"\x0b\x00\x00\x07"
    )  # fmt: skip
    got = read_bmps(data)
    assert got.problem == ""
    assert (got.fields[0x27], got.fields[0x0B], got.fields[0x8B], got.fields[0x3C]) == (
        b"\x00", b"\x00\x00\x07", b"ABC", b"hi"
    )
    assert got.skipped == [0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0xFD, 0x8B, 0x3C, 0x06, 0x06]
    assert parse_bmps(data) == got.fields


def test_read_bmps_keeps_what_came_before_a_bmp_no_spec_defines() -> None:
    got = read_bmps(b"\x27\x00\x04\x00\x00\x00\x00\x12\x50\x9f\x01\x02\x0b\x00\x00\x07")
    assert got.fields == {0x27: b"\x00", 0x04: bytes.fromhex("000000001250")}
    assert "BMP 9F at offset 9 is not defined by PA00P015" in got.problem
    assert "truncated" in read_bmps(b"\x27\x00\x04\x00\x00").problem
    with pytest.raises(ProtocolError, match="9F"):
        parse_bmps(b"\x9f\x00")


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_read_bmps_never_raises(data: bytes) -> None:
    got = read_bmps(data)
    assert set(got.skipped) <= set(got.fields) and (got.problem != "" or sum(1 for _ in got.fields) >= 0)


async def test_chatty_terminal_payment_stays_approved(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.zvt")
    async with ZvtPinpadSim(profile="chatty") as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, transaction_timeout=3.0)
        result = await pinpad.pay(4200)
        assert result.outcome == "approved"
        assert (result.trace_no, result.receipt_no, result.masked_pan) == (1, 1, "****0119")
        last = await pinpad.last_transaction()
        assert last is not None and (last.outcome, last.amount_cents, last.trace_no) == ("approved", 4200, 1)
        assert "70 71 72 73 74 75 FD" in caplog.text and "skipped by their length" in caplog.text
        assert sim.card_pan not in caplog.text
        await pinpad.close()


async def test_a_bmp_no_spec_defines_does_not_undo_an_approval(caplog: pytest.LogCaptureFixture) -> None:
    async with ZvtPinpadSim(undefined_bmp=True) as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, transaction_timeout=3.0)
        result = await pinpad.pay(1800)
        assert result.outcome == "approved" and (result.trace_no, result.receipt_no) == (1, 1)
        assert "BMP 9F" in caplog.text and "not defined by PA00P015" in caplog.text
        assert (await pinpad.pay(700)).outcome == "approved"  # acknowledged: the terminal went on
        assert [c.amount_cents for c in sim.charges] == [1800, 700]
        await pinpad.close()


# -- per terminal: password, currency, probe ----------------------------------------------------


def test_currency_codes() -> None:
    assert currency_of("CNY") == currency_of(156) == currency_of("156") == currency_of(" cny ") == ("CNY", 156)
    assert currency_of("EUR") == ("EUR", 978)
    with pytest.raises(ValueError, match="JPY has 0 minor-unit digits"):
        currency_of("JPY")
    with pytest.raises(ValueError, match="not an ISO 4217 currency"):
        currency_of("RMB")


async def test_password_and_currency_per_terminal() -> None:
    async with ZvtPinpadSim(password="314159", currency_code=156) as sim:
        pinpad = ZvtPinpad(_info(sim.port, password="314159", currency="CNY"), ack_timeout=1.0)
        result = await pinpad.pay(8800)
        assert (result.outcome, result.currency, result.amount_cents) == ("approved", "CNY", 8800)
        await pinpad.close()
        # A box registering in euros is refused by a terminal set up for yuan: nothing paid, and
        # the pinpad is failed with what to check.
        euros = ZvtPinpad(_info(sim.port, password="314159"), ack_timeout=1.0, refusal_grace=0.2)
        with pytest.raises(RegistrationRefused, match="wrong currency; check the ZVT password and currency"):
            await euros.pay(100)
        health = await euros.health()
        assert health.state == "failed" and "wrong currency" in health.reason
        assert len(sim.charges) == 1


async def test_link_probe_sends_no_command_and_reconnects() -> None:
    async with ZvtPinpadSim(profile="due-tasks") as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=0.5)
        assert pinpad.probe == "link" and pinpad.probe_interval_s is None
        for _ in range(5):
            assert (await pinpad.health()).state == "ready"
        assert sim.commands == [(0x06, 0x00)] and sim.due_tasks_run == []
        sim.drop_connections()  # the terminal rebooted
        async with asyncio.timeout(2):
            while pinpad.connected:
                await asyncio.sleep(0.01)
        assert (await pinpad.health()).state == "ready"
        assert sim.commands == [(0x06, 0x00), (0x06, 0x00)] and sim.connections == 2
        await pinpad.close()

        status = ZvtPinpad(_info(sim.port, probe="status", probe_interval_s="300"), ack_timeout=1.0)
        assert status.probe_interval_s == 300.0
        assert (await status.health()).state == "ready"
        assert sim.due_tasks_run == ["end-of-day"]  # chosen knowingly for this terminal
        await status.close()


# -- serial -------------------------------------------------------------------------------------


@pytest.fixture
async def serial_terminal() -> AsyncIterator[tuple[ZvtPinpadSim, ZvtSerialPinpadSim]]:
    async with ZvtPinpadSim() as terminal, ZvtSerialPinpadSim(terminal) as port:
        yield terminal, port


async def test_serial_abort_does_not_race_the_payment(
    serial_terminal: tuple[ZvtPinpadSim, ZvtSerialPinpadSim],
) -> None:
    terminal, port = serial_terminal
    info = DeviceInfo("pinpad-s", "pinpad", "serial", port.port, "zvt")
    pinpad = ZvtPinpad(info, ack_timeout=1.0, transaction_timeout=10.0)
    try:
        assert (await pinpad.pay(500)).outcome == "approved"
        terminal.card_delay = 5.0
        paying = asyncio.create_task(pinpad.pay(3000))
        async with asyncio.timeout(3):
            while terminal.commands.count((0x06, 0x01)) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the payment waits for the terminal's next frame
        assert await pinpad.abort()
        result = await paying
        assert result.outcome == "aborted" and (0x06, 0xB0) in terminal.commands
        terminal.card_delay = 0.0
        assert (await pinpad.pay(700)).outcome == "approved"  # the line is still in step
        assert [c.amount_cents for c in terminal.charges] == [500, 700]
    finally:
        await pinpad.close()


async def test_serial_please_wait(serial_terminal: tuple[ZvtPinpadSim, ZvtSerialPinpadSim]) -> None:
    terminal, port = serial_terminal
    terminal.auth_ack, terminal.please_wait_s = b"\x84\x9c\x00", 0.2
    pinpad = ZvtPinpad(DeviceInfo("pinpad-s", "pinpad", "serial", port.port, "zvt"), ack_timeout=1.0)
    try:
        assert (await pinpad.pay(1500)).outcome == "approved"
        assert [c.amount_cents for c in terminal.charges] == [1500]
    finally:
        await pinpad.close()


# -- the installer's field check ----------------------------------------------------------------


async def test_field_check_registers_and_asks_the_status_once() -> None:
    async with ZvtPinpadSim(currency_code=156, password="123456") as sim:
        pinpad = ZvtPinpad(_info(sim.port, password="123456", currency="CNY"), ack_timeout=1.0)
        check = await pinpad.field_check(1.0)
        await pinpad.close()
        assert check.ok and [s.name for s in check.steps] == ["registration 06 00", "status enquiry 05 01"]
        assert "terminal 52500001 took password and CNY" in check.steps[0].detail
        assert check.profile == {"currency": "CNY", "probe": "link"}
        assert (0x06, 0x20) not in sim.commands and (0x06, 0x01) not in sim.commands
        euros = ZvtPinpad(_info(sim.port), ack_timeout=1.0, refusal_grace=0.2)
        wrong = await euros.field_check(1.0)
        await euros.close()
        assert not wrong.ok and "password and currency (EUR)" in wrong.steps[0].detail
