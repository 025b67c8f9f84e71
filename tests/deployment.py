"""A real deployment on loopback for tests: a TLS server process and client processes of `fedstack`."""

import subprocess
import sys


def start_server(tmp_path, creds, overrides, *extra, stderr=subprocess.PIPE, listen="127.0.0.1:0", cwd=None):
    """`fedstack server` with TLS, the clients of `creds`, writing to tmp_path/run, with `extra` options;
    (process, port)."""
    sets = [a for o in overrides for a in ("--set", o)]
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *sets, "--clients",
                               str(creds / "clients.toml"), "--listen", listen, "--out", str(tmp_path / "run"),
                               "--quiet", "--tls-cert", str(creds / "server.pem"), "--tls-key",
                               str(creds / "server.key"), *extra], stdout=subprocess.PIPE, stderr=stderr, text=True,
                              cwd=cwd)
    line = server.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + (server.stderr.read() if server.stderr else "")
    return server, int(line.rsplit(":", 1)[1])


def start_client(port, creds, i, *options, cwd=None):
    """`fedstack client` number i (its token from `creds`, TLS with their CA) with extra `options`."""
    return subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                             "--token-file", str(creds / f"client-{i}.token"), "--ca", str(creds / "ca.pem"),
                             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def run_to_end(server, clients, timeout=240):
    """Wait for a deployed run: the server exits 0, then every client does; every process is killed after."""
    try:
        _, err = server.communicate(timeout=timeout)
        assert server.returncode == 0, err
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
