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
