#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672; start the local one if it does not.
set -euo pipefail
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if port_open; then
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null; then
  echo "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed" >&2
  exit 1
fi
echo "starting RabbitMQ (rabbitmq-server -detached)…"
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if port_open; then
    rabbitmqctl await_startup >/dev/null 2>&1 || true
    echo "RabbitMQ is up"
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 120 s" >&2
exit 1
