"""Ports for private brokers and test listeners come from below the kernel's ephemeral range,
where no outgoing connection's source port can take one between the check and the bind."""

from __future__ import annotations

import itertools
import socket

import pytest

from edgehub import broker
from edgehub.broker import _ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_free() -> None:
    top = _ephemeral_start()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # handed out in turn: never the same one twice in a row
    assert all(1024 <= port < top for port in ports)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[0]))
        held.listen()
        for port in ports[1:]:  # each one binds
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    low = max(1024, _ephemeral_start() - broker._PORT_SPAN)  # noqa: SLF001
    monkeypatch.setattr(broker, "_next_port", itertools.count(0))  # next in turn: the lowest
    with socket.socket() as held:
        held.bind(("127.0.0.1", low))
        held.listen()
        port = free_port()
    assert low < port < _ephemeral_start()
