"""The store's clock: the box serves time to the store's LAN with chrony (chrony.py: its config
and state; ntp.py: asking an NTP server as a till does; watch.py: the state for the page)."""

from edgehub.clock.chrony import ClockState, conf_text, read_state, write_config
from edgehub.clock.watch import ClockWatch, summary
from edgehub.config import ClockConfig
from edgehub.context import Context

__all__ = ["ClockState", "ClockWatch", "conf_text", "read_state", "setup", "summary", "write_config"]


def setup(ctx: Context, cfg: ClockConfig) -> ClockWatch:
    return ClockWatch(cfg, wall=ctx.clock)
