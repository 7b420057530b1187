#!/bin/sh
# RabbitMQ container entrypoint: render definitions.json (one broker user per service with
# least-privilege permissions, the events exchanges) with the passwords from the environment, then
# exec the image's own entrypoint ("$@"). Passwords never live in the repository or the image.
#
#   DEFINITIONS_TEMPLATE  the template (default /etc/wxlogin/definitions.json)
#   DEFINITIONS_OUT       where RabbitMQ reads it, see rabbitmq.conf (default /tmp/wxlogin-definitions.json)
#   RABBITMQ_{ADMIN,TOKEN,QRCODE,SESSION,GATEWAY,WEBHOOK}_PASSWORD   16+ characters of A-Z a-z 0-9 . _ ~ -
#   WXLOGIN_BUS_PREFIX    the services' exchange/queue name prefix (may be empty)
set -eu

template="${DEFINITIONS_TEMPLATE:-/etc/wxlogin/definitions.json}"
out="${DEFINITIONS_OUT:-/tmp/wxlogin-definitions.json}"
prefix="${WXLOGIN_BUS_PREFIX:-}"

fail() {
    echo "wxlogin rabbitmq entrypoint: $*" >&2
    exit 64
}

case "$prefix" in
    *[!A-Za-z0-9._-]*) fail "WXLOGIN_BUS_PREFIX may only contain A-Z a-z 0-9 . _ -" ;;
esac
# Permission regexes match a literal dot as [.]: no backslashes to survive sed and JSON.
prefix_regex=$(printf '%s' "$prefix" | sed 's/[.]/[.]/g')

script=""
for name in ADMIN TOKEN QRCODE SESSION GATEWAY WEBHOOK; do
    eval "value=\${RABBITMQ_${name}_PASSWORD:-}"
    [ -n "$value" ] || fail "set RABBITMQ_${name}_PASSWORD (see .env.example)"
    case "$value" in
        # URL-safe characters only: the password goes into WXLOGIN_AMQP_URL unescaped.
        *[!A-Za-z0-9._~-]*) fail "RABBITMQ_${name}_PASSWORD may only contain A-Z a-z 0-9 . _ ~ -" ;;
    esac
    [ "${#value}" -ge 16 ] || fail "RABBITMQ_${name}_PASSWORD must have at least 16 characters"
    script="${script}s|\${RABBITMQ_${name}_PASSWORD}|${value}|g;"
done
script="${script}s|\${BUS_PREFIX_REGEX}|${prefix_regex}|g;s|\${WXLOGIN_BUS_PREFIX}|${prefix}|g"

umask 077
sed "$script" "$template" > "$out"
if grep -q '[$]{' "$out"; then
    fail "a placeholder was left in $out"
fi
# The image's entrypoint drops to the rabbitmq user, which must be able to read the file.
if [ "$(id -u)" = 0 ] && id rabbitmq > /dev/null 2>&1; then
    chown rabbitmq "$out"
fi
exec "$@"
