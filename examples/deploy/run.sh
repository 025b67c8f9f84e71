#!/usr/bin/env bash
# A real deployment on this machine: one server and three client processes over TLS with tokens.
# The same three commands run across machines (docs/deploy.md, "Run across machines").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../../.venv/bin"  # the project's environment (make setup), else whatever is on PATH
if [ -x "$venv/fedstack" ]; then default_fedstack="$venv/fedstack" default_python="$venv/python"
else default_fedstack=fedstack default_python=python3; fi
FEDSTACK=${FEDSTACK:-$default_fedstack}
PYTHON=${PYTHON:-$default_python}
PORT=${PORT:-9092}
work=${1:-$(mktemp -d)}

$FEDSTACK certs --out "$work/certs" --clients 3
"$PYTHON" "$here/make_data.py" "$work/data" 3
$FEDSTACK server --config "$here/run.toml" --listen "127.0.0.1:$PORT" --clients "$work/certs/clients.toml" \
    --tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server.key" --out "$work/run" --quiet &
server=$!
for i in 1 2 3; do
    $FEDSTACK client --server "localhost:$PORT" --ca "$work/certs/ca.pem" \
        --token-file "$work/certs/client-$i.token" --data "$work/data/client-$i.npz" &
done
wait "$server"
wait
echo "results in $work/run"
