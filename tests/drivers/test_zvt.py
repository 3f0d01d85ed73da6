"""ZVT driver against the simulated terminal on real loopback TCP: payments, faults, settling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.zvt import (
    Apdu,
    PaymentResult,
    ZvtPinpad,
    crc_kermit,
    decode_apdu,
    decode_serial_frame,
    encode_serial_frame,
    parse_bmps,
)
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, PaymentError, ProtocolError
from edgehub.sim.pinpad import ZvtPinpadSim


def _info(port: int) -> DeviceInfo:
    return DeviceInfo(
        device_id="pinpad-1", kind="pinpad", transport="tcp", address=f"127.0.0.1:{port}", driver="zvt"
    )


@pytest.fixture
async def sim() -> AsyncIterator[ZvtPinpadSim]:
    async with ZvtPinpadSim() as s:
        yield s


@pytest.fixture
async def pinpad(sim: ZvtPinpadSim) -> AsyncIterator[ZvtPinpad]:
    p = ZvtPinpad(_info(sim.port), ack_timeout=1.0, transaction_timeout=3.0)
    await p.open()
    yield p
    await p.close()


async def test_registration_learns_terminal_id(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    assert pinpad.terminal_id == sim.terminal_id
    assert sim.commands[0] == (0x06, 0x00)


async def test_payment_approved(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    result = await pinpad.pay(1250)
    assert result.outcome == "approved" and result.charged
    assert (result.amount_cents, result.currency) == (1250, "EUR")
    assert result.receipt_no == 1 and result.trace_no == 1
    assert result.masked_pan == "****0119"
    assert result.terminal_id == sim.terminal_id
    assert [c.amount_cents for c in sim.charges] == [1250]
    assert pinpad.last_trace_no == 1


async def test_full_pan_from_terminal_never_leaves_the_driver(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    sim.send_full_pan = True
    result = await pinpad.pay(999)
    assert result.masked_pan == "****0119"
    text = repr(result) + str(result) + repr(await pinpad.last_transaction())
    assert sim.card_pan not in text and sim.card_pan[:6] not in text


async def test_declined_by_amount_rule_and_by_knob(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    sim.decline_over_cents = 1000
    result = await pinpad.pay(5000)
    assert result.outcome == "declined" and result.result_code == 0x05 and not result.charged
    sim.next_result_code = 0x78
    result = await pinpad.pay(500)
    assert result.outcome == "declined" and "expired" in result.reason
    assert sim.charges == []
    assert (await pinpad.pay(700)).outcome == "approved"


async def test_refund_and_reversal(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    paid = await pinpad.pay(4200)
    assert paid.receipt_no is not None
    refund = await pinpad.refund(200)
    assert refund.outcome == "approved" and refund.kind == "refund"
    reversal = await pinpad.reverse(paid.receipt_no)
    assert reversal.outcome == "approved" and reversal.kind == "reversal"
    again = await pinpad.reverse(paid.receipt_no)
    assert again.outcome == "declined" and "already reversed" in again.reason
    assert sim.net_charged_cents == -200


async def test_abort_while_waiting_for_card(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    assert not await pinpad.abort()  # nothing running
    sim.card_delay = 5.0
    paying = asyncio.create_task(pinpad.pay(3000))
    async with asyncio.timeout(2):
        while (0x06, 0x01) not in sim.commands:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert await pinpad.abort()
    result = await paying
    assert result.outcome == "aborted"
    assert sim.charges == []
    assert (0x06, 0xB0) in sim.commands


async def test_status_and_health(sim: ZvtPinpadSim) -> None:
    pinpad = ZvtPinpad(_info(sim.port), ack_timeout=1.0, probe="status")
    assert pinpad.probe_interval_s == 30.0  # asked at a status prober's pace, not the watchdog's 2 s
    assert await pinpad.status() == 0
    assert (await pinpad.health()).state == "ready"
    sim.terminal_status = 0xCC
    health = await pinpad.health()
    assert health.state == "degraded" and "printer" in health.reason
    sim.terminal_status = 0xDF
    assert (await pinpad.health()).state == "failed"
    await pinpad.close()


@pytest.mark.parametrize("probe", ["link", "status"])
async def test_health_when_terminal_gone(probe: str) -> None:
    async with ZvtPinpadSim() as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=0.5, probe=probe)
        await pinpad.open()
    async with asyncio.timeout(2):
        while pinpad.connected:  # the reset reaches the event loop
            await asyncio.sleep(0.01)
    health = await pinpad.health()
    assert health.state == "failed" and health.reason
    await pinpad.close()


async def test_unreachable_terminal_raises_before_anything_is_sent() -> None:
    async with ZvtPinpadSim() as sim:
        port = sim.port
    pinpad = ZvtPinpad(_info(port), connect_timeout=0.5)
    with pytest.raises(DeviceUnavailable):
        await pinpad.pay(100)


async def test_wrong_password_is_refused(sim: ZvtPinpadSim) -> None:
    pinpad = ZvtPinpad(_info(sim.port), password="123456")
    with pytest.raises(PaymentError, match="refused"):
        await pinpad.open()


async def test_last_transaction(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    assert await pinpad.last_transaction() is None
    paid = await pinpad.pay(777)
    last = await pinpad.last_transaction()
    assert last is not None
    assert (last.outcome, last.amount_cents, last.trace_no, last.receipt_no) == (
        "approved",
        777,
        paid.trace_no,
        paid.receipt_no,
    )
    sim.next_result_code = 0x05
    await pinpad.pay(888)
    last = await pinpad.last_transaction()
    assert last is not None and last.outcome == "declined" and last.amount_cents == 888


FAULTS = [
    ("before_ack", "not_found"),
    ("after_intermediate", "not_found"),
    ("after_charge", "approved"),
    ("hang", "not_found"),
]


@pytest.mark.parametrize(("fault", "truth"), FAULTS)
async def test_terminal_dies_mid_payment_is_settled_and_charged_once(fault: str, truth: str) -> None:
    async with ZvtPinpadSim() as sim:
        pinpad = ZvtPinpad(_info(sim.port), ack_timeout=0.5, transaction_timeout=0.6)
        await pinpad.open()
        try:
            warmup = await pinpad.pay(100)
            assert warmup.outcome == "approved"
            baseline = warmup.trace_no

            sim.fault = fault  # type: ignore[assignment]
            pending = await pinpad.pay(2500, after_trace_no=baseline)
            assert pending.outcome == "unknown"
            assert pending.after_trace_no == baseline and "settle" in pending.reason

            settled = await pinpad.settle(pending)
            assert settled.outcome == truth
            # The payment flow: pay again only when the terminal proved nothing was charged.
            if settled.outcome == "not_found":
                again = await pinpad.pay(2500, after_trace_no=baseline)
                assert again.outcome == "approved"
            assert [c.amount_cents for c in sim.charges].count(2500) == 1
        finally:
            await pinpad.close()


async def test_first_ever_payment_lost_before_ack_is_not_found(sim: ZvtPinpadSim, pinpad: ZvtPinpad) -> None:
    sim.fault = "before_ack"
    pending = await pinpad.pay(1000)
    assert pending.outcome == "unknown" and pending.after_trace_no is None
    assert (await pinpad.settle(pending)).outcome == "not_found"


async def test_settle_without_baseline_and_same_amount_stays_unknown(sim: ZvtPinpadSim) -> None:
    first = ZvtPinpad(_info(sim.port), ack_timeout=0.5)
    await first.pay(1000)
    await first.close()
    sim.fault = "after_charge"
    second = ZvtPinpad(_info(sim.port), ack_timeout=0.5, transaction_timeout=0.6)  # a restarted daemon
    pending = await second.pay(1000)
    settled = await second.settle(pending)
    assert settled.outcome == "unknown" and "journal" in settled.reason
    await second.close()


# -- codec ------------------------------------------------------------------------------------


def test_apdu_lengths() -> None:
    short = Apdu(0x06, 0x01, b"\x04" + bytes(6))
    assert short.encode()[:3] == b"\x06\x01\x07"
    long = Apdu(0x04, 0x0F, bytes(300))
    raw = long.encode()
    assert raw[:5] == b"\x04\x0f\xff\x2c\x01"
    assert decode_apdu(raw) == (long, len(raw))
    assert decode_apdu(raw[:-1]) is None
    assert "bytes" in repr(long) and "00 00" not in repr(long)


@settings(max_examples=100)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600))
def test_apdu_round_trip(cls: int, instr: int, data: bytes) -> None:
    apdu = Apdu(cls, instr, data)
    raw = apdu.encode()
    assert decode_apdu(raw + b"\x80") == (apdu, len(raw))


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_bmp_parser_never_crashes(data: bytes) -> None:
    try:
        fields = parse_bmps(data)
    except ProtocolError:
        return
    assert all(isinstance(k, int) for k in fields)


def test_crc_kermit_check_value() -> None:
    assert crc_kermit(b"123456789") == 0x2189


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_serial_frame_round_trip(payload: bytes) -> None:
    frame = encode_serial_frame(payload)
    assert decode_serial_frame(frame + b"\x10") == (payload, len(frame))
    assert decode_serial_frame(frame[:-1]) is None


def test_serial_frame_corruption_is_protocol_error() -> None:
    frame = bytearray(encode_serial_frame(b"\x06\x0f\x00"))
    frame[3] ^= 0x01
    with pytest.raises(ProtocolError, match="CRC"):
        decode_serial_frame(frame)
    with pytest.raises(ProtocolError):
        decode_serial_frame(b"\x10\x02\x06\x10\x07")
    with pytest.raises(ProtocolError):
        decode_serial_frame(b"\x02\x10")


# -- a terminal that sends garbage --------------------------------------------------------------


async def _evil_terminal_run(
    after_ack: bytes, send_ack: bool
) -> tuple[PaymentResult | None, BaseException | None]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(3)
                await reader.readexactly(head[2])
                if head[:2] == b"\x06\x00":
                    writer.write(b"\x80\x00\x00\x06\x0f\x00")
                elif head[:2] == b"\x80\x00":
                    continue
                else:
                    writer.write((b"\x80\x00\x00" if send_ack else b"") + after_ack)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pinpad = ZvtPinpad(_info(port), ack_timeout=0.05, transaction_timeout=0.1)
    try:
        async with asyncio.timeout(3):
            await pinpad.open()
            try:
                result = await pinpad.pay(100)
            except PaymentError as exc:  # refused outright (84 xx, then silence): nothing was charged
                return None, exc
            try:
                await pinpad.last_transaction()
            except DeviceError as exc:
                return result, exc
            return result, None
    finally:
        await pinpad.close()
        server.close()
        await server.wait_closed()


async def _evil_once(after_ack: bytes, send_ack: bool) -> None:
    result, error = await _evil_terminal_run(after_ack, send_ack)
    if result is None:
        assert isinstance(error, PaymentError) and "refused" in str(error)
        return
    # Garbage never turns into "approved" without a completion, and never into a crash.
    assert result.outcome in ("unknown", "declined", "aborted", "approved")
    if result.outcome == "approved":
        assert b"\x06\x0f" in after_ack
    if error is not None:
        assert isinstance(error, (ProtocolError, DeviceTimeout, DeviceUnavailable, PaymentError))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=40)
    | st.sampled_from(
        [b"\x04\xff", b"\x04\x0f\x05\x27", b"\x06\x1e\x00", b"\x04\x0f\xff\x10", b"\x04\x0f\x02\x99\x99"]
    ),
    st.booleans(),
)
@example(b"\x84\x01\x00", False)  # a refusal, then silence: PaymentError, nothing charged
def test_garbage_from_terminal_never_crashes_or_hangs(after_ack: bytes, send_ack: bool) -> None:
    asyncio.run(_evil_once(after_ack, send_ack))


async def test_truncated_status_information_is_unknown_not_approved() -> None:
    result, error = await _evil_terminal_run(b"\x04\x0f\x10\x27\x00\x04\x00", True)
    assert result is not None and result.outcome == "unknown" and "truncated" in result.reason
    assert isinstance(error, (ProtocolError, DeviceTimeout))
