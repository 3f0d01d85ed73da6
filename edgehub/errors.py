"""The one error family of edgehub.

Every failure a person can act on is an ``EdgehubError`` subclass whose message says what went
wrong and where. Library exceptions are translated at the boundary (``raise ... from exc``).
"""

from __future__ import annotations


class EdgehubError(Exception):
    """Base class of every error edgehub raises on purpose."""


class ConfigError(EdgehubError):
    """A configuration file (or value) is invalid.

    ``problems`` holds one line per problem, each ``FILE: key.path: what is wrong``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PayloadError(EdgehubError):
    """An MQTT or HTTP payload failed validation. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class JournalError(EdgehubError):
    """The local SQLite journal cannot be opened, checked or written."""


class JournalFull(JournalError):
    """The journal cannot grow: the data disk is full. Nothing of the write was kept."""


class BrokerError(EdgehubError):
    """The store's Mosquitto cannot be configured, started or reached."""


class MqttError(EdgehubError):
    """An MQTT session (edgehub/bus/session.py) could not connect, or its connection ended.
    ``errno`` is the socket error's number when the connection failed on one (``None`` for a TLS
    failure, a refusal or a timeout)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class MqttTimeout(MqttError):
    """Nothing answered in time: no TCP connection, or no CONNACK after CONNECT."""


class MqttRefused(MqttError):
    """The broker answered CONNECT with a refusal. ``reason_code`` in MQTT 5 numbering (paho maps a
    3.1.1 return code onto it): 0x86 bad user name or password, 0x87 not authorized, ..."""

    def __init__(self, message: str, reason_code: int) -> None:
        self.reason_code = reason_code
        super().__init__(message)


class DeviceError(EdgehubError):
    """A device failed. ``device_id`` is the stable id of the device, when known."""

    def __init__(self, message: str, device_id: str | None = None) -> None:
        self.device_id = device_id
        super().__init__(f"{device_id}: {message}" if device_id else message)


class DeviceUnavailable(DeviceError):
    """The device is gone: unplugged, connection refused or closed."""


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""


class ProtocolError(DeviceError):
    """The device sent bytes that do not follow its protocol (malformed or truncated)."""


class PaymentError(DeviceError):
    """A pinpad refused or failed a payment command."""


class TicketRefused(EdgehubError):
    """A kitchen ticket change that its state does not allow (bump a served ticket, ...).

    ``reason`` is what the cook or the POS sees; nothing was changed.
    """

    def __init__(self, ticket_id: str, action: str, reason: str) -> None:
        self.ticket_id = ticket_id
        self.action = action
        self.reason = reason
        super().__init__(f"{ticket_id}: cannot {action}: {reason}")


# --- the outbox and the cloud uplink ----------------------------------------------------


class OutboxError(EdgehubError):
    """A row cannot go into the outbox: unknown stream, payload not a JSON object, ..."""


class OutboxFull(OutboxError):
    """The data disk is nearly full: a refusable row (telemetry) was refused. Orders never are."""


class UplinkError(EdgehubError):
    """The cloud link failed: cannot connect, refused, lost, or the cloud did not answer."""


class CloudSilent(UplinkError):
    """Nothing came back from the cloud: no SYN-ACK, no CONNACK, no answer to a ping. The route
    is silent (a WAN that lost it drops packets without a word), not refused: the uplink tries it
    again every ``probe_every_s``, without backing off."""


# --- two boxes, one store ------------------------------------------------------------------


class PairError(EdgehubError):
    """The link to the other box of a pair failed: cannot connect, lost, or it broke the protocol."""


class PeerRefused(PairError):
    """The other box is not this box's pair partner: another store, another journal schema, a
    journal that diverged, or another pair secret. ``reason`` says which; nothing was copied."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
