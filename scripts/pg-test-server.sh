#!/usr/bin/env bash
# A private PostgreSQL for the tests: a fresh cluster in a temporary directory, listening
# on a Unix socket in that directory only (no TCP port, nothing shared), trust auth.
#
#   eval "$(scripts/pg-test-server.sh start)"   # exports RUYI_TEST_PG and RUYI_TEST_PG_DIR
#   scripts/pg-test-server.sh stop "$RUYI_TEST_PG_DIR"
#   scripts/pg-test-server.sh down DIR | up DIR   # crash it (immediate stop), start it again
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
  up)
    dir=${2:?usage: $0 up DIR}
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
  *) echo "usage: $0 start | stop DIR | down DIR | up DIR" >&2; exit 2 ;;
esac
