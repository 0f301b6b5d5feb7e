"""Certificates for gRPC with mutual TLS: the federation's own CA, its server and its clients.

A federation folder (made by ``fedloom certs``) holds::

    ca.pem, ca.key              the federation's CA (keep ca.key off the server if you can)
    server.pem, server.key      the server: CN ``fedloom-server``; SAN its hosts and that name
    clients/<id>.pem, <id>.key  one per client: the CN (and a SAN DNS name) is the client id
    revoked.txt                 what the server refuses, one a line (``#`` starts a comment):
                                ``ID SERIAL`` one certificate of client ID (its serial in
                                hex), ``ID`` alone every certificate of ID

Keys are EC P-256, unencrypted PKCS#8 PEM, mode 0o600; certificates are signed ECDSA-SHA256.
Nothing here is hand-written cryptography: this module fixes parameters and the file layout.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom._io import atomic_write
from fedloom.errors import ConfigError, DataError

__all__ = [
    "SERVER_NAME",
    "Credentials",
    "Revocations",
    "client_id_of",
    "create_federation",
    "credentials",
    "issue_client",
    "revocations",
    "revoke",
    "revoked",
    "serial_of",
    "valid_client_id",
]

SERVER_NAME = "fedloom-server"  # the server's CN, also in its SAN: for ssl_target_name_override
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9*._-]{1,253}")
_HOW = "create the federation's certificates with `fedloom certs` (see `fedloom certs --help`)"
_SKEW = dt.timedelta(minutes=5)  # backdated, for peers whose clocks run a little behind
_REVOKED = "revoked.txt"
_MAX_DAYS = 36_500  # a hundred years: later dates do not fit a certificate's clock
_Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Credentials:
    """Paths of one party's PEM files.

    Parameters
    ----------
    cert, key
        This party's certificate and private key.
    ca
        The federation's CA certificate, to verify the other side.
    """

    cert: Path
    key: Path
    ca: Path

    def load(self) -> tuple[bytes, bytes, bytes]:
        """Read ``(cert_pem, key_pem, ca_pem)``; a missing file raises ``DataError`` naming it."""
        read = []
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            try:
                read.append(Path(path).read_bytes())
            except OSError as e:
                raise DataError(f"cannot read the {what} {path} ({e.strerror}); {_HOW}") from e
        return read[0], read[1], read[2]


def create_federation(
    out: Path, *, server_hosts: Sequence[str], clients: Sequence[str], days: int = 365
) -> dict[str, Credentials]:
    """Create a federation's CA, server and client credentials in ``out``, or extend it.

    If ``out/ca.pem`` and ``out/ca.key`` exist, that CA is reused and only the server and the
    clients without a certificate are issued; existing files are left untouched.

    Parameters
    ----------
    out
        The federation folder (created if missing).
    server_hosts
        IP addresses and DNS names clients dial to reach the server (its subjectAltName).
    clients
        Client ids, each 1 to 64 of ``A-Z a-z 0-9 . _ -``; the id is the certificate's CN.
    days
        Validity of new certificates, capped at the CA's own expiry.

    Returns
    -------
    dict
        ``{"server": Credentials, "<client id>": Credentials, ...}``.

    Raises
    ------
    ConfigError
        A bad or duplicate id or host, or only one of ``ca.pem`` and ``ca.key`` exists.
    DataError
        The existing CA cannot be loaded, or its key and certificate do not match.
    """
    out, ca_pem, ca_key = Path(out), Path(out) / "ca.pem", Path(out) / "ca.key"
    if isinstance(clients, str) or isinstance(server_hosts, str):
        raise ConfigError("clients and server_hosts are lists of strings, not one string")
    _check(clients, days)
    if dupes := sorted(c for c, n in Counter(clients).items() if n > 1):
        raise ConfigError(f"duplicate client id(s) {dupes}: each client needs its own id")
    sans = [_san(host) for host in dict.fromkeys([*server_hosts, SERVER_NAME])]
    if ca_pem.exists() != ca_key.exists():
        found, absent = (ca_pem, ca_key) if ca_pem.exists() else (ca_key, ca_pem)
        raise ConfigError(
            f"{found} exists without {absent.name}: refusing to replace the federation's CA; "
            f"restore {absent.name}, or delete {found.name} to start a new federation"
        )
    fresh = not ca_pem.exists()  # then anything already in out/ was signed by another CA
    ca = _issue("fedloom federation CA", None, days) if fresh else _load_ca(out)
    if fresh:
        _save(ca, Credentials(ca_pem, ca_key, ca_pem))
    made = {"server": credentials(out, "server")}
    if fresh or not made["server"].cert.exists():
        server = _issue(SERVER_NAME, ca, days, sans, ExtendedKeyUsageOID.SERVER_AUTH)
        _save(server, made["server"])
    refused = revocations(out)
    for client_id in clients:
        made[client_id] = _client(out, client_id)
        cert = made[client_id].cert
        revoked_one = cert.exists() and (client_id, serial_of(cert.read_bytes())) in refused.serials
        if fresh or not cert.exists() or revoked_one:
            # new, or its certificate was revoked by serial: a new certificate (and key); a
            # client revoked by id alone (every certificate of it) is not issued another
            _save(_client_cert(ca, client_id, days), made[client_id])
    return made


def issue_client(out: Path, client_id: str, *, days: int = 365) -> Credentials:
    """Add one client to the federation in ``out``, which needs ``ca.pem`` and ``ca.key``.

    Raises ``ConfigError`` for a bad id or one that has a certificate already (delete its files
    to reissue), ``DataError`` if the CA is missing or unreadable.
    """
    _check([client_id], days)
    creds = _client(Path(out), client_id)
    if creds.cert.exists():
        raise ConfigError(
            f"client {client_id!r} already has {creds.cert}; delete it and {creds.key.name} "
            "to issue new credentials"
        )
    _save(_client_cert(_load_ca(Path(out)), client_id, days), creds)
    return creds


def client_id_of(cert_pem: bytes) -> str:
    """Return the common name (CN) of a PEM certificate: for a client, its id."""
    try:
        subject = x509.load_pem_x509_certificate(cert_pem).subject
    except ValueError as e:
        raise DataError(f"not a PEM certificate: {e}") from e
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise DataError(f"certificate {subject.rfc4514_string()!r} has no common name (CN)")
    return cns[0].value if isinstance(cns[0].value, str) else cns[0].value.decode()


def revoke(out: Path, client_id: str) -> None:
    """Refuse ``client_id``'s certificate from now on: append ``ID SERIAL`` to
    ``out/revoked.txt`` (created if missing; idempotent), or ``ID`` alone (every certificate of
    the client) when ``out`` holds no certificate of it. A later ``create_federation`` with the
    client re-issues it a new certificate, which is accepted; the old one stays refused."""
    _check([client_id], 1)
    path = Path(out) / _REVOKED
    cert = _client(Path(out), client_id).cert
    entry = client_id
    if cert.exists():
        entry = f"{client_id} {serial_of(cert.read_bytes()):x}"
    if entry not in _lines(path) and client_id not in _lines(path):
        old = path.read_bytes() if path.exists() else b""
        sep = b"\n" if old and not old.endswith(b"\n") else b""
        _write(path, old + sep + entry.encode() + b"\n", 0o644)


@dataclass(frozen=True)
class Revocations:
    """What ``revoked.txt`` refuses: every certificate of ``ids``, and the ``serials`` (client
    id, serial number) of single certificates."""

    ids: frozenset[str] = frozenset()
    serials: frozenset[tuple[str, int]] = frozenset()

    def refuses(self, client_id: str, serial: int | None) -> bool:
        """Is this client's certificate (of ``serial``, when known) revoked?"""
        return client_id in self.ids or (client_id, serial) in self.serials


def revocations(out_or_file: Path) -> Revocations:
    """What ``revoked.txt`` refuses, given its folder or the file (nothing if absent)."""
    ids, serials = set(), set()
    for line in _lines(out_or_file):
        client_id, _, serial = line.partition(" ")
        try:
            if serial.strip():
                serials.add((client_id, int(serial.strip(), 16)))
            else:
                ids.add(client_id)
        except ValueError:
            raise DataError(f"revoked.txt: {line!r} is not 'ID' or 'ID SERIAL' (hex)") from None
    return Revocations(frozenset(ids), frozenset(serials))


def serial_of(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate."""
    try:
        return int(x509.load_pem_x509_certificate(cert_pem).serial_number)
    except ValueError as e:
        raise DataError(f"not a PEM certificate: {e}") from e


def revoked(out_or_file: Path) -> frozenset[str]:
    """The ids with a revoked certificate in ``revoked.txt``, given its folder or the file
    (empty if absent)."""
    return frozenset(line.partition(" ")[0] for line in _lines(out_or_file))


def _lines(out_or_file: Path) -> list[str]:
    path = Path(out_or_file)
    path = path / _REVOKED if path.is_dir() else path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the revocation list {path}: {e}") from e
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def valid_client_id(client_id: str) -> bool:
    """Is ``client_id`` 1 to 64 of ``A-Z a-z 0-9 . _ -`` (no control or other characters)?"""
    return bool(_ID.fullmatch(client_id)) and client_id != "server"


def _check(client_ids: Sequence[str], days: int) -> None:
    for cid in client_ids:
        if not isinstance(cid, str) or not _ID.fullmatch(cid) or cid == "server":
            rule = "1 to 64 characters of A-Z a-z 0-9 . _ - (and not 'server')"
            raise ConfigError(f"invalid client id {cid!r}: a client id is {rule}")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise ConfigError(f"--days must be a whole number from 1 to {_MAX_DAYS}, got {days!r}")


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST.fullmatch(host):
        raise ConfigError(f"invalid server host {host!r}: give an IP address or a DNS name")
    return x509.DNSName(host)


def credentials(out: Path, who: str) -> Credentials:
    """Where :func:`create_federation` put the files of ``who`` (``"server"`` or a client id)."""
    out = Path(out)
    if who == "server":
        return Credentials(out / "server.pem", out / "server.key", out / "ca.pem")
    return _client(out, who)


def _client(out: Path, client_id: str) -> Credentials:
    folder = out / "clients"
    return Credentials(folder / f"{client_id}.pem", folder / f"{client_id}.key", out / "ca.pem")


def _client_cert(ca: _Issuer, client_id: str, days: int) -> _Issuer:
    sans: list[x509.GeneralName] = [x509.DNSName(client_id)]
    return _issue(client_id, ca, days, sans, ExtendedKeyUsageOID.CLIENT_AUTH)


def _issue(
    cn: str,
    issuer: _Issuer | None,
    days: int,
    sans: Sequence[x509.GeneralName] = (),
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> _Issuer:
    """Make a key and its certificate: a self-signed CA if ``issuer`` is None, else a TLS leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now, ca = dt.datetime.now(dt.timezone.utc), issuer is None
    end, signer = now + dt.timedelta(days=days), key if issuer is None else issuer[1]
    # KeyUsage: digital_signature for TLS leaves (ECDHE), key_cert_sign and crl_sign for the CA.
    usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)
    cert = (
        x509.CertificateBuilder(issuer_name=issuer[0].subject if issuer else name)
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(end, issuer[0].not_valid_after_utc) if issuer else end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        .add_extension(usage, True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if not ca:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key())
        cert = cert.add_extension(aki, False).add_extension(x509.ExtendedKeyUsage([eku]), False)
        cert = cert.add_extension(x509.SubjectAlternativeName(sans), False)
    return cert.sign(signer, hashes.SHA256()), key


def _load_ca(out: Path) -> _Issuer:
    pem, key_path = out / "ca.pem", out / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"cannot load the federation's CA {pem}, {key_path}: {e}; {_HOW}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise DataError(f"{key_path} is not the private key of {pem}; restore the matching pair")
    return cert, key


def _save(made: _Issuer, creds: Credentials) -> None:
    """Write the key first, so a certificate on disk always has its key."""
    cert, key = made
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    _write(creds.key, key.private_bytes(serialization.Encoding.PEM, pkcs8, plain), 0o600)
    _write(creds.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    atomic_write(path, data)  # through a mkstemp file: mode 0o600 from the start, keys never leak
    os.chmod(path, mode)
