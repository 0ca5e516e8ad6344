#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store tests, sourced by scripts/test.sh:
#   start_test_postgres   installs Debian's postgresql when missing (as root), creates a cluster
#                         in a fresh folder under /tmp (the postgres user cannot reach root's
#                         home), starts it on 127.0.0.1:$AGENTRT_PG_PORT
#                         (55432), and exports AGENTRT_TEST_POSTGRES_URL
#   stop_test_postgres    stops it (test.sh runs this on exit)
# The cluster trusts local connections and lives only for the test run.

AGENTRT_PG_PORT="${AGENTRT_PG_PORT:-55432}"
AGENTRT_PG_DIR=""

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [[ -n "$dir" && -x "$dir/initdb" ]] && printf '%s\n' "$dir"
}

# Run a PostgreSQL program as the cluster's owner: the postgres user when we are root
# (the server refuses to run as root), else ourselves.
as_pg_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_test_postgres() {
    local bin
    bin="$(pg_bin || true)"
    if [[ -z "$bin" ]]; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            echo "installing postgresql (Debian) for the store tests"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            bin="$(pg_bin)"
        else
            echo "PostgreSQL is not installed (apt-get install postgresql): its store tests will skip"
            return 0
        fi
    fi
    stop_test_postgres
    AGENTRT_PG_DIR="$(mktemp -d /tmp/agentrt-pg.XXXXXX)"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$AGENTRT_PG_DIR"
    fi
    as_pg_owner "$bin/initdb" -D "$AGENTRT_PG_DIR/data" -U postgres --auth=trust \
        --encoding=UTF8 >"$AGENTRT_PG_DIR/initdb.log" 2>&1 || {
        cat "$AGENTRT_PG_DIR/initdb.log"
        return 1
    }
    as_pg_owner "$bin/pg_ctl" -D "$AGENTRT_PG_DIR/data" -l "$AGENTRT_PG_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $AGENTRT_PG_PORT -k $AGENTRT_PG_DIR -c fsync=off" \
        start >/dev/null || {
        cat "$AGENTRT_PG_DIR/server.log"
        return 1
    }
    export AGENTRT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$AGENTRT_PG_PORT/postgres"
    export AGENTRT_REQUIRE_POSTGRES=1
    echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') for the store tests at $AGENTRT_TEST_POSTGRES_URL"
}

stop_test_postgres() {
    local bin
    bin="$(pg_bin || true)"
    [[ -n "$AGENTRT_PG_DIR" ]] || return 0
    if [[ -n "$bin" && -f "$AGENTRT_PG_DIR/data/postmaster.pid" ]]; then
        as_pg_owner "$bin/pg_ctl" -D "$AGENTRT_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$AGENTRT_PG_DIR"
    AGENTRT_PG_DIR=""
}
