"""edgehub: the software of the store box (devices, local MQTT, durable outbox, failover)."""

__version__ = "0.1.0"
