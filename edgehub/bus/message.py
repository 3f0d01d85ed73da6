"""What an MQTT handler receives: one message as it came from a broker, in the project's own words.

The topic as text, the payload as bytes, and the MQTT 5 properties a handler may act on
(request/response, user properties, message expiry); ``qos`` and ``mid`` let the session that
received it acknowledge it once it was handled. Handlers never see paho's objects.
"""

from __future__ import annotations


class Message:
    __slots__ = ("correlation_data", "message_expiry", "mid", "payload", "qos", "response_topic", "retain",
                 "topic", "user_properties")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, mid: int = 0, *,
                 response_topic: str | None = None, correlation_data: bytes | None = None,
                 user_properties: tuple[tuple[str, str], ...] = (), message_expiry: int | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.mid = mid  # the packet id a QoS 1 message is acknowledged with (0 at QoS 0)
        self.response_topic = response_topic
        self.correlation_data = correlation_data
        self.user_properties = user_properties
        self.message_expiry = message_expiry  # seconds the broker had left to keep it, if it had a limit

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {len(self.payload)} bytes, qos={self.qos}, retain={self.retain})"
