"""The uplink over ``mqtts://`` with a client certificate, as in a store: a private Mosquitto with
a TLS listener that requires a certificate signed by the test's own CA (and a plain loopback
listener of the same broker for the cloud recorder). A backlog drains through TLS once, in order;
a box certificate the cloud's CA did not sign is refused, visibly, and nothing leaves the outbox."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgehub.broker import free_port
from edgehub.config import Config, load_config
from tests.conftest import write_config
from tests.uplink.cloudside import BOX_USER, CloudBroker, CloudRecorder
from tests.uplink.conftest import Rig, assert_cloud_has_everything, cloud_toml, pending_rows, seed_outbox

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return crt, key


def _issue(d: Path, name: str, cn: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, crt, extfile = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
             cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(crt), "-days", "2", "-extfile", str(extfile), cwd=d)
    return crt, key


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    box: tuple[Path, Path]
    rogue_box: tuple[Path, Path]  # signed by a CA the cloud does not trust


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(d, "cloud-ca")
    server = _issue(d, "server", "127.0.0.1", ca,
                    "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE")
    client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE"
    box = _issue(d, "box", BOX_USER, ca, client_ext)
    rogue_ca = _make_ca(d, "rogue-ca")
    rogue = _issue(d, "rogue-box", BOX_USER, rogue_ca, client_ext)
    return Pki(ca[0], server, box, rogue)


class TlsCloudBroker(CloudBroker):
    """The cloud broker of cloudside.py (its password file and ACL) with a second listener: TLS,
    a client certificate from the cloud's CA required. The plain listener (``port``) stays, on
    loopback, for the recorder."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.pki = pki
        self.tls_port = free_port()
        super().__init__(directory, extra_conf=[
            f"listener {self.tls_port} 127.0.0.1", f"cafile {pki.ca}", f"certfile {pki.server[0]}",
            f"keyfile {pki.server[1]}", "require_certificate true",
        ])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def tls_cloud(tmp_path: Path, pki: Pki) -> AsyncIterator[TlsCloudBroker]:
    broker = TlsCloudBroker(tmp_path / "cloud", pki)
    async with broker:
        yield broker


def tls_box_config(tmp_path: Path, cloud: TlsCloudBroker, cert: tuple[Path, Path]) -> Config:
    extra = cloud_toml(cloud.tls_port, url=f"mqtts://127.0.0.1:{cloud.tls_port}", ca_file=str(cloud.pki.ca),
                       cert_file=str(cert[0]), key_file=str(cert[1]), connect_timeout_s=5)
    config = load_config(write_config(tmp_path / "box", mode="managed", extra=extra))
    assert config.cloud.tls and config.cloud.cert_file == cert[0]
    return config


async def test_backlog_drains_once_in_order_over_tls(tmp_path: Path, tls_cloud: TlsCloudBroker) -> None:
    config = tls_box_config(tmp_path, tls_cloud, tls_cloud.pki.box)
    journal = config.journal.path
    ids = await seed_outbox(journal, {"orders": 2500, "payments": 800, "kitchen": 1500, "devices": 200})
    with CloudRecorder(tls_cloud.port) as recorder:
        async with Rig(config) as rig:
            await rig.wait_online()
            await rig.wait_drained(timeout=120)
            status = await rig.uplink.status()
        await recorder.wait_for_ids(ids)
    assert_cloud_has_everything(recorder, journal, ids)
    assert recorder.stream_seqs("orders") == list(range(1, 2501))
    assert status["streams"]["orders"]["acked"] == 2500 and status["backlog"] == 0
    assert status["link"]["state"] == "online"


async def test_client_certificate_from_another_ca_is_refused(tmp_path: Path, tls_cloud: TlsCloudBroker) -> None:
    config = tls_box_config(tmp_path, tls_cloud, tls_cloud.pki.rogue_box)
    ids = await seed_outbox(config.journal.path, {"orders": 20})
    with CloudRecorder(tls_cloud.port) as recorder:
        async with Rig(config) as rig:
            deadline = time.monotonic() + 20
            while not (rig.uplink.last_error and rig.uplink.connects == 0 and rig.uplink.state == "offline"):
                assert time.monotonic() < deadline, f"no refusal: {rig.uplink.state} {rig.uplink.last_error!r}"
                await asyncio.sleep(0.05)
            status = await rig.uplink.status()
            assert status["link"]["state"] != "online"
            error = status["link"]["last_error"]
            assert f"127.0.0.1:{tls_cloud.tls_port}" in error, error
            # The broker's TLS alert, not paho's bare "Unspecified error".
            assert "TLS error" in error and "unknown ca" in error.lower() and "cert_file" in error, error
            assert await rig.backlog() == len(ids)
    assert pending_rows(config.journal.path) == len(ids)
    assert recorder.count() == 0
