"""Every MQTT topic of the public API, in one place.

The tree is ``edgehub/v1/{store}/…``; it is documented in docs/asyncapi.yaml. Nothing else in
the code base spells a topic string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

API_VERSION = "v1"


@dataclass(frozen=True)
class Topics:
    store_id: str

    @property
    def root(self) -> str:
        return f"edgehub/{API_VERSION}/{self.store_id}"

    # hub
    @property
    def hub_state(self) -> str:
        return f"{self.root}/hub/$state"

    @property
    def hub_copies(self) -> str:
        """Retained: how many boxes hold every acked order (a pair's ``one copy since …``)."""
        return f"{self.root}/hub/$copies"

    @property
    def deadletter(self) -> str:
        return f"{self.root}/hub/deadletter"

    # POS terminals
    def order(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/order"

    def ack(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/ack"

    def terminal_tree(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/#"

    @property
    def all_orders(self) -> str:
        return f"{self.root}/pos/+/order"

    def terminal_of(self, topic: str) -> str | None:
        """The terminal id in ``…/pos/{terminal}/order``, or None for any other topic."""
        prefix = f"{self.root}/pos/"
        if not topic.startswith(prefix) or not topic.endswith("/order"):
            return None
        terminal = topic[len(prefix) : -len("/order")]
        return terminal if terminal and "/" not in terminal else None

    # POS changes to an accepted order (acked on ``ack(terminal)`` like orders)
    def amend(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/amend"

    def cancel(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/cancel"

    def notice(self, terminal: str) -> str:
        """Non-retained QoS 1 to a till: another till changed one of its orders."""
        return f"{self.root}/pos/{terminal}/notice"

    @property
    def all_amends(self) -> str:
        return f"{self.root}/pos/+/amend"

    @property
    def all_cancels(self) -> str:
        return f"{self.root}/pos/+/cancel"

    def pos_terminal_of(self, topic: str, leaf: str) -> str | None:
        """The terminal id in ``…/pos/{terminal}/{leaf}``, or None for any other topic."""
        prefix, suffix = f"{self.root}/pos/", f"/{leaf}"
        if not topic.startswith(prefix) or not topic.endswith(suffix):
            return None
        terminal = topic[len(prefix) : -len(suffix)]
        return terminal if terminal and "/" not in terminal else None

    # kitchen stations (kds terminals may read and write ``…/kds/#``)
    def kds(self, station: str) -> str:
        return f"{self.root}/kds/{station}"

    def kds_event(self, station: str) -> str:
        """Non-retained QoS 1: every ticket change at the station, with a per-station seq."""
        return f"{self.root}/kds/{station}/event"

    def kds_alert(self, station: str) -> str:
        """Non-retained QoS 1: a ticket crossed into red."""
        return f"{self.root}/kds/{station}/alert"

    def kds_command(self, station: str) -> str:
        """A screen's command (start, bump, serve, recall, priority); answered on kds_reply."""
        return f"{self.root}/kds/{station}/command"

    def kds_reply(self, station: str) -> str:
        return f"{self.root}/kds/{station}/reply"

    def kds_snapshot_request(self, station: str) -> str:
        """A screen asks for the station's full state; answered on kds_snapshot (or the MQTT 5
        response topic)."""
        return f"{self.root}/kds/{station}/snapshot/get"

    def kds_snapshot(self, station: str) -> str:
        return f"{self.root}/kds/{station}/snapshot"

    @property
    def all_kds_commands(self) -> str:
        return f"{self.root}/kds/+/command"

    @property
    def all_kds_snapshot_requests(self) -> str:
        return f"{self.root}/kds/+/snapshot/get"

    def station_of(self, topic: str) -> str | None:
        """The station in ``…/kds/{station}/…``, or None for any other topic."""
        prefix = f"{self.root}/kds/"
        if not topic.startswith(prefix):
            return None
        station = topic[len(prefix) :].partition("/")[0]
        return station or None

    # ready back to the front (edgehub/kitchen/progress.py, ready.py): only the hub writes these
    def order_ready(self, terminal: str) -> str:
        """Non-retained QoS 1 ``order-ready/1``: an order of ``terminal`` (or one of its tickets)
        is ready, went back to the kitchen, or left it. Read by that terminal and by every
        terminal of kind ``pager`` or ``display``."""
        return f"{self.root}/ready/{terminal}"

    @property
    def all_order_ready(self) -> str:
        return f"{self.root}/ready/+"

    @property
    def pickup_board(self) -> str:
        """Retained ``pickup-board/1``: the numbers in preparation and ready, for the pass."""
        return f"{self.root}/pickup/board"

    # front of house: what the tills, handhelds and screens share through the box
    @property
    def menu(self) -> str:
        """Retained: the last menu the cloud sent (``menu/1``), readable by every terminal."""
        return f"{self.root}/menu"

    @property
    def checks_event(self) -> str:
        """Non-retained QoS 1: an open check changed (``check-event/1``, numbered by ``seq``)."""
        return f"{self.root}/checks/event"

    def checks_request(self, terminal: str) -> str:
        """A till asks for the store's open checks; answered on its response topic or ``checks``."""
        return f"{self.root}/pos/{terminal}/checks/get"

    def checks(self, terminal: str) -> str:
        return f"{self.root}/pos/{terminal}/checks"

    @property
    def all_checks_requests(self) -> str:
        return f"{self.root}/pos/+/checks/get"

    def presence(self, terminal: str) -> str:
        """Retained: whether the terminal is connected now (``presence/1``), from the broker's events."""
        return f"{self.root}/presence/{terminal}"

    @property
    def all_presence(self) -> str:
        return f"{self.root}/presence/+"

    def presence_terminal_of(self, topic: str) -> str | None:
        prefix = f"{self.root}/presence/"
        terminal = topic[len(prefix):] if topic.startswith(prefix) else ""
        return terminal if terminal and "/" not in terminal else None

    # the broker's own topics (only the hub may read them)
    @property
    def broker_log(self) -> str:
        """Mosquitto's notices (``log_dest topic``): its connection and disconnection lines."""
        return "$SYS/broker/log/N"

    @property
    def broker_clients(self) -> str:
        return "$SYS/broker/clients/connected"

    # devices (ids are made topic-safe: no "/", "+", "#")
    def device(self, device_id: str) -> str:
        return f"{self.root}/dev/{topic_level(device_id)}"

    def device_description(self, device_id: str) -> str:
        """Retained: what the device is (kind, model, transport, address, driver)."""
        return f"{self.device(device_id)}/$description"

    def device_state(self, device_id: str) -> str:
        """Retained: ready / degraded / failed / unknown / gone, with the reason."""
        return f"{self.device(device_id)}/$state"

    def device_event(self, device_id: str, event: str) -> str:
        """Non-retained QoS 1 events from a device: ``scan``, ``weight``."""
        return f"{self.device(device_id)}/evt/{event}"

    @property
    def all_device_states(self) -> str:
        return f"{self.root}/dev/+/$state"

    @property
    def alert(self) -> str:
        """Non-retained QoS 1: something a person should know (a device failed or recovered)."""
        return f"{self.root}/hub/alert"

    # roles: what terminals address, whichever physical device serves the role at the moment
    def role_binding(self, role: str) -> str:
        """Retained: the devices bound to the role, primary first."""
        return f"{self.root}/role/{role}/$binding"

    def role_state(self, role: str) -> str:
        """Retained: the device serving the role, or down with the reason."""
        return f"{self.root}/role/{role}/$state"

    def role_command(self, role: str, command: str, terminal: str) -> str:
        """Requests to a role: ``print``, ``pay``, ``settle``, the last level naming the requesting
        terminal (the broker's ACL lets each terminal write only its own)."""
        return f"{self.root}/role/{role}/cmd/{command}/{terminal}"

    def reply(self, terminal: str) -> str:
        """Where answers to a terminal's requests go when it names no reply topic of its own."""
        return f"{self.root}/pos/{terminal}/reply"

    def own_tree(self, terminal: str) -> str:
        """The prefix of every topic a terminal may name for its replies."""
        return f"{self.root}/pos/{terminal}/"

    def role_event(self, role: str, event: str) -> str:
        """Non-retained QoS 1 from the serving device: ``scan``, ``weight``."""
        return f"{self.root}/role/{role}/evt/{event}"

    @property
    def all_role_commands(self) -> str:
        return f"{self.root}/role/+/cmd/+/+"

    @property
    def unsigned_role_commands(self) -> str:
        """``…/role/{role}/cmd/{command}`` without the terminal: refused, with the reason."""
        return f"{self.root}/role/+/cmd/+"

    @property
    def all_device_events(self) -> str:
        return f"{self.root}/dev/+/evt/+"

    def role_command_of(self, topic: str) -> tuple[str, str, str | None] | None:
        """(role, command, terminal) of ``…/role/{role}/cmd/{command}/{terminal}`` (terminal None
        for the unsigned ``…/cmd/{command}``), or None for any other topic."""
        prefix = f"{self.root}/role/"
        if not topic.startswith(prefix):
            return None
        role, sep, rest = topic[len(prefix) :].partition("/cmd/")
        command, _, terminal = rest.partition("/")
        if not sep or not role or not command or "/" in role or "/" in terminal:
            return None
        return role, command, terminal or None

    def kds_reply_tree(self, station: str) -> str:
        """The prefix of every topic a screen may name for the answers to its commands: under
        the station's own reply topic, which no screen takes for an event or a snapshot."""
        return f"{self.kds_reply(station)}/"


def topic_level(text: str) -> str:
    """``text`` as one MQTT topic level: the wildcards and the separator become ``_``."""
    return re.sub(r"[/+#\x00]", "_", text) or "_"
