"""paho's client with shortcuts on its hot paths, for the sessions that carry many QoS 1
messages: the hub's own broker connection at the rush (an order's ack and its kitchen events:
three PUBACKs per order) and the cloud uplink draining a backlog. paho spends most of such a
session's time building a ReasonCode and a Properties object for each 4-byte PUBACK and reading
each packet through three ``recv`` calls. Here:

- reads are buffered: one ``recv`` takes whatever has arrived, each packet whole in it is cut out
  at once, and ``loop_read`` goes on until the buffer is used up (the selector cannot see it);
- packets queued in one turn of the loop are written in one ``send``;
- a QoS 0/1 PUBLISH without properties skips paho's Properties object (most of its decoding);
- a plain MQTT 5 PUBACK (no properties: what a broker sends for a delivery) is decoded by hand
  and handed to ``fast_puback(mid, reason_code)``; any other goes the paho way. Only without an
  inflight limit (``max_inflight_messages`` 0), where a PUBACK never releases a queued message;
- a message goes straight to ``on_message`` when no per-topic callback was added;
- ``publish_unwaited`` publishes a message nobody waits on without a ``threading.Condition`` of
  its own, and a QoS 1 PUBLISH without properties is packed in one go (``_send_publish``).

This is the one module that reaches into paho's private names (its methods and attributes, as
a subclass): paho is pinned exactly in pyproject.toml, and tests/test_fastpaho.py fails when a
name reached here changes in paho or stops being called, and holds every shortcut to what stock
paho does. Everything else speaks to paho through ``MqttSession`` (edgehub/bus/session.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

# paho code whose behaviour is repeated here by hand (a message made without its constructor, a
# PUBLISH and a PUBACK decoded, a PUBACK's bookkeeping, an unwaited publish): fingerprinted by
# tests/test_fastpaho.py with the private names reached, so that a change in paho is seen.
MIRRORED = ("MQTTMessage.__init__", "MQTTMessageInfo.__init__", "Client.publish", "Client._do_on_publish",
            "_packet.decode_publish", "_packet.decode_puback")

RECV_CHUNK = 65536
WRITE_BATCH = 256  # packets joined into one send at most
PUBLISH, DISCONNECT = 0x30, 0xE0


_SHARED_CONDITION = threading.Condition()


class _Unwaited(mqtt.MQTTMessageInfo):
    """The info of a message nobody waits on: paho gives each its own ``threading.Condition`` (a
    lock and a deque: 7 % of the event loop at the rush, three messages per order); these share
    one. ``is_published`` works as ever; ``wait_for_publish`` would work for one waiter at a time."""

    __slots__ = ()

    def __init__(self, mid: int) -> None:  # no super().__init__: that makes the Condition
        self.mid = mid
        self._published = False
        self._condition = _SHARED_CONDITION
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0


def _message(mid: int, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool) -> mqtt.MQTTMessage:
    """A message as ``MQTTMessage.__init__`` and paho's decoding make it, with an ``_Unwaited``
    info instead of one with a ``threading.Condition`` of its own (nobody waits on a message
    being sent unwaited, nor on one received)."""
    message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
    message.timestamp = time.monotonic()
    message.state = mqtt.mqtt_ms_invalid
    message.dup = dup
    message.mid = mid
    message._topic = topic  # noqa: SLF001 - as MQTTMessage.__init__ sets it
    message.payload = payload
    message.qos = qos
    message.retain = retain
    message.info = _Unwaited(mid)
    message.properties = None
    return message


class FastPaho(mqtt.Client):
    fast_puback: Callable[[int, int], None] | None = None
    _rbuf: bytes = b""
    _rpos: int = 0
    # paho turns a failed read into a bare "Unspecified error" (the OSError only goes to its log):
    # kept here so the status can say why, e.g. the cloud refusing the box's TLS client certificate,
    # which under TLS 1.3 arrives as an alert on the first read after the handshake.
    read_error: OSError | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            try:
                data = super()._sock_recv(max(bufsize, RECV_CHUNK))
            except BlockingIOError:
                raise
            except OSError as exc:
                self.read_error = exc
                raise
            if len(data) <= bufsize:
                return data  # all of it (or b"" at the end of the stream)
            buf, pos = self._rbuf, self._rpos = data, 0
        self._rpos = end = pos + bufsize
        return buf[pos:end]

    def publish_unwaited(self, topic: str, payload: bytes, qos: int = 1,
                         retain: bool = False) -> tuple[MQTTErrorCode, int]:
        """``publish`` (QoS 0 or 1, no properties) of a message whose sender never waits on its
        info: the same packet and the same session bookkeeping (kept for a re-send after a
        reconnect) as paho's, without a ``threading.Condition`` per message. Returns (rc, mid)."""
        if qos not in (0, 1) or self._max_inflight_messages or self._max_queued_messages:
            info = self.publish(topic, payload, qos, retain)
            return info.rc, info.mid
        topic_bytes = topic.encode()
        self._raise_for_invalid_topic(topic_bytes)
        if len(payload) > 268435455:
            raise ValueError("Payload too large.")
        mid = self._mid_generate()
        if qos == 0:
            sent = _Unwaited(mid)
            sent.rc = self._send_publish(mid, topic_bytes, payload, 0, retain, False, sent, None)
            return sent.rc, mid
        message = _message(mid, topic_bytes, payload, 1, retain, False)
        info = message.info
        with self._out_message_mutex:
            if mid in self._out_messages:
                info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return info.rc, mid
            self._out_messages[mid] = message
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback
            rc = self._send_publish(mid, topic_bytes, payload, 1, retain, False, info, None)
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:  # as paho: sent after the connection is made
                self._inflight_messages -= 1
                message.state = mqtt.mqtt_ms_publish
            info.rc = rc
            return rc, mid

    def _send_publish(self, mid: int, topic: bytes, payload: bytes | bytearray = b"", qos: int = 0,
                      retain: bool = False, dup: bool = False, info: mqtt.MQTTMessageInfo | None = None,
                      properties: Any = None) -> MQTTErrorCode:
        """An MQTT 5 QoS 1 PUBLISH without properties (an ack, a kitchen event: three per order)
        packed in one go: paho builds it through a debug log call, a helper per field and a
        ``struct`` pack, 6 % of the event loop at the rush. The same bytes (tests/test_fastpaho.py);
        anything else is paho's."""
        if (qos != 1 or properties is not None or self._protocol != mqtt.MQTTv5 or self._sock is None
                or not payload or type(topic) is not bytes or not isinstance(payload, bytes | bytearray)):
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        length = len(topic) + len(payload) + 5  # topic length, mid, empty properties
        if length > 268_435_455:
            raise ValueError("Packet too large")
        packet = bytearray((PUBLISH | (dup & 1) << 3 | 2 | retain,))
        while length > 127:
            packet.append(length & 127 | 128)
            length >>= 7
        packet.append(length)
        packet += len(topic).to_bytes(2, "big")
        packet += topic
        packet += mid.to_bytes(2, "big")
        packet.append(0)
        packet += payload
        return self._packet_queue(PUBLISH, packet, mid, qos, info)

    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not handled yet (the selector cannot see them)."""
        return self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.buffered() and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        """A packet already whole in the read buffer is cut out of it at once (paho reads the
        command, then each byte of the length, then the body, through a call each); anything
        else, a packet that is still arriving included, is read the paho way."""
        buf, pos, end_of_buf = self._rbuf, self._rpos, len(self._rbuf)
        if self._in_packet["command"] != 0 or end_of_buf - pos < 2:
            return super()._packet_read()
        length, mult, at = 0, 1, pos + 1
        while True:
            if at >= end_of_buf or at - pos > 4:
                return super()._packet_read()  # not all here yet, or malformed: paho decides
            byte = buf[at]
            length += (byte & 127) * mult
            mult *= 128
            at += 1
            if not byte & 128:
                break
        end = at + length
        if end > end_of_buf:
            return super()._packet_read()
        self._rpos = end
        self._in_packet["command"] = buf[pos]
        # paho types it bytearray; its handlers only read it, and bytes spares a copy of every packet.
        self._in_packet["packet"] = buf[at:end]  # type: ignore[typeddict-item]
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return rc

    def _packet_write(self) -> MQTTErrorCode:
        """Packets queued since the last write go out in one ``send`` (paho sends each alone: an
        order's ack, its kitchen events and the PUBACK of the order are four system calls, and
        as many wake-ups of the broker). A packet that needs something done once it is sent (a
        QoS 0 PUBLISH tells on_publish, a DISCONNECT closes) is left to paho."""
        out = self._out_packet
        while len(out) > 1:
            chunks: list[bytes | bytearray] = []
            for packet in out:
                command = packet["command"] & 0xF0
                if (command == PUBLISH and packet["qos"] == 0) or command == DISCONNECT or len(chunks) == WRITE_BATCH:
                    break
                chunks.append(packet["packet"][packet["pos"]:])
            if len(chunks) < 2:
                break
            try:
                sent = self._sock_send(b"".join(chunks))
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # as paho: no socket
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            while sent > 0:
                packet = out[0]
                done = min(sent, packet["to_process"])
                packet["to_process"] -= done
                packet["pos"] += done
                sent -= done
                if packet["to_process"] == 0:
                    out.popleft()
            with self._msgtime_mutex:
                self._last_msg_out = time.monotonic()
        return super()._packet_write()

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 0/1 PUBLISH without properties (what a terminal sends) decoded by hand: paho
        builds a Properties object (two dicts of every property name, ~2.7 KB) for each."""
        cmd, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (cmd & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos > 1 or len(packet) < 3:
            return super()._handle_publish()
        pos = topic_end = 2 + ((packet[0] << 8) | packet[1])
        mid = 0
        if qos == 1:
            if len(packet) < pos + 2:
                return super()._handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        # A topic alias comes with an empty topic and a property: paho's way.
        if topic_end == 2 or len(packet) <= pos or packet[pos] != 0:
            return super()._handle_publish()
        message = _message(mid, bytes(packet[2:topic_end]), bytes(packet[pos + 1:]), qos, bool(cmd & 0x01),
                           bool(cmd & 0x08))
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """Straight to ``on_message`` when no per-topic callback was added (paho walks its topic
        tree for every message to find out)."""
        filtered = self._on_message_filtered._root._children  # noqa: SLF001 - paho's topic tree: empty?
        on_message = self.on_message
        if filtered or on_message is None:
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:  # as paho
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        fast = self.fast_puback
        if (cmd != "PUBACK" or fast is None or not 2 <= len(packet) <= 3
                or self._protocol != mqtt.MQTTv5 or self._max_inflight_messages > 0):
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        code = packet[2] if len(packet) == 3 else 0
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
        if msg is not None:  # as paho: told once per message
            msg.info._set_as_published()  # noqa: SLF001 - as paho's _do_on_publish
            if msg.qos > 0:
                self._inflight_messages -= 1
            fast(mid, code)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
