#!/usr/bin/env bash
# A private PostgreSQL for the tests: a fresh cluster in a temporary directory, listening
# on a Unix socket in that directory only (no TCP port, nothing shared), trust auth.
#
#   eval "$(scripts/pg-test-server.sh start)"   # exports RUYI_TEST_PG and RUYI_TEST_PG_DIR
#   scripts/pg-test-server.sh stop "$RUYI_TEST_PG_DIR"
#   scripts/pg-test-server.sh down DIR | up DIR   # crash it (immediate stop), start it again
#   scripts/pg-test-server.sh restart DIR         # fast shutdown, then start
#   scripts/pg-test-server.sh tls DIR PORT CERT KEY  # TLS-only TCP on 127.0.0.1:PORT
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system
# user that Debian's package creates, and its commands run through `runuser`.
set -euo pipefail
bindir=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)" 2>/dev/null || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  bindir=$(dirname "$(command -v initdb || echo /nonexistent/initdb)")
fi
[ -x "$bindir/initdb" ] || { echo "no PostgreSQL (initdb) on this machine" >&2; exit 1; }
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case ${1:-} in
  start)
    dir=$(mktemp -d /tmp/ruyi-pg.XXXXXX)
    chmod 0755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_owner "$bindir/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    # Sized for the test suite: many short-lived servers, each with a few connections.
    echo "listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 400
shared_buffers = 64MB" | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "export RUYI_TEST_PG='postgresql://postgres@localhost/postgres?host=$dir'"
    echo "export RUYI_TEST_PG_DIR='$dir'"
    ;;
  stop)
    dir=${2:?usage: $0 stop DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  down)
    dir=${2:?usage: $0 down DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  restart)
    # The usual way: a fast shutdown (clients told FATAL 57P01), then a start.
    dir=${2:?usage: $0 restart DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart \
      >/dev/null
    ;;
  up)
    dir=${2:?usage: $0 up DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
  tls)
    # Serve TCP on 127.0.0.1:PORT with TLS only (plain TCP is refused), with the given
    # certificate and key; the Unix socket keeps trust auth (its name follows the port).
    dir=${2:?usage: $0 tls DIR PORT CERT KEY}; port=${3:?}; cert=${4:?}; key=${5:?}
    for f in "$cert:server.crt" "$key:server.key"; do
      as_owner tee "$dir/data/${f#*:}" <"${f%%:*}" >/dev/null
      as_owner chmod 0600 "$dir/data/${f#*:}"
    done
    echo "listen_addresses = '127.0.0.1'
port = $port
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'" | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    { echo "hostnossl all all 127.0.0.1/32 reject"
      echo "hostssl all all 127.0.0.1/32 trust"
      as_owner cat "$dir/data/pg_hba.conf"; } >"$dir/hba.new"
    as_owner tee "$dir/data/pg_hba.conf" <"$dir/hba.new" >/dev/null
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart \
      >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    ;;
  *) echo "usage: $0 start | stop DIR | down DIR | up DIR | restart DIR | tls DIR PORT CERT KEY" >&2; exit 2 ;;
esac
