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
# Debian's wrapper starts the broker through su, whose PAM limits give it 1,024 open files: its file
# handle budget (927) then runs out once a few hundred quorum queues live (several test runs at once,
# or the runs of a killed suite whose vhosts stayed), and it hangs in add_vhost. As root, start it as
# the rabbitmq user with the soft limit raised to the hard one.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  (cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c \
    'ulimit -n "$(ulimit -Hn)" 2>/dev/null; /usr/lib/rabbitmq/bin/rabbitmq-server -detached') || true
else
  rabbitmq-server -detached || true
fi
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
