#!/bin/sh
# Starts mongod as replica set rs0, initiates it once (a no-op on a volume that already holds an
# initiated set), then waits on mongod. Extra arguments go to mongod. No snapshot history is
# kept: Harmonia reads none, and keeping it slows large runs (docs/scaling.md).
set -eu
mongod --replSet rs0 --bind_ip_all --port 27017 --dbpath /data/db \
  --setParameter minSnapshotHistoryWindowInSeconds=0 "$@" &
pid=$!
harmonia-dev mongo-init --port 27017 --member "${HARMONIA_MONGO_MEMBER}" || { kill "$pid"; exit 1; }
wait "$pid"
