"""The installer's field check through the running hub, as an installer meets it: the API and
``edgehub device test`` on a scale set to lb that the box reads as kg (the check says which
profile key to set), a CAS scale in 斤, a serial scanner with an LF suffix (the check takes one
scan, which never reaches the till, and shows its bytes); the result kept with the device
across a hub restart and in the support bundle."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import Config, load_config
from edgehub.hub import Hub
from edgehub.sim.scale import ScaleSim
from edgehub.sim.scanner import SerialScannerSim
from tests.conftest import API_TOKEN, REPO, Terminal, write_config

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Store:
    config: Config
    broker: MosquittoProcess
    lb_scale: ScaleSim
    jin_scale: ScaleSim
    scanner: SerialScannerSim

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.config.api.listen.port}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with (
        ScaleSim.from_profile("mt8217-lb", weight_g=1234) as lb_scale,
        ScaleSim.from_profile("cas-jin", weight_g=1234) as jin_scale,
        SerialScannerSim.from_profile("serial-lf") as scanner,
    ):
        extra = f"""
[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "counter-scale"
driver = "mt8217"
transport = "serial"
address = "{lb_scale.port}"

[[device]]
id = "veg-scale"
driver = "cas"
transport = "serial"
address = "{jin_scale.port}"

[[device]]
id = "till-scanner"
driver = "serial_scanner"
transport = "serial"
address = "{scanner.port}"

[[role]]
name = "scanner"
devices = ["till-scanner"]
"""
        config = load_config(write_config(tmp_path / "box", extra=extra))
        async with MosquittoProcess(config, die_with_parent=False) as broker:
            yield Store(config, broker, lb_scale, jin_scale, scanner)


async def running(config: Config) -> Hub:
    hub = Hub(config)
    await hub.__aenter__()
    async with asyncio.timeout(10):
        await hub.ready.wait()
        while any(e.health.state != "ready" for e in hub.registry.all()):
            await asyncio.sleep(0.05)
    return hub


async def test_field_checks_through_the_api_are_kept_with_the_device(store: Store, tmp_path: Path) -> None:
    hub = await running(store.config)
    try:
        async with Terminal(store.config, "pos-1") as pos, aiohttp.ClientSession(headers=AUTH) as http:
            await pos.client.subscribe(pos.topics.role_event("scanner", "scan"), qos=1)
            url = store.base + "/api/v1/devices/{}/field-check"

            async with http.post(url.format("counter-scale")) as response:
                assert response.status == 200
                lb = await response.json()
            assert lb["ok"] is False and lb["kind"] == "scale" and lb["driver"] == "mt8217"
            weight, unit = lb["steps"]
            assert weight["ok"] and "02.72 kg = 2720 g" in weight["detail"] and "stable" in weight["detail"]
            assert weight["raw_hex"] == "02 30 32 2e 37 32 0d"  # STX "02.72" CR: no unit in the frame
            assert not unit["ok"] and 'set unit = "lb"' in unit["detail"]
            assert lb["profile"] == {"unit": "lb"}

            async with http.post(url.format("veg-scale")) as response:
                jin = await response.json()
            assert jin["ok"] is True and jin["profile"] == {"mode": "ecr", "unit": "jin"}
            assert "2.468 jin = 1234 g" in jin["steps"][0]["detail"]

            async def scan_soon() -> None:
                await asyncio.sleep(0.3)
                store.scanner.scan("6901234567892")

            task = asyncio.create_task(scan_soon())
            async with http.post(url.format("till-scanner"), json={"wait_s": 10}) as response:
                scan = await response.json()
            await task
            assert scan["ok"] is True and scan["profile"] == {"terminator": "lf"}
            assert scan["steps"][0]["raw_hex"] == "36 39 30 31 32 33 34 35 36 37 38 39 32 0a"
            # The test scan went to the check, not to the till; the next real one goes to the till.
            store.scanner.scan("4006381333931")
            message = await pos.message(5.0)
            assert json.loads(message.payload)["code"] == "4006381333931"  # type: ignore[arg-type]

            async with http.post(url.format("till-scanner"), json={"wait_s": 0}) as response:
                assert response.status == 400 and "wait_s" in (await response.json())["error"]
            async with http.post(url.format("no-such")) as response:
                assert response.status == 404
            async with http.get(url.format("veg-scale")) as response:
                assert await response.json() == jin
            async with http.get(store.base + "/api/v1/devices") as response:
                described = {d["device_id"]: d for d in (await response.json())["devices"]}
            assert described["counter-scale"]["field_check"] == {"ok": False, "at": lb["at"]}
            assert described["till-scanner"]["field_check"]["ok"] is True

            # Two checks of one scanner at once: the second is refused, not interleaved.
            first = asyncio.create_task(http.post(url.format("till-scanner"), json={"wait_s": 2}))
            await asyncio.sleep(0.3)
            async with http.post(url.format("till-scanner"), json={"wait_s": 2}) as response:
                assert response.status == 409
            (await first).release()
    finally:
        await hub.__aexit__(None, None, None)

    hub = await running(store.config)  # the box restarts: the checks are still there
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(store.base + "/api/v1/devices/counter-scale/field-check") as response:
                assert await response.json() == lb
            async with http.get(store.base + "/api/v1/devices/counter-scale") as response:
                assert (await response.json())["field_check"] == {"ok": False, "at": lb["at"]}
            async with http.get(store.base + "/api/v1/bundle") as response:
                data = await response.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/field_checks.json"))
            handle = tar.extractfile(member)
            assert handle is not None
            kept = json.loads(handle.read())
        assert [c["device_id"] for c in kept] == ["counter-scale", "till-scanner", "veg-scale"]
        assert kept[0]["steps"][0]["raw_hex"] == "02 30 32 2e 37 32 0d"
    finally:
        await hub.__aexit__(None, None, None)

    # Without the hub, `edgehub bundle` reads them from the journal.
    out = tmp_path / "offline.tar.gz"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgehub", "bundle", "--config", str(store.config.source), "-o", str(out),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await proc.communicate()
    with tarfile.open(out, mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/field_checks.json"))
        handle = tar.extractfile(member)
        assert handle is not None
        assert len(json.loads(handle.read())) == 3


async def cli(config: Config, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgehub", "device", "test", *args, "--config", str(config.source), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_edgehub_device_test_on_the_running_hub(store: Store) -> None:
    code, out, err = await cli(store.config, "counter-scale")
    assert code == 1 and "cannot reach the hub" in err  # no hub running yet
    hub = await running(store.config)
    try:
        code, out, _ = await cli(store.config, "counter-scale")
        assert code == 1, out
        assert "scale counter-scale (mt8217 at" in out and ": FAIL" in out
        assert "02 30 32 2e 37 32 0d" in out and ".02.72." in out  # the frame, hex and ASCII
        assert "FAIL  unit" in out and 'unit = "lb"' in out

        code, out, _ = await cli(store.config, "veg-scale")
        assert code == 0 and ": PASS" in out and "2.468 jin = 1234 g" in out

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgehub", "device", "test", "till-scanner", "--wait", "10", "--config",
            str(store.config.source), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        prompt = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"scan a barcode with till-scanner now" in prompt
        await asyncio.sleep(0.5)  # the hub is waiting for the scan now
        store.scanner.scan("ABC-123")
        out_bytes, _ = await proc.communicate()
        assert proc.returncode == 0, out_bytes
        assert b"'ABC-123'" in out_bytes and b"LF after each code" in out_bytes

        code, out, err = await cli(store.config, "nope")
        assert code == 2 and "no device 'nope'" in err and "counter-scale" in err
        code, _, err = await cli(store.config, "till-scanner", "--wait", "500")
        assert code == 2 and "--wait" in err
        code, out, _ = await cli(store.config, "veg-scale", "--json")
        assert code == 0 and json.loads(out)["profile"]["unit"] == "jin"
    finally:
        await hub.__aexit__(None, None, None)


async def test_edgehub_device_test_on_a_box_whose_api_is_https(tmp_path: Path) -> None:
    from edgehub.api.tls import make_certificate

    async with ScaleSim.from_profile("cas-lb", weight_g=1000) as scale:
        tls = tmp_path / "box" / "tls"
        make_certificate(tls / "box.crt", tls / "box.key", "s1", [])
        path = write_config(tmp_path / "box", extra=f"""
[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "deli-scale"
driver = "cas"
transport = "serial"
address = "{scale.port}"
""")
        tls_keys = 'tls_cert_file = "tls/box.crt"\ntls_key_file = "tls/box.key"'
        path.write_text(path.read_text().replace(f'token = "{API_TOKEN}"', f'token = "{API_TOKEN}"\n{tls_keys}', 1))
        config = load_config(path)
        async with MosquittoProcess(config, die_with_parent=False):
            hub = await running(config)
            try:
                assert hub.api.url.startswith("https://")
                code, out, err = await cli(config, "deli-scale")
                assert code == 0, out + err
                assert "2.20 lb = 998 g" in out  # 1000 g shown as 2.20 lb, read back as 998 g
            finally:
                await hub.__aexit__(None, None, None)
