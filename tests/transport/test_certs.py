"""Federation certificates, checked with the X.509 verifier of cryptography and real gRPC mTLS."""

import datetime as dt
import ipaddress
import stat
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedloom.errors import ConfigError, DataError
from fedloom.transport._certs import (
    SERVER_NAME,
    Credentials,
    client_id_of,
    create_federation,
    issue_client,
    revoke,
    revoked,
)

E = TypeVar("E", bound=x509.ExtensionType)
LOCALHOST = ipaddress.ip_address("127.0.0.1")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Credentials]]:
    out = tmp_path_factory.mktemp("federation")
    made = create_federation(
        out, server_hosts=["127.0.0.1", "fl.example.org"], clients=["alice", "bob_2"]
    )
    return out, made


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _policy(ca: Path) -> PolicyBuilder:
    return PolicyBuilder().store(Store([_cert(ca)])).time(dt.datetime.now(dt.timezone.utc))


def _ext(cert: x509.Certificate, kind: type[E]) -> E:
    return cert.extensions.get_extension_for_class(kind).value


def _files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_created_federation_verifies_against_its_ca(
    federation: tuple[Path, dict[str, Credentials]],
) -> None:
    out, made = federation
    server, alice = _cert(made["server"].cert), _cert(made["alice"].cert)

    for subject in (
        x509.IPAddress(LOCALHOST),
        x509.DNSName("fl.example.org"),
        x509.DNSName(SERVER_NAME),
    ):
        _policy(out / "ca.pem").build_server_verifier(subject).verify(server, [])
    verified = _policy(out / "ca.pem").build_client_verifier().verify(alice, [])

    assert sorted(made) == ["alice", "bob_2", "server"]
    assert made["bob_2"] == Credentials(
        out / "clients/bob_2.pem", out / "clients/bob_2.key", out / "ca.pem"
    )
    assert verified.subjects == [x509.DNSName("alice")]
    assert client_id_of(made["alice"].cert.read_bytes()) == "alice"
    assert client_id_of(made["server"].cert.read_bytes()) == SERVER_NAME
    assert list(_ext(server, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(_ext(alice, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert list(_ext(alice, x509.SubjectAlternativeName)) == [x509.DNSName("alice")]
    assert list(_ext(server, x509.SubjectAlternativeName)) == [
        x509.IPAddress(LOCALHOST),
        x509.DNSName("fl.example.org"),
        x509.DNSName(SERVER_NAME),
    ]
    ca = _cert(out / "ca.pem")
    assert _ext(ca, x509.BasicConstraints).ca is True
    assert _ext(server, x509.BasicConstraints).ca is _ext(alice, x509.BasicConstraints).ca is False
    assert server.issuer == alice.issuer == ca.subject
    assert alice.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def test_client_certificate_is_not_a_server_certificate(
    federation: tuple[Path, dict[str, Credentials]],
) -> None:
    out, made = federation
    alice, server = _cert(made["alice"].cert), _cert(made["server"].cert)

    with pytest.raises(VerificationError):
        _policy(out / "ca.pem").build_server_verifier(x509.DNSName("alice")).verify(alice, [])
    with pytest.raises(VerificationError):
        _policy(out / "ca.pem").build_client_verifier().verify(server, [])


def test_keys_are_private_and_certificates_readable(
    federation: tuple[Path, dict[str, Credentials]],
) -> None:
    out, _ = federation

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}

    assert modes == {
        "ca.key": 0o600,
        "server.key": 0o600,
        "alice.key": 0o600,
        "bob_2.key": 0o600,
        "ca.pem": 0o644,
        "server.pem": 0o644,
        "alice.pem": 0o644,
        "bob_2.pem": 0o644,
    }


def test_reusing_the_ca_leaves_files_untouched_and_adds_verifiable_clients(tmp_path: Path) -> None:
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["alice"])
    before = _files(tmp_path)

    made = create_federation(tmp_path, server_hosts=["10.0.0.1"], clients=["alice", "carol"])
    dave = issue_client(tmp_path, "dave", days=7)

    after = _files(tmp_path)
    assert {p: after[p] for p in before} == before
    assert set(after) - set(before) == {made["carol"].cert, made["carol"].key, dave.cert, dave.key}
    verifier = _policy(tmp_path / "ca.pem").build_client_verifier()
    assert verifier.verify(_cert(made["carol"].cert), []).subjects == [x509.DNSName("carol")]
    assert verifier.verify(_cert(dave.cert), []).subjects == [x509.DNSName("dave")]
    lifetime = _cert(dave.cert).not_valid_after_utc - _cert(dave.cert).not_valid_before_utc
    assert lifetime == dt.timedelta(days=7, minutes=5)


def test_leaf_validity_is_capped_at_the_ca_expiry(tmp_path: Path) -> None:
    create_federation(tmp_path, server_hosts=[], clients=[], days=2)

    late = issue_client(tmp_path, "late", days=365)

    assert _cert(late.cert).not_valid_after_utc == _cert(tmp_path / "ca.pem").not_valid_after_utc


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "ünï", "server", "alice\n"])
def test_bad_client_ids_are_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="client id") as err:
        create_federation(tmp_path / "out", server_hosts=["127.0.0.1"], clients=["ok", bad])

    assert repr(bad) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_duplicate_ids_bad_hosts_and_days_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"duplicate client id\(s\) \['a'\]"):
        create_federation(tmp_path, server_hosts=[], clients=["a", "b", "a"])
    with pytest.raises(ConfigError, match="invalid server host 'no such host'"):
        create_federation(tmp_path, server_hosts=["no such host"], clients=["a"])
    with pytest.raises(ConfigError, match="lists of strings"):
        create_federation(tmp_path, server_hosts=[], clients="alice")
    with pytest.raises(ConfigError, match="days"):
        create_federation(tmp_path, server_hosts=[], clients=["a"], days=0)
    assert list(tmp_path.iterdir()) == []


def test_a_lone_ca_key_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"precious")

    with pytest.raises(ConfigError, match="refusing to replace the federation's CA"):
        create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["a"])

    assert _files(tmp_path) == {tmp_path / "ca.key": b"precious"}


def test_issue_client_needs_a_ca_and_a_new_id(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fedloom certs"):
        issue_client(tmp_path, "alice")
    create_federation(tmp_path, server_hosts=[], clients=["alice"])
    with pytest.raises(ConfigError, match="already has"):
        issue_client(tmp_path, "alice")


def test_mismatched_ca_key_is_a_data_error(tmp_path: Path) -> None:
    create_federation(tmp_path / "one", server_hosts=[], clients=[])
    create_federation(tmp_path / "two", server_hosts=[], clients=[])
    (tmp_path / "one/ca.key").write_bytes((tmp_path / "two/ca.key").read_bytes())

    with pytest.raises(DataError, match="not the private key"):
        issue_client(tmp_path / "one", "alice")


def test_revoke_and_revoked_round_trip_idempotently(tmp_path: Path) -> None:
    assert revoked(tmp_path) == frozenset()

    revoke(tmp_path, "alice")
    revoke(tmp_path, "bob")
    revoke(tmp_path, "alice")

    assert (tmp_path / "revoked.txt").read_text() == "alice\nbob\n"
    assert revoked(tmp_path) == revoked(tmp_path / "revoked.txt") == {"alice", "bob"}
    (tmp_path / "revoked.txt").write_text("# comment\n\n  carol  \nalice")
    revoke(tmp_path, "dave")
    assert revoked(tmp_path) == {"alice", "carol", "dave"}
    with pytest.raises(ConfigError, match="client id"):
        revoke(tmp_path, "../etc")


def test_load_reads_the_three_files_and_names_a_missing_one(
    federation: tuple[Path, dict[str, Credentials]], tmp_path: Path
) -> None:
    _, made = federation
    cert, key, ca = made["alice"].load()
    missing = Credentials(made["alice"].cert, tmp_path / "nope.key", made["alice"].ca)

    with pytest.raises(DataError, match=r"nope\.key.*`fedloom certs`"):
        missing.load()

    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert ca == made["server"].ca.read_bytes()


def test_client_id_of_refuses_what_is_not_a_certificate() -> None:
    with pytest.raises(DataError, match="not a PEM certificate"):
        client_id_of(b"hello")


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    common_name: bytes = context.auth_context()["x509_common_name"][0]
    return common_name


def _call(port: int, creds: grpc.ChannelCredentials, override: str | None = None) -> bytes:
    options = [("grpc.ssl_target_name_override", override)] if override else []
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        answer: bytes = channel.unary_unary("/fedloom.Test/WhoAmI")(b"", timeout=5)
        return answer


def test_grpc_mutual_tls_names_the_client_and_refuses_strangers(
    federation: tuple[Path, dict[str, Credentials]], tmp_path: Path
) -> None:
    _, made = federation
    cert, key, ca = made["server"].load()
    alice_cert, alice_key, _ = made["alice"].load()
    stranger = create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["alice"])["alice"]
    s_cert, s_key, s_ca = stranger.load()
    handler = grpc.method_handlers_generic_handler(
        "fedloom.Test", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True),
    )
    server.start()
    try:
        own = grpc.ssl_channel_credentials(ca, alice_key, alice_cert)
        assert _call(port, own) == b"alice"
        assert _call(port, own, override=SERVER_NAME) == b"alice"
        refusals = [
            (own, "elsewhere.example.org"),  # the server's certificate does not name it
            (grpc.ssl_channel_credentials(ca, s_key, s_cert), None),  # another federation's CA
            (grpc.ssl_channel_credentials(ca), None),  # no client certificate
            (grpc.ssl_channel_credentials(s_ca, alice_key, alice_cert), None),  # distrusts server
        ]
        for creds, override in refusals:
            with pytest.raises(grpc.RpcError) as err:
                _call(port, creds, override)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_fedloom_certs_always_names_this_machine_in_the_server_certificate(
    tmp_path: Path,
) -> None:
    # Prepare / Execute: a federation for a server on another address, and one told otherwise
    from fedloom.cli import main

    assert main(["certs", "--out", str(tmp_path / "a"), "--server-host", "10.0.0.5"]) == 0
    assert main(["certs", "--out", str(tmp_path / "b"), "--server-host", "10.0.0.5",
                 "--no-local-hosts"]) == 0  # fmt: skip

    # Assert
    def names(folder: str) -> set[str]:
        san = _ext(_cert(tmp_path / folder / "server.pem"), x509.SubjectAlternativeName)
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        return ips | set(san.get_values_for_type(x509.DNSName))

    assert {"10.0.0.5", "127.0.0.1", "localhost"} <= names("a")
    assert "localhost" not in names("b") and "127.0.0.1" not in names("b")


def test_a_revoked_client_reissued_joins_with_its_new_certificate_and_not_its_old_one(
    tmp_path: Path,
) -> None:
    # Prepare: client "2" of a federation, revoked, then issued again
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["2"])
    old = (tmp_path / "clients" / "2.pem").read_bytes()
    revoke(tmp_path, "2")

    # Execute
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["2"])
    new = (tmp_path / "clients" / "2.pem").read_bytes()

    # Assert: the old certificate is refused by its serial, the new one is not
    from fedloom.transport._certs import revocations, serial_of

    refused = revocations(tmp_path)
    assert new != old
    assert refused.refuses("2", serial_of(old))
    assert not refused.refuses("2", serial_of(new))
    assert revoked(tmp_path) == {"2"}
    (tmp_path / "revoked.txt").write_text("2\n")  # an id alone: every certificate of it
    assert revocations(tmp_path).refuses("2", serial_of(new))


def test_a_client_revoked_by_id_alone_is_not_reissued(tmp_path: Path) -> None:
    # no certificate of "3" in the folder when it was revoked: every certificate of it stays
    # refused, so issuing it one would only make another refused certificate
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=[])
    revoke(tmp_path, "3")
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["3"])
    first = (tmp_path / "clients" / "3.pem").read_bytes()
    create_federation(tmp_path, server_hosts=["127.0.0.1"], clients=["3"])
    assert (tmp_path / "clients" / "3.pem").read_bytes() == first
