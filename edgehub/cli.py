"""The ``edgehub`` command: run the daemon, check a config, simulate a store, provision a box.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgehub import __version__
from edgehub.errors import ConfigError, EdgehubError

if TYPE_CHECKING:
    from edgehub.config import Address
    from edgehub.hub import Hub
    from edgehub.sim.cloud import SimCloud
    from edgehub.sim.service import ServiceSim

# Where the image's provisioning writes the box's config (systemd/edgehub.service runs with it):
# the tools an installer runs on the box find it without being told.
BOX_CONFIG = "/etc/edgehub/edgehub.toml"


def _cmd_run(args: argparse.Namespace) -> int:
    from edgehub import logs
    from edgehub.config import load_config
    from edgehub.gctuning import FreezeSurvivors, Trimmer
    from edgehub.hub import Hub, preflight
    from edgehub.instance import InstanceLock
    from edgehub.sdnotify import Notifier

    config = load_config(args.config)
    profiles: dict[str, str] = {}
    if args.sim_profile:
        from edgehub.sim.store import parse_profiles

        if not args.simulate:
            print("--sim-profile goes with --simulate", file=sys.stderr)
            return 2
        try:
            profiles = parse_profiles(args.sim_profile)
        except ValueError as exc:
            print(f"--sim-profile {exc}", file=sys.stderr)
            return 2
    if args.sim_orders and not any(t.kind == "pos" for t in config.terminals):
        raise ConfigError([f"{args.config}: --sim-orders needs a [[terminal]] of kind pos to order from"])
    # Another hub on this data directory, a port taken: one line and exit 1, before anything
    # (the simulated store, the simulated cloud, a file) is started or written.
    preflight(config)
    instance = InstanceLock(config.paths.data_dir)
    instance.acquire(config=args.config)
    logs.setup(config.log.level, config.log.components, journald="JOURNAL_STREAM" in os.environ)
    FreezeSurvivors().install()  # full collections skip what survived the last one (gctuning.py)
    Trimmer().install()  # freed heap handed back to the system after a rush (gctuning.py)
    from edgehub.memdump import install_from_env

    install_from_env()  # EDGEHUB_TRACEMALLOC: snapshot on SIGUSR2, off by default (memdump.py)
    simulating = args.simulate or args.sim_cloud or args.sim_orders
    # Secrets go to the screen only where a person reads it (or in the development store, whose
    # token is in the repository anyway), never into journald.
    reveal = simulating or (sys.stdout.isatty() and "JOURNAL_STREAM" not in os.environ)

    async def alongside(hub: Hub, cloud: SimCloud | None) -> None:
        await hub.ready.wait()
        print(ready_block(hub, args, reveal, cloud), flush=True)
        if not args.sim_orders:
            return
        from edgehub.sim.service import ServiceSim

        service = ServiceSim(hub.config, every_s=args.sim_orders_every, broker=terminal_address(hub))
        async with service:
            while True:
                await asyncio.sleep(SUMMARY_EVERY_S)
                print(store_summary(hub, service, cloud), flush=True)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            cfg, usb_backend = config, None
            if args.simulate and config.devices:
                # Real devices configured: they are what this box drives.
                print(f"--simulate: {len(config.devices)} devices configured in {args.config}; "
                      "not simulating", flush=True)
            elif args.simulate:  # a store's devices without hardware: printers, scale, scanner, pinpad
                from edgehub.sim.store import SimStore, with_sim_devices

                sim = await stack.enter_async_context(SimStore(profiles=profiles))
                cfg, usb_backend = with_sim_devices(cfg, sim), sim.usb_backend
            cloud: SimCloud | None = None
            if args.sim_cloud:
                from edgehub.sim.cloud import SimCloud, with_sim_cloud

                cloud = await stack.enter_async_context(SimCloud(
                    cfg.store.id, cfg.cloud.client_id, state_file=cfg.paths.data_dir / "sim-cloud.json"))
                cfg = with_sim_cloud(cfg, cloud)
            if cfg.pair is not None:
                # One box of a pair (docs/pair.md): a node that follows the other box or serves,
                # starting a hub (with this one's simulated parts) each time it takes over.
                from edgehub.pair.node import PairNode

                node = PairNode(cfg, Notifier(), instance=instance, make_hub=lambda c, broker: Hub(
                    c, usb_backend=usb_backend, instance=instance, broker=broker))
                await node.run_until_stopped()
                return
            # The hub is made once the simulated parts run: its config names them.
            hub = Hub(cfg, Notifier(), usb_backend=usb_backend, instance=instance)
            await hub.run_until_stopped(lambda: alongside(hub, cloud))

    try:
        asyncio.run(main())
    finally:
        instance.release()
    return 0


SUMMARY_EVERY_S = 30.0  # the simulated service's one-line summary on make run's terminal


def _edgehub_command() -> str:
    """How to run ``edgehub`` from here: the venv's script when there is one (``make run``)."""
    script = Path(sys.executable).parent / "edgehub"
    if not script.exists():
        return "edgehub"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def terminal_address(hub: Hub) -> Address:
    """Where the store's terminals connect to this hub's broker: the LAN listener, else (tests,
    a broker port chosen at start) the hub's own."""
    from edgehub.config import Address

    b = hub.config.broker
    return b.terminal_address if b.lan_listen is not None else Address(hub.bus.host, hub.bus.port)


def ready_block(hub: Hub, args: argparse.Namespace, reveal: bool, cloud: SimCloud | None = None) -> str:
    """What ``edgehub run`` prints once the hub is ready: where everything is and how to get in."""
    from edgehub.doctor import token_origin

    cfg = hub.config
    page = hub.api.url
    token = cfg.api.token if reveal else f"<the token in {token_origin(cfg)}>"
    lines = [f"edgehub {__version__}: store {cfg.store.id} ready",
             f"  dashboard  {page}",
             f"  log in     with the token {token}" + ("  (or the installer PIN)" if cfg.api.installer_pin else ""),
             "  kitchen    screens (open one per station; the link sets the screen up once):"]
    stations = hub.kitchen.station_names()
    width = max(len(s) for s in stations)
    for station in stations:
        if hub.screens.secret_for(station) is None:
            link = (f"{page}kds/{station}   (no screen secret drives it: give a kds [[terminal]] "
                    f"stations = [\"{station}\"])")
        else:
            link = hub.screens.link(station, page) if reveal else f"{page}kds/{station}?token=<its screen secret>"
        lines.append(f"             {station:<{width}}  {link}")
    for display in (t for t in cfg.terminals if t.kind == "display" and t.screen_token):
        secret = urllib.parse.quote(display.screen_token, safe="") if reveal else "<its screen secret>"
        lines.append(f"  pickup     {page}pickup?token={secret}   (the pickup board, {display.id})")
    lines += [f"  broker     mqtt://{terminal_address(hub)} for terminals"
              + (f" (the hub's own: mqtt://{hub.bus.host}:{hub.bus.port})" if hub.config.broker.lan_listen else ""),
              f"  health     {page}healthz",
              f"  terminal   {_edgehub_command()} sim terminal --config {args.config} --orders 200 --rate 20"]
    if cloud is not None:
        lines.append(f"  cloud      {cfg.cloud.url} (simulated: the outbox drains there; "
                     f"`{_edgehub_command()} sync --config {args.config}` sends it all now)")
    if args.sim_orders:
        tills = ", ".join(t.id for t in cfg.terminals if t.kind == "pos")
        cooks = ", ".join(t.id.removeprefix("kds-") for t in cfg.terminals
                          if t.kind == "kds" and t.id.startswith("kds-"))
        lines.append(f"  service    {tills} order every ~{args.sim_orders_every:g} s between them"
                     + (f"; cooks at {cooks}" if cooks else ""))
    lines.append("  stop       Ctrl-C stops the hub and everything it started")
    return "\n".join(lines)


def store_summary(hub: Hub, service: ServiceSim, cloud: SimCloud | None) -> str:
    """One line on how the simulated service is going: orders, tickets, slips, the outbox."""
    parts = [service.summary()]
    stats = hub.roles.printqueue.stats
    parts.append(f"{stats.printed} slips printed")
    if cloud is not None:
        parts.append(f"the cloud holds {cloud.held()} messages")
    return f"store: {'; '.join(parts)}"


def _cmd_config_check(args: argparse.Namespace) -> int:
    from edgehub.config import load_config

    status = 0
    for path in args.files:
        try:
            config = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: ok (store {config.store.id}, {len(config.terminals)} terminals)")
    return status


def _cmd_broker_config(args: argparse.Namespace) -> int:
    from edgehub.broker import write_config
    from edgehub.config import load_config

    files = write_config(load_config(args.config))
    print(f"wrote {files.conf}, {files.passwd}, {files.acl}")
    return 0


def _cmd_clock_config(args: argparse.Namespace) -> int:
    from edgehub.clock import write_config
    from edgehub.config import load_config

    config = load_config(args.config)
    path = write_config(config)
    print(f"wrote {path}; chrony reads it through /etc/chrony/conf.d/edgehub.conf: systemctl restart chrony")
    return 0


def _cmd_clock_status(args: argparse.Namespace) -> int:
    import time

    from edgehub.clock import read_state, summary
    from edgehub.config import load_config

    config = load_config(args.config)
    state = asyncio.run(read_state(config.clock, time.time()))
    print(summary(config.clock, state))
    for source in state.sources:
        print(f"  {source['name']:<24} {source['state']:<13} stratum {source['stratum']:<2} "
              f"offset {source['offset_ms']} ms")
    return 0 if state.running else 1


def _cmd_sim_terminal(args: argparse.Namespace) -> int:
    from edgehub.config import load_config, parse_address
    from edgehub.sim.terminal import TerminalSim, run_terminals

    if args.config:
        if args.store or args.password:
            print("--store and --password come from --config (its [store] and [[terminal]]); give one or the other",
                  file=sys.stderr)
            return 2
        config = load_config(args.config)
        address = parse_address(args.broker) if args.broker else config.broker.terminal_address
        store = config.store.id
        ids = args.terminal or [t.id for t in config.terminals if t.kind == "pos"][:1]
        creds = {t.id: t.password for t in config.terminals}
        missing = [t for t in ids if t not in creds]
        if missing:
            print(f"{args.config}: no terminal {', '.join(missing)} in [[terminal]]", file=sys.stderr)
            return 2
    else:
        if not (args.broker and args.store and args.terminal and args.password):
            print("give --config FILE, or --broker, --store, --terminal and --password", file=sys.stderr)
            return 2
        address, store, ids = parse_address(args.broker), args.store, args.terminal
        creds = dict.fromkeys(ids, args.password)
    sims = [TerminalSim(address.host, address.port, store, tid, creds[tid], resend_after=args.resend_after)
            for tid in ids]
    rate = f"{args.rate:g} orders/s each" if args.rate > 0 else "all at once"
    print(f"sending {args.orders} orders from {', '.join(ids)} to mqtt://{address} ({rate}), each re-sent until "
          f"acked (giving up after {args.timeout:g} s)", file=sys.stderr, flush=True)
    reports = asyncio.run(run_terminals(sims, args.orders, args.rate, args.timeout, progress=_progress_printer()))
    total_acked = sum(len(r.acked_ids) for r in reports)
    for tid, report in zip(ids, reports, strict=True):
        summary = report.summary()
        if args.json:
            print(json.dumps({"terminal": tid, **summary}))
        else:
            print(f"{tid}: sent {summary['sent']}, acked {summary['acked']} "
                  f"({summary['accepted']} accepted, {summary['rejected']} rejected), "
                  f"{summary['resends']} re-sent, {summary['duplicate_acks']} duplicate acks, "
                  f"ack p50 {summary['p50_ms']} ms p99 {summary['p99_ms']} ms")
        if report.error:
            print(f"{tid}: {report.error}", file=sys.stderr)
    # Every order asked for was sent and acked: a terminal that never got in sent none.
    return 0 if total_acked == args.orders * len(ids) else 1


def _progress_printer() -> Callable[[str, bool], None]:
    """On a terminal, one line redrawn in place (cut to its width); elsewhere a line every 5 s."""
    import shutil
    import time

    tty = sys.stderr.isatty()
    last = [0.0]

    def show(line: str, final: bool) -> None:
        if tty:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r\x1b[K" + line[:width] + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - last[0] >= 5.0:
            last[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    return show


def _box_config(args: argparse.Namespace) -> int:
    """2 (and why) when no --config was given and this is not a provisioned box; else 0."""
    if args.config == BOX_CONFIG and not os.path.exists(BOX_CONFIG):
        print(f"no box config at {BOX_CONFIG} (not a provisioned box?): give --config FILE, the config "
              "edgehub runs with", file=sys.stderr)
        return 2
    return 0


def build_parser(command_given: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for ``command_given == "run"`` (the daemon's start) without the
    subcommands whose parsers import their tools' modules (the simulated store, the field check),
    which ``run`` never parses."""
    from edgehub.clihelp import Help, command

    tools = command_given != "run"

    parser = argparse.ArgumentParser(
        prog="edgehub", formatter_class=Help,
        description="edgehub, the store box: the daemon (run) and the tools an installer, a developer and "
                    "support use.\n\nEvery command explains itself with --help, defaults and examples.",
        epilog="examples:\n  make run                                   # a whole simulated store, from a checkout\n"
               "  edgehub doctor                             # on a box: the installer's self-checks\n"
               "  edgehub run --help")
    parser.add_argument("--version", action="version", version=f"edgehub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command(sub, "run", "run the hub (the daemon)",
                "Run the hub: the journal, the connection to the store's Mosquitto (its own private one with\n"
                "broker.mode = managed), devices and roles, the kitchen, the uplink to the cloud and the box's page.\n"
                "Under systemd it is Type=notify with a watchdog. It starts only when no other hub runs on the\n"
                "same data directory and every port it listens on is free (else one line, exit 1), and prints\n"
                "where the page, the kitchen screens and the broker are once it is ready.",
                ["edgehub run --config /etc/edgehub/edgehub.toml",
                 "edgehub run --config config/dev.toml --simulate --sim-cloud --sim-orders   # what make run does",
                 "edgehub run --config config/dev.toml --simulate                            # devices only"])
    p.add_argument("--config", required=True, metavar="FILE", help="the edgehub.toml to run with")
    p.add_argument("--simulate", action="store_true",
                   help="add a simulated store's devices (two kitchen printers, a receipt printer, a scale, "
                        "a scanner, a pinpad) when the config names no [[device]]")
    p.add_argument("--sim-profile", action="append", default=[], metavar="SLOT=PROFILE",
                   help="with --simulate: a real unit's habits for a device slot, e.g. scale=mt8217-lb, "
                        "scanner=hid-report-id (repeat; the profiles: docs/devices.md)")
    p.add_argument("--sim-cloud", action="store_true",
                   help="start a simulated chain cloud (a second private Mosquitto) and send the outbox there")
    p.add_argument("--sim-orders", action="store_true",
                   help="play a lunch service: the config's pos terminals order (Chinese dishes, modifiers, "
                        "notes, rush, amends, cancels) and a cook works at each kds-STATION terminal's station")
    p.add_argument("--sim-orders-every", type=float, default=6.0, metavar="SECONDS",
                   help="average seconds between two orders of --sim-orders")
    p.set_defaults(func=_cmd_run)

    p = command(sub, "config", "configuration tools", "Tools for edgehub.toml.",
                ["edgehub config check /etc/edgehub/edgehub.toml"])
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="TOOL")
    c = command(config_sub, "check", "check config files; exit 2 listing every problem",
                "Check config files completely, as `edgehub run` would: every problem is one line\n"
                "FILE:LINE: key.path: what is wrong, cross-references included (a station's printer role, the\n"
                "devices a role names, listeners sharing a port). Exit 0 when all pass, 2 otherwise.",
                ["edgehub config check /etc/edgehub/edgehub.toml", "edgehub config check config/*.toml"])
    c.add_argument("files", nargs="+", metavar="FILE", help="edgehub.toml files to check")
    c.set_defaults(func=_cmd_config_check)

    p = command(sub, "broker", "the store's Mosquitto", "Tools for the store's Mosquitto.",
                ["edgehub broker write-config --config /etc/edgehub/edgehub.toml"])
    broker_sub = p.add_subparsers(dest="broker_command", required=True, metavar="TOOL")
    c = command(broker_sub, "write-config", "write mosquitto.conf, passwd and acl from the config",
                "Write Mosquitto's config, its password file (PBKDF2 hashes) and its ACL from edgehub.toml into\n"
                "broker.config_dir. Provisioning runs it; on a box, reload Mosquitto afterwards.",
                ["edgehub broker write-config --config /etc/edgehub/edgehub.toml && sudo systemctl reload mosquitto"])
    c.add_argument("--config", required=True, metavar="FILE", help="the edgehub.toml to write them from")
    c.set_defaults(func=_cmd_broker_config)

    p = command(sub, "clock", "the store's time server (chrony)",
                "Tools for the store's time server: chrony, configured from [clock].",
                ["edgehub clock status", "sudo edgehub clock write-config --config /etc/edgehub/edgehub.toml"])
    clock_sub = p.add_subparsers(dest="clock_command", required=True, metavar="TOOL")
    c = command(clock_sub, "write-config", "write chrony's file from [clock] (clock.config_file)",
                "Write the store time server's chrony directives from [clock] in edgehub.toml into\n"
                "clock.config_file (on a box /etc/chrony/conf.d/edgehub.conf, which Debian's chrony reads).\n"
                "Provisioning runs it; restart chrony afterwards.",
                ["sudo edgehub clock write-config --config /etc/edgehub/edgehub.toml && sudo systemctl restart chrony"])
    c.add_argument("--config", required=True, metavar="FILE", help="the edgehub.toml to write it from")
    c.set_defaults(func=_cmd_clock_config)
    c = command(clock_sub, "status", "where the box's time comes from and what the store gets",
                "Ask chrony (chronyc on its command port on loopback) what the box's clock follows: an upstream\n"
                "server, or its own clock while none is reachable; then each time source. Exit 1 when chrony\n"
                "does not answer.",
                ["edgehub clock status", "edgehub clock status --config config/dev.toml"])
    c.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the edgehub.toml the hub runs with")
    c.set_defaults(func=lambda a: _box_config(a) or _cmd_clock_status(a))

    p = command(sub, "sim", "simulated store parts (no hardware)",
                "Simulated parts of a store, to try the hub without hardware.",
                ["edgehub sim terminal --config config/dev.toml --orders 200 --rate 20", "edgehub sim store"])
    sim_sub = p.add_subparsers(dest="sim_command", required=True, metavar="PART")
    c = command(sim_sub, "terminal", "a POS terminal sending orders, re-sending each until acked",
                "Play POS terminals against a running hub: each sends orders at a steady rate over MQTT with its\n"
                "own login, re-sends an order until the hub acks it, and shows its progress on a terminal. At\n"
                "the end, one summary line per terminal. Exit 0 when every order was acked, 1 otherwise.",
                ["edgehub sim terminal --config config/dev.toml --orders 200 --rate 20",
                 "edgehub sim terminal --config config/dev.toml --terminal pos-1 --terminal pos-2 --json",
                 "edgehub sim terminal --broker 192.168.1.10:1883 --store store-0042 --terminal pos-1 "
                 "--password \"$(cat pos-1.pw)\""])
    c.add_argument("--config", metavar="FILE", help="take the broker, store and terminal logins from this edgehub.toml")
    c.add_argument("--broker", metavar="HOST:PORT",
                   help="the store broker (default with --config: its broker.lan_listen, else broker.listen)")
    c.add_argument("--store", help="store id (without --config)")
    c.add_argument("--terminal", action="append", metavar="ID",
                   help="terminal id, repeat for several (default with --config: its first pos terminal)")
    c.add_argument("--password", help="the terminal's MQTT password (without --config)")
    c.add_argument("--orders", type=int, default=100, help="orders each terminal sends")
    c.add_argument("--rate", type=float, default=10.0, help="orders per second per terminal (0: all at once)")
    c.add_argument("--resend-after", type=float, default=2.0, metavar="SECONDS",
                   help="seconds before an unacked order is sent again")
    c.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="seconds to wait for every ack")
    c.add_argument("--json", action="store_true", help="one JSON line per terminal instead of the summary")
    c.set_defaults(func=_cmd_sim_terminal)
    if tools:
        __import__("edgehub.sim.store", fromlist=["x"]).add_parser(sim_sub)  # sim store: devices only

    __import__("edgehub.discovery.cli", fromlist=["x"]).add_parser(sub)
    if tools:
        __import__("edgehub.devices.testcli", fromlist=["x"]).add_parser(sub)  # device test: the field check
    __import__("edgehub.uplink.synccli", fromlist=["x"]).add_parser(sub)
    __import__("edgehub.pair.cli", fromlist=["x"]).add_parser(sub)  # two boxes: keepalived config, resync

    p = command(sub, "doctor", "the installer's self-checks; exit 1 when one fails",
                "Run the installer's self-checks, each ok / warn / fail with what to do on this box: the hub\n"
                "answers, the broker takes the hub's login, the journal is sound, disk space and writes, the\n"
                "clock, the cloud, every device and role. Exit 1 when one fails.",
                ["edgehub doctor                              # on a provisioned box",
                 "edgehub doctor --config config/dev.toml     # beside make run", "edgehub doctor --json"])
    p.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the edgehub.toml the hub runs with")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=lambda a: _box_config(a) or __import__("edgehub.doctor", fromlist=["x"]).command(
        a.config, a.json))

    p = command(sub, "bundle", "write a support bundle (tar.gz, secrets removed)",
                "Write a support bundle: recent logs, the config, devices, roles and their history, the outbox,\n"
                "the status and the self-check, every secret of the config removed. From the running hub when\n"
                "it answers, else made here from what is on disk. Says where it wrote it.",
                ["edgehub bundle                              # on a box: /var/lib/edgehub/bundles/",
                 "edgehub bundle --config config/dev.toml     # beside make run: .run/data/bundles/",
                 "edgehub bundle -o /tmp/store-0042.tar.gz"])
    p.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the edgehub.toml the hub runs with")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="file to write (default: DATA_DIR/bundles/edgehub-STORE-TIME.tar.gz, DATA_DIR "
                        "being the config's [paths] data_dir)")
    p.set_defaults(func=lambda a: _box_config(a) or __import__("edgehub.bundle", fromlist=["x"]).command(
        a.config, a.output))

    p = sub.add_parser("provision", help="first-boot provisioning of a box (edgehub provision --help)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: __import__("edgehub.provision", fromlist=["main"]).main(a.rest))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["provision"]:
        # argparse.REMAINDER still rejects leading options, so provisioning parses its own.
        from edgehub.provision import main as provision_main

        return provision_main(argv[1:])
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except EdgehubError as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A file or folder the command needs (permissions, a full disk, a path that is not there):
        # what and where, never a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgehub {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
