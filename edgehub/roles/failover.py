"""The failover and failback rule: which bound device serves a role, given what the registry says.

Kept free of I/O and clocks so the rule can be read and tested on its own:

- the serving device keeps the role while it is usable (ready or degraded, present) and not held;
- a pinpad holding a payment whose outcome is unknown is *held*: it answers, but a new payment
  on it would replace the last transaction its settling reads, so it serves no role until the
  payment is settled (``held`` maps it to the reason);
- when it stops being usable the role moves at once to the first usable device in binding
  order (primary first, then the spares);
- a device earlier in the order takes the role back only after it stayed usable for
  ``failback_after_s``, and never while a job runs on the role (``busy``), so a flapping primary
  does not drag the role to and fro and no ticket is cut in half by a failback;
- a role nobody serves yet (at start) waits up to ``FIRST_CHECK_GRACE_S`` for an earlier device
  whose first check is still under way (or that discovery has not found yet) before it takes a
  later one: otherwise the spare whose probe answered a millisecond sooner served the role at
  every boot, and the primary took it back only ``failback_after_s`` later (``make run``: the
  receipts of the first 10 s went to a kitchen printer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgehub.devices.registry import DeviceEntry


@dataclass
class RoleSeat:
    """One role's binding and who serves it now (mutable, owned by ``Roles``)."""

    name: str
    kind: str
    devices: tuple[str, ...]
    failback_after_s: float
    source: str = "config"  # where the binding came from: config or api
    serving: str | None = None
    reason: str = "not started"
    since: float = 0.0  # monotonic time of the last change of ``serving``
    busy: int = 0  # jobs or payments running on the serving device right now


FIRST_CHECK_GRACE_S = 3.0


def usable(entry: DeviceEntry | None, kind: str) -> bool:
    return entry is not None and entry.present and entry.health.usable and entry.info.kind == kind


def unchecked(entry: DeviceEntry | None) -> bool:
    """Not found yet, or found and its first check not done: it may well be usable in a moment."""
    return entry is None or (entry.present and entry.health.state == "unknown")


def why_not(device_id: str, entry: DeviceEntry | None, kind: str, held: Mapping[str, str] | None = None) -> str:
    """One device's reason for not serving, in words for the person at the box."""
    if held and device_id in held and usable(entry, kind):
        return f"{device_id} {held[device_id]}"
    if entry is None:
        return f"{device_id} not found"
    if not entry.present:
        return f"{device_id} gone"
    if entry.info.kind != kind:
        return f"{device_id} is a {entry.info.kind}, not a {kind}"
    return f"{device_id} {entry.health.state}{': ' + entry.health.reason if entry.health.reason else ''}"


def choose_serving(
    seat: RoleSeat,
    entries: Mapping[str, DeviceEntry | None],
    healthy_since: Mapping[str, float],
    now: float,
    held: Mapping[str, str] | None = None,
) -> tuple[str | None, str]:
    """(device that should serve ``seat`` now or None, why). Pure: changes nothing."""
    held = held or {}
    candidates = [d for d in seat.devices if usable(entries.get(d), seat.kind) and d not in held]
    current = seat.serving
    if current is not None and current in candidates:
        if seat.busy == 0:
            for device in candidates:
                if device == current:
                    break
                since = healthy_since.get(device)
                if since is not None and now - since >= seat.failback_after_s:
                    return device, f"failback to {device} (healthy for {now - since:.1f}s)"
        return current, ""
    if candidates:
        chosen = candidates[0]
        if current is None:
            earlier = seat.devices[: seat.devices.index(chosen)]
            waiting = [d for d in earlier if unchecked(entries.get(d))]
            if waiting and now - seat.since < FIRST_CHECK_GRACE_S:
                return None, f"{seat.name}: waiting for the first check of {waiting[0]} before taking {chosen}"
            return chosen, ""
        return chosen, f"failover from {why_not(current, entries.get(current), seat.kind, held)}"
    if not seat.devices:
        return None, f"{seat.name}: no {seat.kind} bound"
    details = "; ".join(why_not(d, entries.get(d), seat.kind, held) for d in seat.devices)
    return None, f"{seat.name}: no healthy {seat.kind} ({details})"
