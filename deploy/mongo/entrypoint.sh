#!/bin/sh
# MongoDB container entrypoint: check the passwords the healthcheck's users step (users.js) needs, make
# the replica set's key file on the first start (kept in the data volume), then exec the image's own
# entrypoint ("$@"). mongod runs with --auth and --keyFile: with a key file a replica set enforces
# access control, and its members authenticate to each other with it.
#
#   MONGO_KEYFILE             the key file (default /data/db/wxlogin.keyfile), the path --keyFile names
#   MONGO_ROLES               the roles table (default /etc/wxlogin/roles.json): one password per service
#   MONGO_ROOT_PASSWORD, MONGO_<SERVICE>_PASSWORD   16+ characters of A-Z a-z 0-9 . _ ~ -
set -eu

keyfile="${MONGO_KEYFILE:-/data/db/wxlogin.keyfile}"
roles="${MONGO_ROLES:-/etc/wxlogin/roles.json}"

fail() {
    echo "wxlogin mongo entrypoint: $*" >&2
    exit 64
}

check_password() {
    eval "value=\${$1:-}"
    [ -n "$value" ] || fail "set $1 (see .env.example)"
    case "$value" in
        # URL-safe characters only: the password goes into WXLOGIN_MONGO_URL unescaped.
        *[!A-Za-z0-9._~-]*) fail "$1 may only contain A-Z a-z 0-9 . _ ~ -" ;;
    esac
    [ "${#value}" -ge 16 ] || fail "$1 must have at least 16 characters"
}

[ -r "$roles" ] || fail "cannot read $roles"
check_password MONGO_ROOT_PASSWORD
# The services are the top-level keys of roles.json, one per line at two spaces' indent.
services=$(sed -n 's/^  "\([a-z][a-z0-9_]*\)": {.*$/\1/p' "$roles")
[ -n "$services" ] || fail "no service found in $roles"
for service in $services; do
    check_password "MONGO_$(printf '%s' "$service" | tr 'a-z' 'A-Z')_PASSWORD"
done

if [ ! -s "$keyfile" ]; then
    umask 077
    # 756 random bytes, base64 (1008 characters; MongoDB takes 6 to 1024 of the base64 alphabet).
    head -c 756 /dev/urandom | base64 | tr -d '\n' > "$keyfile.new"
    mv "$keyfile.new" "$keyfile"
    echo "wxlogin mongo entrypoint: created the replica set key file $keyfile" >&2
fi
chmod 400 "$keyfile"
# mongod runs as the image's mongodb user, which must own its key file.
if [ "$(id -u)" = 0 ] && id mongodb > /dev/null 2>&1; then
    chown mongodb:mongodb "$keyfile"
fi
exec "$@"
