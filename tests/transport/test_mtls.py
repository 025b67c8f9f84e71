"""Mutual TLS against a live server: a certificate from another CA, or another client's, is refused."""

import subprocess
import sys

import grpc
import pytest

from fedstack.transport import PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.security import make_credentials, read_pem, read_token
from fedstack.transport.wire import GRPC_OPTIONS


@pytest.fixture
def mtls_server(tmp_path):
    creds = make_credentials(tmp_path / "certs", 2)
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", "--set", "data.name=digits",
                               "--set", "data.num_clients=2", "--set", "server.clients_per_round=2",
                               "--set", "server.min_clients=2", "--clients", str(creds / "clients.toml"),
                               "--listen", "127.0.0.1:0", "--tls-cert", str(creds / "server.pem"),
                               "--tls-key", str(creds / "server.key"), "--tls-client-ca", str(creds / "ca.pem"),
                               "--out", str(tmp_path / "run"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    yield creds, port
    server.kill()


def join(creds, port, cert_dir, cert_name, token_name):
    credentials = grpc.ssl_channel_credentials(root_certificates=read_pem(creds / "ca.pem"),
                                               private_key=read_pem(cert_dir / f"{cert_name}.key"),
                                               certificate_chain=read_pem(cert_dir / f"{cert_name}.pem"))
    with grpc.secure_channel(f"localhost:{port}", credentials, options=GRPC_OPTIONS) as channel:
        meta = (("authorization", f"Bearer {read_token(creds / f'{token_name}.token')}"),)
        return pb_grpc.FederationStub(channel).Join(pb.Hello(protocol=PROTOCOL), metadata=meta, timeout=20)


def test_mutual_tls_checks_the_certificate_and_its_owner(mtls_server, tmp_path):
    creds, port = mtls_server
    assert join(creds, port, creds, "client-1", "client-1").client == "client-1"
    with pytest.raises(grpc.RpcError) as err:  # client-2's certificate with client-1's token
        join(creds, port, creds, "client-2", "client-1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other = make_credentials(tmp_path / "other-ca", 1)
    with pytest.raises(grpc.RpcError) as err:  # a certificate signed by a CA the server does not trust
        join(creds, port, other, "client-1", "client-1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_expired_client_certificate_is_refused(mtls_server, tmp_path):
    creds, port = mtls_server
    # the same certificate, valid now, is accepted: what fails below is the expiry alone
    assert join(creds, port, own_cert(creds, tmp_path / "fresh", expired=False), "client-1", "client-1").client
    with pytest.raises(grpc.RpcError) as err:
        join(creds, port, own_cert(creds, tmp_path / "expired", expired=True), "client-1", "client-1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def own_cert(creds, out, expired):
    """A client-1 certificate signed by the run's CA, valid until yesterday or until tomorrow."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(read_pem(creds / "ca.pem"))
    ca_key = serialization.load_pem_private_key(read_pem(creds / "ca.key"), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    end = now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=1)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client-1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir()
    (out / "client-1.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client-1.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out
