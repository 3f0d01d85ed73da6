"""Role bindings: config, the failover rule, rebinding from the API, retained state, scan/weight relay."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from drivers.base import DeviceInfo, Health
from edgehub.bus import payloads
from edgehub.config import ConfigError, load_config
from edgehub.devices.registry import DeviceEntry
from edgehub.roles.failover import RoleSeat, choose_serving
from edgehub.sim.printer import PrinterSim
from edgehub.sim.scanner import SerialScannerSim
from tests.conftest import API_TOKEN, write_config
from tests.roles.conftest import Store, Till, printer_info


def entry(device_id: str, state: str = "ready", kind: str = "printer") -> DeviceEntry:
    info = DeviceInfo(device_id, kind, "tcp", "127.0.0.1:9100", "escpos")  # type: ignore[arg-type]
    return DeviceEntry(info, None, Health(state, "" if state == "ready" else "paper end"), 0.0, True)  # type: ignore[arg-type]


def test_rule_fails_over_at_once_and_fails_back_only_when_settled() -> None:
    seat = RoleSeat("kitchen-printer.grill", "printer", ("a", "b", "c"), failback_after_s=10)
    seat.serving = "a"
    entries = {"a": entry("a", "failed"), "b": entry("b"), "c": entry("c")}
    assert choose_serving(seat, entries, {}, now=0)[0] == "b"
    seat.serving = "b"
    entries["a"] = entry("a")
    assert choose_serving(seat, entries, {"a": 5.0}, now=10)[0] == "b"  # healthy 5 s of 10
    seat.busy = 1
    assert choose_serving(seat, entries, {"a": 0.0}, now=10)[0] == "b"  # never mid-job
    seat.busy = 0
    device, why = choose_serving(seat, entries, {"a": 0.0}, now=10)
    assert device == "a" and why.startswith("failback to a")
    down = {d: entry(d, "failed") for d in "abc"}
    device, why = choose_serving(seat, down, {}, now=0)
    assert device is None and why.startswith("kitchen-printer.grill: no healthy printer (a failed: paper end")
    assert choose_serving(seat, {"a": entry("a", kind="scale")}, {}, 0)[0] is None


def test_rule_a_held_pinpad_serves_no_role_until_released() -> None:
    seat = RoleSeat("pinpad.till-1", "pinpad", ("a", "b"), failback_after_s=10)
    seat.serving, seat.busy = "a", 1  # even mid-payment: the held pinpad must take no new one
    entries = {"a": entry("a", kind="pinpad"), "b": entry("b", kind="pinpad")}
    held = {"a": "holds payment p-1 (sale s-1) whose outcome is unknown"}
    device, why = choose_serving(seat, entries, {"a": 0.0, "b": 0.0}, now=100, held=held)
    assert (device, why) == ("b", "failover from a holds payment p-1 (sale s-1) whose outcome is unknown")
    seat.serving = None
    device, why = choose_serving(seat, {"a": entries["a"]}, {}, now=100, held=held)
    assert device is None and "a holds payment p-1" in why
    seat.serving, seat.busy = "b", 0
    assert choose_serving(seat, entries, {"a": 0.0, "b": 0.0}, now=100)[0] == "a"  # released: failback


def test_rule_waits_briefly_at_start_for_a_primary_not_checked_yet() -> None:
    # At start the spare's probe may answer first: the role waits for the primary's first check
    # instead of putting receipts on the spare until failback.
    seat = RoleSeat("receipt-printer", "printer", ("a", "b"), failback_after_s=10, since=100.0)
    entries: dict[str, DeviceEntry | None] = {"a": entry("a", "unknown"), "b": entry("b")}
    device, why = choose_serving(seat, entries, {"b": 100.0}, now=100.5)
    assert device is None and why == "receipt-printer: waiting for the first check of a before taking b"
    entries["a"] = entry("a")
    assert choose_serving(seat, entries, {"a": 100.6, "b": 100.0}, now=100.6)[0] == "a"
    # Not found yet counts as not checked yet; a primary that failed its check does not.
    assert choose_serving(seat, {"a": None, "b": entry("b")}, {}, now=101)[0] is None
    assert choose_serving(seat, {"a": entry("a", "failed"), "b": entry("b")}, {}, now=100.5)[0] == "b"
    # The wait is bounded: a primary whose check never ends does not keep the role down.
    device, why = choose_serving(seat, {"a": entry("a", "unknown"), "b": entry("b")}, {}, now=103)
    assert device == "b" and why == ""
    # A role already served fails over at once, whatever the earlier devices' state.
    seat.serving = "a"
    assert choose_serving(seat, {"a": entry("a", "failed"), "b": entry("b")}, {}, now=100.5)[0] == "b"


def test_config_roles_checked_with_line_numbers(tmp_path: Any) -> None:
    path = write_config(tmp_path, extra='[[role]]\nname = "printer"\ndevices = ["a", "a"]\nspare = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "role[0].name: 'printer' must be one of kitchen-printer" in text
    assert "role[0].devices: lists a device twice" in text
    assert "role[0].spare: unknown key" in text
    assert all(":" in line.split(" ")[0] for line in err.value.problems)  # FILE:LINE: first
    ok = load_config(write_config(tmp_path / "ok"))
    assert ok.roles == ()


def test_example_config_binds_roles() -> None:
    from tests.conftest import REPO

    config = load_config(REPO / "config" / "edgehub.toml")
    assert any(r.name.startswith("kitchen-printer.") and len(r.devices) >= 2 for r in config.roles)


def _put(store: Store, role: str, body: object, token: str = API_TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{store.api.port}/api/v1/roles/{role}",
        method="PUT",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_rebind_from_the_api_is_journaled_published_and_audited(store: Store) -> None:
    import asyncio

    async with PrinterSim() as sim, Till(store.config) as till:
        await store.add(printer_info("prn-new", sim))
        status, body = await asyncio.to_thread(
            _put, store, "receipt-printer", {"devices": ["prn-new", "prn-c"]}
        )
        assert status == 200 and body["device"] == "prn-new" and body["binding_source"] == "api"
        # Neither a failover nor a failback: the installer moved it, and the reason says so.
        assert body["reason"] == "bound to prn-new, prn-c by 127.0.0.1"
        binding_topic = store.topics.role_binding("receipt-printer")
        await store.wait_for(
            lambda: any(t == binding_topic and d["devices"] == ["prn-new", "prn-c"] for t, d in till.events)
        )
        await store.wait_for(lambda: (till.state("receipt-printer") or {}).get("device") == "prn-new")
        status, body = await asyncio.to_thread(_put, store, "receipt-printer", {"devices": "prn-c"})
        assert status == 400 and body["error"].startswith("devices:")
        status, _ = await asyncio.to_thread(
            _put, store, "receipt-printer", {"devices": []}, "wrong-token-123456"
        )
        assert status == 401
        status, body = await asyncio.to_thread(_put, store, "scanner", {"devices": ["prn-new"]})
        assert (status, body["error"]) == (400, "devices[0]: prn-new is a printer, not a scanner")
        status, body = await asyncio.to_thread(_put, store, "toaster", {"devices": []})
        assert status == 400 and body["error"].startswith("role:")

        rows = await store.journal.read(
            lambda c: c.execute("SELECT payload FROM outbox WHERE stream='audit'").fetchall()
        )
        events = [json.loads(r[0]) for r in rows]
        assert any(e["event"] == "binding" and e["devices"] == ["prn-new", "prn-c"] for e in events)
        assert [e["reason"] for e in events if e["event"] == "serving" and e["device"] == "prn-new"] == [
            "bound to prn-new, prn-c by 127.0.0.1"]


async def test_scans_and_weights_come_out_on_the_role(store: Store) -> None:
    # Scanners and scales serve roles like printers do; terminals listen on the role only.
    async with Till(store.config) as till, SerialScannerSim() as s1, SerialScannerSim() as s2:
        roles = store.roles
        await roles.rebind("scanner.front", ("scn-1", "scn-2"), 0.0, who="test")
        for device, sim in (("scn-1", s1), ("scn-2", s2)):
            await store.add(DeviceInfo(device, "scanner", "serial", sim.port, "serial_scanner"))
        await store.wait_for(lambda: roles.serving("scanner.front") == "scn-1")
        await store.bus.publish(
            store.topics.device_event("scn-1", "scan"), payloads.scan("scn-1", "4006381333931", 1.0)
        )
        await store.bus.publish(
            store.topics.device_event("scn-2", "scan"), payloads.scan("scn-2", "IGNORED", 1.0)
        )
        s1.unplug()
        await store.wait_for(lambda: roles.serving("scanner.front") == "scn-2")
        await store.bus.publish(
            store.topics.device_event("scn-2", "scan"), payloads.scan("scn-2", "96385074", 2.0)
        )
        topic = store.topics.role_event("scanner.front", "scan")
        await store.wait_for(lambda: len([d for t, d in till.events if t == topic]) == 2)
        scans = [d for t, d in till.events if t == topic]
        assert [(s["code"], s["device_id"], s["role"]) for s in scans] == [
            ("4006381333931", "scn-1", "scanner.front"),
            ("96385074", "scn-2", "scanner.front"),
        ]


async def test_terminal_cannot_fake_role_state(store: Store) -> None:
    async with Till(store.config) as till:
        topic = store.topics.role_state("receipt-printer")
        await store.wait_for(lambda: till.state("receipt-printer") is not None)
        await till.client.publish(topic, b'{"state":"serving","device":"evil"}', qos=1)
        # A command sent after the fake state: its reply comes back once the broker has dealt
        # with everything before it, so a state it had let through would be here by then.
        await till.request("receipt-printer", "print", {})
        await store.wait_for(lambda: any(d.get("status") == "rejected" for _, d in till.replies))
        assert all(d.get("device") != "evil" for t, d in till.events if t == topic)


async def test_hub_reports_roles_in_status(hub: Any) -> None:
    status = await hub.status()
    assert "roles" in status and isinstance(status["roles"]["roles"], list)
    assert hub.kitchen.printer is not None


async def test_every_health_change_reaches_listeners_while_it_is_the_state() -> None:
    """A probe that finishes while the registry still waits for the broker to acknowledge an
    earlier change must not hide that change from the roles: each listener sees each state,
    the retained state ends true, and the alert for a change describes that change."""
    import asyncio

    from edgehub.bus.topics import Topics
    from edgehub.devices.registry import DeviceRegistry

    topics = Topics("s1")
    gate, held = asyncio.Event(), asyncio.Event()
    sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        doc = json.loads(payload)
        sent.append((topic, doc))  # on the wire in call order; then the (slow) PUBACK
        if topic == topics.device_state("pad-1") and doc["state"] == "failed" and not gate.is_set():
            held.set()
            await gate.wait()

    registry = DeviceRegistry(topics, publish)
    seen: list[tuple[str, str]] = []
    registry.subscribe(lambda e: seen.append((e.kind, e.entry.health.state)))
    async with registry:
        await registry.upsert(DeviceInfo("pad-1", "pinpad", "tcp", "127.0.0.1:1", "zvt"))
        await registry.set_health("pad-1", Health("ready"))
        failing = asyncio.create_task(registry.set_health("pad-1", Health("failed", "payment outcome unknown")))
        await held.wait()
        await registry.set_health("pad-1", Health("ready"))  # the watchdog's probe of the rebooted pad
        gate.set()
        await failing
    assert seen == [("added", "unknown"), ("health", "ready"), ("health", "failed"), ("health", "ready")]
    states = [d["state"] for t, d in sent if t == topics.device_state("pad-1")]
    assert states == ["unknown", "ready", "failed", "ready"]
    alerts = sorted((d["state"], d["previous"], d["reason"]) for t, d in sent if t == topics.alert)
    assert alerts == [
        ("failed", "ready", "payment outcome unknown"),
        ("ready", "failed", ""),
        ("ready", "unknown", ""),
    ]
