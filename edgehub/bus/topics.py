"""Every MQTT topic of the public API, in one place.

The tree is ``edgehub/v1/{store}/…``; it is documented in docs/asyncapi.yaml. Nothing else in
the code base spells a topic string.
"""

from __future__ import annotations

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
