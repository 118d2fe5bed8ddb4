#!/usr/bin/env bash
# Start a Dask scheduler and N single-threaded workers on this machine's loopback interface,
# for `popseg run CONFIG --scheduler tcp://127.0.0.1:8786`. Nothing listens on a public address.
# Stop them with Ctrl-C (the script waits on its children and ends them on exit).
set -euo pipefail
N=${1:-2}
PORT=${PORT:-8786}
DASHBOARD=${DASHBOARD:-8787}
trap 'kill 0' EXIT INT TERM
dask scheduler --host 127.0.0.1 --port "$PORT" --dashboard-address "127.0.0.1:$DASHBOARD" &
sleep 2
for i in $(seq 1 "$N"); do
  dask worker "tcp://127.0.0.1:$PORT" --host 127.0.0.1 --nthreads 1 --nworkers 1 --name "worker-$i" &
done
echo "scheduler tcp://127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD/status, $N worker(s)"
wait
