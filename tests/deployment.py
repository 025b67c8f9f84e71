"""A real deployment on loopback for tests: a TLS server process and client processes of `fedstack`."""

import subprocess
import sys


def start_server(tmp_path, creds, overrides):
    """`fedstack server` with TLS, the clients of `creds`, writing to tmp_path/run; (process, port)."""
    sets = [a for o in overrides for a in ("--set", o)]
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *sets, "--clients",
                               str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--out", str(tmp_path / "run"),
                               "--quiet", "--tls-cert", str(creds / "server.pem"), "--tls-key",
                               str(creds / "server.key")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + server.stderr.read()
    return server, int(line.rsplit(":", 1)[1])


def start_client(port, creds, i, *options):
    """`fedstack client` number i (its token from `creds`, TLS with their CA) with extra `options`."""
    return subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                             "--token-file", str(creds / f"client-{i}.token"), "--ca", str(creds / "ca.pem"),
                             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
