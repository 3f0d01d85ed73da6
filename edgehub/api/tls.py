"""The box's own HTTPS certificate: made once at provisioning, shown by its fingerprint.

A store box has no public name a certificate authority could vouch for, so each box gets a
self-signed certificate of its own (``edgehub provision`` writes ``tls/box.crt`` and
``tls/box.key`` next to the config). Browsers warn once; the installer compares the SHA-256
fingerprint the browser shows with the one ``edgehub doctor``, the provisioning summary and the
box's page show, and from then on the token, PIN and session cookie never cross the LAN in clear.
The box's own tools (doctor, bundle, sync) reach the API over loopback and trust exactly that
certificate, nothing else.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import socket
import ssl
from pathlib import Path

from edgehub.config import ApiConfig
from edgehub.errors import ConfigError
from edgehub.files import atomic_write

VALID_DAYS = 3650  # a box is replaced before then; its certificate is its identity for its life
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def make_certificate(cert_path: Path, key_path: Path, store_id: str, addresses: list[str],
                     owner: tuple[int, int] | None = None) -> None:
    """A new key (EC P-256) and a self-signed certificate naming this box: its host name (and
    ``.local``), ``localhost``, loopback and ``addresses``. The key file is 0600 (``owner`` when
    given), the certificate 0644; both written atomically."""
    # Imported here, not with the module: cryptography adds about 10 MB to the hub's RSS, and
    # a running hub only makes a certificate once in its life (docs/footprint.md, Memory).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname() or "edgehub"
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([host, f"{host}.local", "localhost"])]
    for text in dict.fromkeys(["127.0.0.1", "::1", *addresses]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            continue
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgehub {store_id}"[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "edgehub store box")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(key_path, key_pem, 0o600, owner)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, None)


PAIR_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def make_pair_certificate(cert_path: Path, key_path: Path, store_id: str, secret: bytes, addresses: list[str],
                          owner: tuple[int, int] | None = None) -> bool:
    """The certificate both boxes of a pair serve (docs/pair.md): its key derived from the pair
    secret, every field fixed and the signature deterministic (RFC 6979), so each box makes the
    same bytes on its own and a browser or kitchen tablet that trusts the page keeps trusting it
    after a takeover. It names the floating address and both boxes' own (``addresses``).
    Returns False when the files already hold exactly that certificate."""
    from cryptography import x509  # imported here for the same reason as in make_certificate
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    seed = hashlib.sha256(b"edgehub-pair-tls/1:" + secret).digest()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's group order
    key = ec.derive_private_key(int.from_bytes(seed, "big") % (order - 1) + 1, ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    # In a fixed order: each box names itself and the other the other way round.
    for text in dict.fromkeys(["127.0.0.1", "::1", *sorted(set(addresses))]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            continue
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgehub {store_id}"[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "edgehub store pair")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(seed + store_id.encode()).digest()[:16], "big") >> 1)
        .not_valid_before(PAIR_NOT_BEFORE)
        .not_valid_after(PAIR_NOT_BEFORE + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    if cert_path.exists() and key_path.exists() and cert_path.read_bytes() == cert_pem:
        return False
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(key_path, key_pem, 0o600, owner)
    _write(cert_path, cert_pem, 0o644, None)
    return True


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode, owner)


def fingerprint(cert_path: Path) -> str:
    """``SHA256 AB:CD:…`` of the certificate (the file's first, when it holds a chain), as browsers
    show it."""
    found = _PEM_CERT.search(cert_path.read_text(errors="replace"))
    try:
        if found is None:
            raise ValueError("no PEM certificate in it")
        der = ssl.PEM_cert_to_DER_cert(found.group(0))
    except ValueError as exc:
        raise ConfigError([f"api.tls_cert_file: {cert_path} is not a PEM certificate: {exc}"]) from exc
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256 " + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def ensure_certificate(api: ApiConfig, store_id: str) -> bool:
    """Make the box's certificate where the config expects the hub to keep its own
    (``api.tls_made_by_hub``: a LAN listener in a config written before HTTPS) if it is not there
    yet. True when one was made."""
    if not api.tls_made_by_hub or api.tls_cert_file is None or api.tls_key_file is None:
        return False
    if api.tls_cert_file.exists() and api.tls_key_file.exists():
        return False
    make_certificate(api.tls_cert_file, api.tls_key_file, store_id, [])
    return True


def server_context(api: ApiConfig) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain HTTP."""
    if api.tls_cert_file is None or api.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(api.tls_cert_file, api.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"api.tls_cert_file: cannot load {api.tls_cert_file} with its key "
                           f"{api.tls_key_file}: {exc}"]) from exc
    return context


def client_context(api: ApiConfig) -> ssl.SSLContext | None:
    """How the box's own tools reach its API: trusting the box's certificate and nothing else
    (they connect to loopback, which the certificate may not name: the pin is the check)."""
    if api.tls_cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(api.tls_cert_file))
    context.check_hostname = False
    return context
