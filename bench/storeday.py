"""Store-day benchmark: a busy store's whole day on the box, what it costs the SD card, and the
hub's memory hour by hour.

The real ``edgehub run --simulate`` (its Mosquitto, the simulated printers, scale, scanner and
pinpad, six kitchen stations, the uplink to a cloud Mosquitto) with its data directory on a card
of its own: an ext4 file system made and mounted as the image makes and mounts the box's root
(image/rootfs.env) on a loop device, whose block-layer counters (``/sys/block/loopN/stat``) are
what a card would receive from the box: the journal's pages, SQLite's file growth, ext4's own
journal and metadata, every cache flush.

The day (``BUSY_DAY``: 800 orders, as a high-performing quick-service unit takes on a peak day, by
the hour from opening at 10:00 to closing at 22:00 with the lunch and dinner rushes; sources in
docs/footprint.md, "The busy store"): every order has two kitchen lines that a screen per station
bumps and serves, a receipt printed, and every third one a card payment on the pinpad. Each hour
with orders runs in ``--hour-s`` seconds, each night hour in ``--night-hour-s``. What the box
writes on its own as time passes (telemetry samples, checkpoints, the watchdog's probes) is
measured apart over ``--idle-s`` seconds of a quiet box and counted for the 86,400 s of a day;
the day's run gives what the events write. The card's life follows from a named card's rated
endurance and an assumed internal amplification of small synced writes (``CARDS``, ``CARD_WAF``).

Memory: the hub's RSS at the end of every hour; the figures are the RSS after the day and the
difference between the first and the last hour.

    .venv/bin/python bench/storeday.py [--hour-s 30] [--night-hour-s 5] [--idle-s 660] [--settle-s 330]
                                       [--profile pi]

Needs root (a loop device and a mount). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import piprofile
import psutil
from common import NO_QUOTA, Loader, compile_like_the_image
from footprint import KITCHEN, Screens, cloud_section

from edgehub.bus.topics import Topics
from tests.conftest import API_TOKEN, HubProcess, write_config
from tests.powercut.disk import rootfs_settings
from tests.uplink.cloudside import CloudBroker

STORE = "bench"
TOPICS = Topics(STORE)
TERMINALS = ("pos-1", "pos-2", "kds-1")
ORDERS_PER_DAY = 800
OPENS_AT = 10
# Share of the day's orders in each opening hour, 10:00 to 21:00 (the 11-14 and 17-20 rushes).
HOURLY_SHARE = (0.03, 0.10, 0.15, 0.10, 0.04, 0.04, 0.04, 0.10, 0.15, 0.12, 0.08, 0.05)
PAY_EVERY = 3  # every third order is paid on the pinpad (the rest by QR code or cash)
# Rated endurance of the card the budget is for (docs/footprint.md, "Card life", sources).
CARDS = {
    "WD Purple SC QD101 32 GB (512 P/E cycles)": 512 * 32e9,
    "a consumer TLC card of 32 GB, assumed 300 P/E cycles": 300 * 32e9,
}
# Assumed: what the card's controller writes to flash per byte it is sent, for 4-16 KiB synced
# writes scattered over a few files (its pages are 16 KiB; no card publishes this).
CARD_WAF = 8.0
# journald (image: Storage=persistent, SyncIntervalSec=5m): bytes its files grow by per log line
# (the message twice over, fields and indexes) and per sync (a few dirty pages and ext4's commit).
JOURNAL_BYTES_PER_LINE = 512
JOURNAL_BYTES_PER_SYNC = 32 * 1024
JOURNAL_SYNCS_PER_DAY = 288
# What the rest of the image writes in a day without edgehub (systemd-timesyncd's clock file,
# fake-hwclock's hourly save, ext4's superblock updates, daily timers): estimated, not measured.
IMAGE_BYTES_PER_DAY = 1 * 2**20


@dataclass
class CardCounters:
    sectors_written: int
    writes: int
    flushes: int

    def __sub__(self, other: CardCounters) -> CardCounters:
        return CardCounters(self.sectors_written - other.sectors_written, self.writes - other.writes,
                            self.flushes - other.flushes)

    @property
    def bytes(self) -> int:
        return self.sectors_written * 512


class LoopCard:
    """A file-backed ext4 card on a loop device, made and mounted as the image's root."""

    # Sparse, and large enough that the hub's disk guard sees a card with room (below
    # disk_warn_free_mib it maintains the outbox at once, every 10 s, which a real card does not).
    def __init__(self, workdir: Path, size_mb: int = 2048, mount_options: str | None = None) -> None:
        self.image = workdir / "card.img"
        self.mount = workdir / "card"
        self.size = size_mb * 2**20
        self.mount_options = mount_options
        self.device = ""

    def __enter__(self) -> LoopCard:
        settings = rootfs_settings()
        with open(self.image, "wb") as image:
            image.truncate(self.size)
        features = settings.get("MKFS_FEATURES", "")
        # Inode tables and the journal zeroed now: a box's card did that long ago, and ext4's
        # lazy init would write megabytes in the background of the measurement.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        *(["-O", features] if features else []), str(self.image)], check=True)
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        self.mount.mkdir()
        self.mount_options = self.mount_options or settings["MOUNT_OPTIONS"]
        subprocess.run(["mount", "-t", "ext4", "-o", self.mount_options, self.device, str(self.mount)], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False)

    def counters(self) -> CardCounters:
        fields = Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()
        return CardCounters(int(fields[6]), int(fields[4]), int(fields[15]) if len(fields) > 15 else 0)


class Till:
    """Per order of the loader: its receipt (pos-2) and, every ``PAY_EVERY``, a pinpad payment."""

    def __init__(self, loader: Loader, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-till-{time.time_ns()}")
        self.client.username_pw_set("pos-2", "pw-pos-2")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.receipts = self.payments = 0
        self._orders = loader.sent_at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = 0
        reply_to = TOPICS.reply("pos-2")
        while not self._stop.wait(0.05):
            while seen < len(self._orders):
                seen += 1
                ticket = {"lines": [f"Receipt {seen}", {"rule": "-"}, "宫保鸡丁 x1  38.00", {"cut": True}]}
                self.client.publish(TOPICS.role_command("receipt-printer", "print", "pos-2"), json.dumps(
                    {"schema": "print/1", "job_id": f"r-{seen}", "ticket": ticket, "reply_to": reply_to}), qos=1)
                self.receipts += 1
                if seen % PAY_EVERY == 0:
                    self.client.publish(TOPICS.role_command("pinpad", "pay", "pos-2"), json.dumps(
                        {"schema": "pay/1", "payment_id": f"p-{seen}", "sale_id": f"s-{seen}",
                         "amount_cents": 3800, "reply_to": reply_to}), qos=1)
                    self.payments += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.loop_stop()
        self.client.disconnect()


def log_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def status(port: int) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/status",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, Any]:
    profile.terminals(os.getpid())
    compile_like_the_image()
    with (tempfile.TemporaryDirectory(prefix="bench-storeday-") as tmp,
          LoopCard(Path(tmp), mount_options=args.mount_options) as card):
        cloud = CloudBroker(Path(tmp) / "cloud", store=STORE)
        asyncio.run(cloud.start())
        path = write_config(Path(tmp) / "box", store=STORE, mode="managed", terminals=TERMINALS,
                            extra=KITCHEN + cloud_section(cloud.port) + NO_QUOTA)
        path.write_text(path.read_text().replace('data_dir = "data"', f'data_dir = "{card.mount / "edgehub"}"'))
        hub = HubProcess(path, Path(tmp) / "hub.log", extra_args=("--simulate",), env=profile.env())
        hub.start(wait=False)
        try:
            assert hub.proc is not None
            profile.box(hub.proc.pid)
            hub.wait_healthy(60)
            proc = psutil.Process(hub.proc.pid)
            broker = next(c for c in proc.children() if "mosquitto" in c.name())
            box_pids = [proc.pid, broker.pid]
            time.sleep(args.settle_s)

            # What the quiet box writes as time passes.
            card0, lines0, sync0 = card.counters(), log_lines(hub.log_path), profile.sync_counts(box_pids)
            idle_started = time.monotonic()
            time.sleep(args.idle_s)
            idle_s = time.monotonic() - idle_started
            idle = card.counters() - card0
            idle_lines = log_lines(hub.log_path) - lines0
            idle_syncs = profile.sync_counts(box_pids)["syncs"] - sync0["syncs"]

            port = hub.config.broker.listen.port
            screens = Screens(port, STORE, args.bump_after_s)
            loader = Loader(port, STORE, "pos-1")
            till = Till(loader, port)
            hours: list[dict[str, Any]] = []
            day0, lines_day0, sync_day0 = card.counters(), log_lines(hub.log_path), profile.sync_counts(box_pids)
            day_started = time.monotonic()
            try:
                for h in range(24):
                    clock = (OPENS_AT + h) % 24
                    share = HOURLY_SHARE[h] if h < len(HOURLY_SHARE) else 0.0
                    orders = round(ORDERS_PER_DAY * share)
                    seconds = args.hour_s if orders else args.night_hour_s
                    hour_started = time.monotonic()
                    if orders:
                        loader.paced(f"h{clock:02d}", orders / seconds, seconds)
                    time.sleep(max(0.0, hour_started + seconds - time.monotonic()))
                    hours.append({"hour": clock, "orders": orders, "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                                  "card_kb": round((card.counters() - day0).bytes / 1024)})
                    print(f"  {clock:02d}:00 {orders:>4} orders  RSS {hours[-1]['rss_mb']} MB  "
                          f"card {hours[-1]['card_kb']} KB so far", flush=True)
            finally:
                till.close()
                screens.close()
                loader.close()
            day_s = time.monotonic() - day_started
            day = card.counters() - day0
            day_lines = log_lines(hub.log_path) - lines_day0
            day_syncs = profile.sync_counts(box_pids)["syncs"] - sync_day0["syncs"]
            final = status(hub.config.api.listen.port)
            rss_broker = broker.memory_info().rss / 2**20
        except BaseException:
            print(hub.log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            hub.stop()
            cloud.stop()

    per_s = 86_400 / idle_s
    # The day's run also passed day_s seconds of time-driven writes: those are counted once, for a
    # whole day, from the quiet box's rate.
    events_bytes = max(0.0, day.bytes - idle.bytes * day_s / idle_s)
    events_flushes = max(0.0, day.flushes - idle.flushes * day_s / idle_s)
    hub_bytes_day = events_bytes + idle.bytes * per_s
    flushes_day = events_flushes + idle.flushes * per_s
    lines_day = max(0.0, day_lines - idle_lines * day_s / idle_s) + idle_lines * per_s
    syncs_day = max(0.0, day_syncs - idle_syncs * day_s / idle_s) + idle_syncs * per_s
    journal_day = lines_day * JOURNAL_BYTES_PER_LINE + min(JOURNAL_SYNCS_PER_DAY, lines_day) * JOURNAL_BYTES_PER_SYNC
    total_day = hub_bytes_day + journal_day + IMAGE_BYTES_PER_DAY
    lives = {name: round(endurance / (total_day * CARD_WAF * 365), 1) for name, endurance in CARDS.items()}
    named = next(iter(CARDS))
    open_hours = [h for h in hours if h["orders"]]
    result = {
        "orders_per_day": ORDERS_PER_DAY,
        "orders_journaled": final["journal"]["orders"],
        "receipts": till.receipts,
        "payments": till.payments,
        "screen_commands": screens.sent,
        "idle_s": round(idle_s, 1),
        "day_run_s": round(day_s, 1),
        "idle_card_kb_per_h": round(idle.bytes / 1024 * 3600 / idle_s, 1),
        "idle_flushes_per_h": round(idle.flushes * 3600 / idle_s, 1),
        "card_bytes_per_order": round(events_bytes / ORDERS_PER_DAY),
        "card_flushes_per_order": round(events_flushes / ORDERS_PER_DAY, 2),
        "hub_syncs_per_day": round(syncs_day),
        "hub_card_mb_per_day": round(hub_bytes_day / 2**20, 2),
        "card_flushes_per_day": round(flushes_day),
        "log_lines_per_day": round(lines_day),
        "journald_mb_per_day": round(journal_day / 2**20, 2),
        "image_mb_per_day": round(IMAGE_BYTES_PER_DAY / 2**20, 2),
        "card_mb_per_day": round(total_day / 2**20, 2),
        "card_waf_assumed": CARD_WAF,
        "mount_options": card.mount_options,
        "card": named,
        "card_life_years": lives[named],
        "card_life_years_by_card": lives,
        "rss_first_hour_mb": open_hours[0]["rss_mb"],
        "rss_last_hour_mb": open_hours[-1]["rss_mb"],
        "rss_end_mb": hours[-1]["rss_mb"],
        "rss_growth_mb": round(open_hours[-1]["rss_mb"] - open_hours[0]["rss_mb"], 1),
        "rss_max_mb": max(h["rss_mb"] for h in hours),
        "rss_broker_mb": round(rss_broker, 1),
        "hours": hours,
        "profile": profile.describe(),
    }
    print(f"busy day ({ORDERS_PER_DAY} orders): card {result['card_mb_per_day']} MB a day "
          f"(hub and broker {result['hub_card_mb_per_day']}, journald {result['journald_mb_per_day']}, "
          f"the rest of the image {result['image_mb_per_day']}); {result['card_bytes_per_order']} B and "
          f"{result['card_flushes_per_order']} flushes per order; idle box {result['idle_card_kb_per_h']} KB/h")
    for name, years in lives.items():
        print(f"card life at internal amplification {CARD_WAF:g}x: {years} years on {name}")
    print(f"hub RSS: first hour {result['rss_first_hour_mb']} MB, last hour {result['rss_last_hour_mb']} MB, "
          f"after the night {result['rss_end_mb']} MB (target < 60 MB, no growth); "
          f"Mosquitto {result['rss_broker_mb']} MB")
    print(json.dumps(result))
    return result


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hour-s", type=float, default=30.0, help="seconds each opening hour runs in")
    parser.add_argument("--night-hour-s", type=float, default=5.0, help="seconds each closed hour runs in")
    parser.add_argument("--idle-s", type=float, default=660.0,
                        help="the quiet box's window: longer than a telemetry sample's 600 s wait for a commit")
    parser.add_argument("--settle-s", type=float, default=330.0,
                        help="after start, before anything is counted: past the checkpoint of what start-up "
                             "wrote (the journal checkpoints 300 s after the last commit of a quiet box)")
    parser.add_argument("--bump-after-s", type=float, default=2.0)
    parser.add_argument("--mount-options", help="the card's mount options (default: image/rootfs.env's)")
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return run(args, profile)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
