"""The ``edgehub`` command: run the daemon, check a config, simulate a store, provision a box.

Exit codes: 0 ok, 1 runtime failure, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from edgehub import __version__
from edgehub.errors import ConfigError, EdgehubError

# Where the image's provisioning writes the box's config (systemd/edgehub.service runs with it):
# the tools an installer runs on the box find it without being told.
BOX_CONFIG = "/etc/edgehub/edgehub.toml"


def _cmd_run(args: argparse.Namespace) -> int:
    from edgehub import logs
    from edgehub.config import load_config
    from edgehub.gctuning import FreezeSurvivors, Trimmer
    from edgehub.hub import Hub
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
    logs.setup(config.log.level, config.log.components, journald="JOURNAL_STREAM" in os.environ)
    FreezeSurvivors().install()  # full collections skip what survived the last one (gctuning.py)
    Trimmer().install()  # freed heap handed back to the system after a rush (gctuning.py)
    from edgehub.memdump import install_from_env

    install_from_env()  # EDGEHUB_TRACEMALLOC: snapshot on SIGUSR2, off by default (memdump.py)

    async def announce(hub: Hub) -> None:
        await hub.ready.wait()
        print(f"edgehub {__version__}: store {config.store.id} ready", flush=True)
        print(f"  broker     mqtt://{hub.bus.host}:{hub.bus.port}", flush=True)
        print(f"  dashboard  {hub.api.url}", flush=True)
        print(f"  health     {hub.api.url}healthz", flush=True)

    async def run(hub: Hub) -> None:
        # The hub that runs is the one announced (with --simulate it is made once the simulated
        # devices are up: announcing a hub made before them waited for ever, and `make run`
        # never printed its dashboard).
        task = asyncio.create_task(announce(hub))
        try:
            await hub.run_until_stopped()
        finally:
            task.cancel()

    async def main() -> None:
        if args.simulate and config.devices:
            # Real devices configured: they are what this box drives.
            print(f"--simulate: {len(config.devices)} devices configured in {args.config}; "
                  "not simulating", flush=True)
        elif args.simulate:  # a store's devices without hardware: printers, scale, scanner, pinpad
            from edgehub.sim.store import SimStore, with_sim_devices

            async with SimStore(profiles=profiles) as sim:
                await run(Hub(with_sim_devices(config, sim), Notifier(), usb_backend=sim.usb_backend))
            return
        await run(Hub(config, Notifier()))

    asyncio.run(main())
    return 0


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
    reports = asyncio.run(run_terminals(sims, args.orders, args.rate, args.timeout))
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


def _box_config(args: argparse.Namespace) -> int:
    """2 (and why) when no --config was given and this is not a provisioned box; else 0."""
    if args.config == BOX_CONFIG and not os.path.exists(BOX_CONFIG):
        print(f"no box config at {BOX_CONFIG} (not a provisioned box?): give --config FILE, the config "
              "edgehub runs with", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgehub", description="The store box daemon and its tools.")
    parser.add_argument("--version", action="version", version=f"edgehub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", required=True, help="path to edgehub.toml")
    p.add_argument("--simulate", action="store_true",
                   help="run with a simulated store's devices (no hardware)")
    p.add_argument("--sim-profile", action="append", default=[], metavar="SLOT=PROFILE",
                   help="with --simulate: a real unit's habits for a device slot, e.g. scale=mt8217-lb, "
                        "scanner=hid-report-id (repeat; the profiles: docs/devices.md)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser("check", help="validate config files; exit 2 listing every problem")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser("broker", help="the store's Mosquitto")
    broker_sub = p.add_subparsers(dest="broker_command", required=True)
    c = broker_sub.add_parser("write-config", help="write mosquitto.conf, passwd and acl from the config")
    c.add_argument("--config", required=True, help="path to edgehub.toml")
    c.set_defaults(func=_cmd_broker_config)

    p = sub.add_parser("sim", help="simulated store parts")
    sim_sub = p.add_subparsers(dest="sim_command", required=True)
    c = sim_sub.add_parser("terminal", help="a POS terminal sending orders and re-sending until acked")
    c.add_argument("--config", help="take broker, store and credentials from this edgehub.toml")
    c.add_argument("--broker", help="host:port of the store broker")
    c.add_argument("--store", help="store id (without --config)")
    c.add_argument("--terminal", action="append", help="terminal id (repeat for several terminals)")
    c.add_argument("--password", help="the terminal's MQTT password (without --config)")
    c.add_argument("--orders", type=int, default=100, help="orders each terminal sends")
    c.add_argument("--rate", type=float, default=10.0, help="orders per second per terminal")
    c.add_argument("--resend-after", type=float, default=2.0, help="seconds before an unacked order is re-sent")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every ack")
    c.add_argument("--json", action="store_true", help="a JSON line per terminal")
    c.set_defaults(func=_cmd_sim_terminal)
    __import__("edgehub.sim.store", fromlist=["x"]).add_parser(sim_sub)  # sim store: devices only

    __import__("edgehub.discovery.cli", fromlist=["x"]).add_parser(sub)
    __import__("edgehub.devices.testcli", fromlist=["x"]).add_parser(sub)  # device test: the field check
    __import__("edgehub.uplink.synccli", fromlist=["x"]).add_parser(sub)

    p = sub.add_parser("doctor", help="run the installer's self-checks; exit 1 when one fails")
    p.add_argument("--config", default=BOX_CONFIG, help=f"path to edgehub.toml (default: the box's, {BOX_CONFIG})")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=lambda a: _box_config(a) or __import__("edgehub.doctor", fromlist=["x"]).command(
        a.config, a.json))

    p = sub.add_parser("bundle", help="write a support bundle (tar.gz, secrets removed)")
    p.add_argument("--config", default=BOX_CONFIG, help=f"path to edgehub.toml (default: the box's, {BOX_CONFIG})")
    p.add_argument("-o", "--output", help="file to write (default: edgehub-STORE-TIME.tar.gz here)")
    p.set_defaults(func=lambda a: _box_config(a) or __import__("edgehub.bundle", fromlist=["x"]).command(
        a.config, a.output))

    p = sub.add_parser("provision", help="first-boot provisioning of a box", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: __import__("edgehub.provision", fromlist=["main"]).main(a.rest))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["provision"]:
        # argparse.REMAINDER still rejects leading options, so provisioning parses its own.
        from edgehub.provision import main as provision_main

        return provision_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except EdgehubError as exc:
        print(f"edgehub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
