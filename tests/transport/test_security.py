"""Deployment credentials: real certificates that verify and shake hands, tokens the registry knows by hash only."""

import ipaddress
import re
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from fedstack.errors import FedstackError
from fedstack.transport.security import ClientRegistry, hash_token, make_credentials, read_pem, read_token

CLIENTS = ("client-1", "client-2", "client-3")


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return make_credentials(tmp_path_factory.mktemp("creds") / "certs", 3)


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(c: x509.Certificate) -> str:
    return c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_modes(creds):
    for name in ("ca.key", "server.key", *(f"{c}.key" for c in CLIENTS), *(f"{c}.token" for c in CLIENTS)):
        assert mode(creds / name) == 0o600, name
    for name in ("ca.pem", "server.pem", "clients.toml", *(f"{c}.pem" for c in CLIENTS)):
        assert (creds / name).is_file(), name
    assert not (creds / "client-4.pem").exists()


def test_keys_are_unencrypted_pkcs8_and_match_their_certificates(creds):
    for stem in ("ca", "server", *CLIENTS):
        pem = (creds / f"{stem}.key").read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        key = serialization.load_pem_private_key(pem, password=None)
        assert key.public_key() == cert(creds / f"{stem}.pem").public_key()


def test_certificates_chain_to_the_ca(creds):
    ca = cert(creds / "ca.pem")
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    server = cert(creds / "server.pem")
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert x509.DNSName("localhost") in san
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in san
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    for name in CLIENTS:
        client = cert(creds / f"{name}.pem")
        client.verify_directly_issued_by(ca)
        assert common_name(client) == name
        assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_foreign_ca_does_not_verify(creds, tmp_path):
    other = make_credentials(tmp_path / "other", 1)
    with pytest.raises(InvalidSignature):
        cert(creds / "server.pem").verify_directly_issued_by(cert(other / "ca.pem"))


def test_hosts_and_validity(tmp_path):
    out = make_credentials(tmp_path / "c", 1, hosts=("fl.example.org", "10.0.0.7", "::1"), days=30)
    server = cert(out / "server.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 120


def test_registry_knows_hashes_not_tokens(creds):
    registry_text = (creds / "clients.toml").read_text()
    tokens = [read_token(creds / f"{c}.token") for c in CLIENTS]
    assert len(set(tokens)) == 3 and all(len(t) >= 43 for t in tokens)
    assert not any(t in registry_text for t in tokens)
    registry = ClientRegistry.load(creds / "clients.toml")
    assert registry.names == list(CLIENTS)
    assert registry.identify(tokens[1]) == "client-2"
    assert registry.identify(f"  {tokens[0]}\n") == "client-1"
    assert registry.identify(tokens[1] + "x") is None
    assert registry.identify("") is None
    assert registry.identify("   ") is None
    assert registry.identify(None) is None
    assert ClientRegistry({hash_token(""): "blank"}).identify("  ") is None  # an empty token is never a credential


def test_refuses_to_overwrite(creds):
    before = {p.name: p.read_bytes() for p in creds.iterdir()}
    with pytest.raises(FedstackError, match=r"ca\.pem"):
        make_credentials(creds, 3)
    assert {p.name: p.read_bytes() for p in creds.iterdir()} == before


@pytest.mark.parametrize("args", [{"clients": 0}, {"clients": 1, "hosts": ()}, {"clients": 1, "days": 0}])
def test_refuses_bad_arguments(tmp_path, args):
    with pytest.raises(FedstackError):
        make_credentials(tmp_path / "c", **args)


def entry(name: str | None, digest: str | None) -> str:
    """One [[client]] table, leaving out what is None."""
    lines = ["[[client]]", *([f"name = '{name}'"] if name else []), *([f"token_sha256 = '{digest}'"] if digest else [])]
    return "\n".join(lines) + "\n"


GOOD = "a" * 64
BAD_REGISTRIES = {
    "bad toml": ("[[client]\nname = 'x'", "not valid TOML"),
    "no clients": ("title = 'x'\n", "[[client]]"),
    "missing name": (entry(None, GOOD), "#1: needs name"),
    "missing hash": (entry("a", None), "#1 (a): needs token_sha256"),
    "short hash": (entry("a", "abc123"), "not 64 hex digits"),
    "non-hex hash": (entry("a", "g" * 64), "not 64 hex digits"),
    "duplicate name": (entry("a", GOOD) + entry("a", "b" * 64), "#2 (a): duplicate name"),
    "duplicate hash": (entry("a", GOOD) + entry("b", GOOD.upper()), "#2 (b): same token_sha256"),
}


@pytest.mark.parametrize("case", BAD_REGISTRIES)
def test_registry_errors_name_the_file(tmp_path, case):
    text, fragment = BAD_REGISTRIES[case]
    path = tmp_path / "clients.toml"
    path.write_text(text)
    with pytest.raises(FedstackError) as info:
        ClientRegistry.load(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_missing_files_are_named(tmp_path):
    for call in (ClientRegistry.load, read_token, read_pem):
        with pytest.raises(FedstackError, match="nowhere"):
            call(tmp_path / "nowhere")
    (tmp_path / "empty.token").write_text(" \n")
    with pytest.raises(FedstackError, match=r"empty\.token.*empty"):
        read_token(tmp_path / "empty.token")
    (tmp_path / "key.txt").write_text("not a key")
    with pytest.raises(FedstackError, match=r"key\.txt.*not a PEM"):
        read_pem(tmp_path / "key.txt")


def test_read_pem_returns_the_bytes(creds):
    assert read_pem(creds / "server.pem") == (creds / "server.pem").read_bytes()


@given(st.text(), st.lists(st.text(), max_size=4))
def test_identify_only_registered_tokens(token, registered):
    registered = [t for t in registered if t.strip()]
    registry = ClientRegistry({hash_token(t): t.strip() for t in registered})
    expected = token.strip() if token.strip() in registry.names else None
    assert registry.identify(token) == expected


@given(st.text())
def test_hash_token_is_hex_and_ignores_surrounding_whitespace(token):
    digest = hash_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_token(f" \t{token}\r\n ") == digest


def handshake(creds, client_cert: str | None, server_hostname: str = "127.0.0.1") -> dict:
    """One TLS connection on loopback, the server requiring a client certificate from the CA."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(creds / "server.pem", creds / "server.key")
    server_ctx.load_verify_locations(creds / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server's certificate and host name
    client_ctx.load_verify_locations(creds / "ca.pem")
    if client_cert:
        client_ctx.load_cert_chain(creds / f"{client_cert}.pem", creds / f"{client_cert}.key")
    seen: dict = {}

    def serve(listener):
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(b"ok")
        except OSError as exc:  # ssl.SSLError is an OSError
            seen["server_error"] = exc

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(2)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        try:
            with (socket.create_connection(listener.getsockname(), timeout=2) as raw,
                  client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls):
                seen["server_cert"] = tls.getpeercert()
                seen["reply"] = tls.recv(2)
        except OSError as exc:
            seen["client_error"] = exc
        thread.join(3)
    assert not thread.is_alive()
    return seen


def test_mutual_tls_handshake(creds):
    seen = handshake(creds, "client-1")
    assert seen.get("reply") == b"ok", seen
    assert dict(rdn[0] for rdn in seen["peer"]["subject"])["commonName"] == "client-1"
    assert ("IP Address", "127.0.0.1") in seen["server_cert"]["subjectAltName"]
    assert handshake(creds, "client-2", server_hostname="localhost").get("reply") == b"ok"


def test_client_without_certificate_is_refused(creds):
    seen = handshake(creds, None)
    assert isinstance(seen.get("server_error"), ssl.SSLError), seen
    assert "peer" not in seen and not seen.get("reply")


def test_client_certificate_from_another_ca_is_refused(creds, tmp_path):
    other = make_credentials(tmp_path / "other", 1)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        (mixed / name).write_bytes((creds / name).read_bytes())
    for name in ("client-1.pem", "client-1.key"):
        (mixed / name).write_bytes((other / name).read_bytes())
    seen = handshake(mixed, "client-1")
    assert isinstance(seen.get("server_error"), ssl.SSLError), seen
    assert not seen.get("reply")


def test_server_certificate_is_only_good_for_its_hosts(creds):
    seen = handshake(creds, "client-1", server_hostname="elsewhere.example")
    assert isinstance(seen.get("client_error"), ssl.SSLCertVerificationError), seen
