#!/usr/bin/env bash
# Start the local Postgres and Redis the service and its tests use, when they are down.
set -euo pipefail
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
# The Kafka-mode tests start their own ClickHouse server (tests/clickhouse_server.py) from
# Debian's package; install it when missing (the package's own service is not started).
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ]; then
    echo "installing clickhouse-server"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && \
             $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clickhouse-server >/dev/null; } \
        || echo "could not install clickhouse-server: the Kafka-mode historical export tests will fail" >&2
fi
