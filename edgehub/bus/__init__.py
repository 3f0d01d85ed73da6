"""The hub's side of the store's MQTT bus: topics, payloads and the connection."""
