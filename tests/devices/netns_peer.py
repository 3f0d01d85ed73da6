"""One side of the real-mDNS test, run inside a network namespace by test_mdns_netns.py.

``printer ADDR``: an ESC/POS printer simulator on ADDR:9100, announced as _pdl-datastream._tcp.
``discover ADDR SECONDS``: browse from ADDR with LanDiscovery and print what it found as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edgehub.discovery.lan import LanDiscovery
from edgehub.sim.printer import PrinterSim


async def printer(addr: str) -> None:
    async with PrinterSim(host=addr, port=9100):
        zc = AsyncZeroconf(interfaces=[addr])
        info = AsyncServiceInfo(
            "_pdl-datastream._tcp.local.",
            "Kitchen TM-T20._pdl-datastream._tcp.local.",
            port=9100,
            properties={"ty": "EPSON TM-T20III", "usb_MFG": "EPSON", "usb_MDL": "TM-T20III"},
            parsed_addresses=[addr],
            server="tm-t20.local.",
        )
        await zc.async_register_service(info)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
        await zc.async_unregister_service(info)
        await zc.async_close()


async def discover(addr: str, seconds: float) -> None:
    zc = AsyncZeroconf(interfaces=[addr])
    found: list[dict[str, object]] = []
    done = asyncio.Event()

    async def on_found(info: object) -> None:
        found.append(dataclasses.asdict(info))  # type: ignore[call-overload]
        done.set()

    task = asyncio.create_task(LanDiscovery().browse(zc, on_found))
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await zc.async_close()
    print(json.dumps(found), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "printer":
        asyncio.run(printer(sys.argv[2]))
    else:
        asyncio.run(discover(sys.argv[2], float(sys.argv[3])))
