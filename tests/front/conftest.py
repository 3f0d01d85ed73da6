"""The front-of-house tests share the uplink tests' cloud: its broker, the WAN in front of it
(a fault proxy) and the recorder that plays the cloud service."""

from tests.uplink.conftest import cloud, recorder, wan

__all__ = ["cloud", "recorder", "wan"]
