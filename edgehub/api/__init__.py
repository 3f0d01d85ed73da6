"""The box's HTTP face: health, status, metrics and the installer's page (aiohttp)."""

from edgehub.api.server import ApiServer

__all__ = ["ApiServer"]
