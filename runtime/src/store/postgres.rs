//! The run store in PostgreSQL, for several agentrt hosts behind one load balancer: selected by
//! a `postgres://` (or `postgresql://`) URL in `AGENTRT_STORE` or the config's `store`.
//!
//! Same tables and invariants as the SQLite store (see the parent module). What differs:
//! - each run records its `owner`, the instance that executes it (`AGENTRT_INSTANCE`, default
//!   the host name), and [`RunStore::interrupt_unfinished`] closes this instance's unfinished
//!   runs and those of hosts that are gone (no session holds their instance lock, and nothing
//!   of theirs was written for [`GONE_AFTER`]) — a live host's runs are still going;
//! - a server holds a session advisory lock on its instance name, so a second server with the
//!   same name on the same database is refused (`STORE_001`) rather than interrupting the
//!   first one's runs;
//! - the schema is created under a transaction-scoped advisory lock, so hosts starting together
//!   do not race; its version lives in `agentrt_schema`;
//! - a dropped connection is reopened (and the instance lock retaken) on the next statement.
//!
//! Statements run through the synchronous `postgres` client under a mutex, from the blocking
//! threads that already call the store.

use std::sync::Mutex;

use postgres::{Client, Config, NoTls, Transaction};
use serde_json::Value;

use super::{
    RunRecord, RunState, RunStore, SCHEMA_VERSION, StoreError, StoredEvent, interrupted_done,
    interrupted_error, now_ms,
};
use crate::pipeline::report::ErrorOut;
use crate::stats::Counter;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agentrt_schema (version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    request TEXT NOT NULL,
    outcome TEXT,
    error_code TEXT,
    error_message TEXT,
    owner TEXT NOT NULL,
    submitted_by TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_creation ON runs (created_at_ms);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs (updated_at_ms);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (owner) WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS plugin_stats (
    owner TEXT NOT NULL,
    plugin TEXT NOT NULL,
    counter TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (owner, plugin)
);
";

/// Advisory-lock key of schema creation (any constant; "agentrt" in ASCII).
const SCHEMA_LOCK: i64 = 0x0061_6765_6e74_7274;

/// How long a host without an instance lock must have written nothing before another host
/// takes it for gone and closes its unfinished runs.
const GONE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// Tries (100 ms apart) at the instance lock before a second server is refused.
const LOCK_ATTEMPTS: usize = 30;

const COLUMNS: &str = "id, state, created_at_ms, updated_at_ms, request, outcome, error_code, \
     error_message, submitted_by";

/// What a store of schema 1 lacks (run under the schema lock, once, by the first host of this
/// build to open it). The index is created with it: `CREATE INDEX` on a column of schema 1
/// would fail before the column is there.
const UPGRADE_FROM_1: &str = "
ALTER TABLE runs ADD COLUMN IF NOT EXISTS submitted_by TEXT;
CREATE INDEX IF NOT EXISTS runs_by_submitter ON runs (submitted_by, created_at_ms);
";

/// The connection settings of `url`, with limits where it sets none: a server that does not
/// answer (a failover, a network cut leaving the connection half open) fails a store call
/// after seconds instead of holding it, and the lock it is called under, for hours. Connect:
/// 10 s; data unacknowledged, or keepalive probes unanswered after 30 s idle: 30 s.
fn connection_config(url: &str) -> Result<Config, postgres::Error> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
    if config.get_keepalives_idle() == std::time::Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(std::time::Duration::from_secs(30));
    }
    Ok(config)
}

/// A PostgreSQL run store.
pub struct PgStore {
    url: String,
    /// The URL without its password, for messages and logs.
    shown: String,
    instance: String,
    /// Whether this store holds the instance lock (a server) or only reads and writes (tools).
    exclusive: bool,
    client: Mutex<Option<Client>>,
    /// The backend process of the session this store opened last: its pid and start time
    /// (together they name one session; a pid alone may be reused). After a connection is lost
    /// on our side only (a half-open drop), that backend may live on, holding the instance
    /// lock and maybe an open transaction's row locks, until the server's TCP keepalive
    /// notices (hours by default); the reconnect ends it rather than wait on it, or take its
    /// lock for another host's.
    last_backend: Mutex<Option<(i32, String)>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Whether `location` names a PostgreSQL database rather than an SQLite file.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `url` with its sessions' `search_path` set to `schema` (libpq's `options` parameter): a
/// store kept in its own schema (tests give each case a fresh one).
pub fn with_search_path(url: &str, schema: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}options=-c%20search_path%3D{schema}")
}

/// `url` with any password replaced by `***`: the one in its user info, and a `password`
/// query parameter.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// This server's name among the hosts sharing a database: `AGENTRT_INSTANCE`, else the host
/// name (stable across restarts, so a restarted host closes the runs it left).
pub fn instance_name() -> String {
    std::env::var("AGENTRT_INSTANCE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "agentrt".to_string())
}

impl PgStore {
    /// Close, as failed (`RUN_002`) with a closing `done` event, the unfinished runs of hosts
    /// that are gone, and this host's own running ones when `own` (at start: left by its
    /// previous process; the queued ones it runs, see [`RunStore::queued_runs`]).
    fn close_unfinished(&self, own: bool) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // This instance's runs, and those of hosts that hold no instance lock: gone (a
            // container or pod replaced under a new host name never comes back to close its
            // own). Another live host's runs are still in progress. The lock tried here is
            // the transaction's, gone at its end, so a host starting meanwhile gets its own.
            let others: Vec<String> = tx
                .query(
                    "SELECT DISTINCT owner FROM runs WHERE state IN ('queued', 'running')
                     AND owner <> $1",
                    &[&self.instance],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut owners = Vec::new();
            let quiet_since = now_ms() - i64::try_from(GONE_AFTER.as_millis()).unwrap_or(i64::MAX);
            for owner in others {
                let unlocked: bool = tx
                    .query_one(
                        "SELECT pg_try_advisory_xact_lock(hashtext('agentrt instance ' || current_schema() || ' ' || $1))",
                        &[&owner],
                    )?
                    .get(0);
                // A free lock alone could be a live host whose session dropped a moment ago
                // (it takes the lock again at its next write): it must also have been quiet.
                let quiet: bool = unlocked
                    && tx
                        .query_one(
                            "SELECT GREATEST(
                               (SELECT COALESCE(MAX(updated_at_ms), 0) FROM runs WHERE owner = $1),
                               (SELECT COALESCE(MAX(e.at_ms), 0) FROM run_events e
                                JOIN runs r ON r.id = e.run_id
                                WHERE r.owner = $1 AND r.state IN ('queued', 'running'))
                             ) < $2",
                            &[&owner, &quiet_since],
                        )?
                        .get(0);
                if quiet {
                    tracing::warn!(host = %owner, "closing the unfinished runs of a host that is gone");
                    owners.push(owner);
                }
            }
            // A gone host's queued runs too: nobody else would start them.
            let own_running = if own { Some(self.instance.as_str()) } else { None };
            let runs: Vec<(String, String)> = tx
                .query(
                    "SELECT id, state FROM runs WHERE (state IN ('queued', 'running')
                     AND owner = ANY($1)) OR (state = 'running' AND owner = $2) FOR UPDATE",
                    &[&owners, &own_running],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let now = now_ms();
            for (id, state) in &runs {
                let error = interrupted_error(state);
                let done = interrupted_done(&error);
                tx.execute(
                    "INSERT INTO run_events (run_id, seq, at_ms, kind, data)
                     SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, 'done', $3 FROM run_events
                     WHERE run_id = $1",
                    &[id, &now, &done],
                )?;
                tx.execute(
                    "UPDATE runs SET state = 'failed', updated_at_ms = $2, error_code = $3,
                     error_message = $4 WHERE id = $1",
                    &[id, &now, &error.code, &error.message],
                )?;
            }
            tx.commit()?;
            Ok(runs.len())
        })
    }

    /// Connect, create the schema when missing, and (for a server, `exclusive`) take the
    /// instance lock.
    pub fn connect(url: &str, instance: &str, exclusive: bool) -> Result<Self, StoreError> {
        let store = Self {
            url: url.to_string(),
            shown: redact(url),
            instance: instance.to_string(),
            exclusive,
            client: Mutex::new(None),
            last_backend: Mutex::new(None),
        };
        let client = store.open_client()?;
        *store.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
        Ok(store)
    }

    fn fail(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.shown.clone(),
            message: message.to_string(),
        }
    }

    /// A new session: connected, schema checked, instance lock taken.
    fn open_client(&self) -> Result<Client, StoreError> {
        let mut client = connection_config(&self.url)
            .map_err(|e| self.fail(e))?
            .connect(NoTls)
            .map_err(|e| self.fail(e))?;
        let lingering = self
            .last_backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.exclusive
            && let Some((pid, started)) = lingering
        {
            // Before the schema step, which would wait on the row locks of a transaction the
            // lost session left open.
            self.end_lingering_session(&mut client, pid, &started);
        }
        let mut tx = client.transaction().map_err(|e| self.fail(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(|e| self.fail(e))?;
        tx.batch_execute(SCHEMA).map_err(|e| self.fail(e))?;
        let version: Option<i64> = tx
            .query_opt("SELECT MAX(version) FROM agentrt_schema", &[])
            .map_err(|e| self.fail(e))?
            .and_then(|r| r.get(0));
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(self.fail(format!(
                    "written by a newer agentrt (schema {v}, this build reads up to {SCHEMA_VERSION})"
                )));
            }
            // Only a server upgrades: a tool (`agentrt doctor`) must not change the schema
            // under hosts of the older build, which would find it refused at their next
            // connection. Every host of the older build is stopped first (docs/OPERATIONS.md).
            Some(v) if v < SCHEMA_VERSION && !self.exclusive => {
                return Err(self.fail(format!(
                    "written by an older agentrt (schema {v}; this build writes \
                     {SCHEMA_VERSION}): the first server of this build upgrades it, once every \
                     host of the older build has stopped"
                )));
            }
            Some(SCHEMA_VERSION) => {}
            // An older build's store (a server opening it), or a new one.
            from => {
                // The column's lock waits for every transaction on `runs`: a host of the older
                // build left running would hold it. Refused after a while, not hung.
                tx.batch_execute("SET LOCAL lock_timeout = '10s'")
                    .map_err(|e| self.fail(e))?;
                tx.batch_execute(UPGRADE_FROM_1).map_err(|e| {
                    self.fail(format!(
                        "cannot bring the schema from {} to {SCHEMA_VERSION} (are hosts of \
                         the older build still running?): {e}",
                        from.unwrap_or(0)
                    ))
                })?;
                tx.execute(
                    "INSERT INTO agentrt_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .map_err(|e| self.fail(e))?;
            }
        }
        tx.commit().map_err(|e| self.fail(e))?;
        if self.exclusive {
            // A killed predecessor's session holds the lock until its backend notices the
            // closed socket (moments): wait a little before calling the instance taken.
            // Advisory locks are database-wide; the key names the schema too, so stores kept
            // in different schemas of one database do not refuse each other.
            let mut got = false;
            for attempt in 0..LOCK_ATTEMPTS {
                if attempt > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                got = client
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtext('agentrt instance ' || current_schema() || ' ' || $1))",
                        &[&self.instance],
                    )
                    .map_err(|e| self.fail(e))?
                    .get(0);
                if got {
                    break;
                }
            }
            if !got {
                return Err(self.fail(format!(
                    "another agentrt server with instance name {:?} uses this database (set AGENTRT_INSTANCE to tell hosts apart)",
                    self.instance
                )));
            }
        }
        let row = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| self.fail(e))?;
        *self.last_backend.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((row.get(0), row.get(1)));
        Ok(client)
    }

    /// End this store's earlier session (backend `pid`, started at `started`) if it still holds
    /// the instance lock, which it can only do with its client gone. Another host's session is
    /// left alone. Failing to end it (no right to signal it) is logged: the lock retries that
    /// follow then say the instance is taken.
    fn end_lingering_session(&self, client: &mut Client, pid: i32, started: &str) {
        // A lock on one bigint key shows in pg_locks as its two halves, objsubid 1.
        let ended = client.query_opt(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid AND a.backend_start::text = $3
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = $2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((l.classid::bigint << 32) | l.objid::bigint)
                   = hashtext('agentrt instance ' || current_schema() || ' ' || $1)::bigint",
            &[&self.instance, &pid, &started],
        );
        match ended.map(|row| row.map(|r| r.get::<_, bool>(0))) {
            Ok(Some(true)) => tracing::warn!(
                store = %self.shown,
                pid,
                "ended this server's earlier database session, which outlived its connection and still held the instance lock"
            ),
            Ok(Some(false)) => tracing::warn!(
                store = %self.shown,
                pid,
                "could not end this server's earlier database session, which still holds the instance lock"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                store = %self.shown,
                pid,
                error = %e,
                "could not look for this server's earlier database session"
            ),
        }
    }

    /// Run `f` on the session, reopening it first when it was lost.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(self.open_client()?);
        }
        let client = slot.as_mut().expect("a session was just opened");
        f(client).map_err(|e| self.fail(e))
    }

    fn record(row: &postgres::Row) -> RunRecord {
        let request: String = row.get(4);
        let outcome: Option<String> = row.get(5);
        let code: Option<String> = row.get(6);
        let message: Option<String> = row.get(7);
        RunRecord {
            id: row.get(0),
            state: RunState::parse(row.get::<_, &str>(1)),
            created_at_ms: row.get(2),
            updated_at_ms: row.get(3),
            request: serde_json::from_str(&request).unwrap_or(Value::Null),
            submitted_by: row.get(8),
            outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
            error: code.map(|code| ErrorOut {
                code,
                message: message.unwrap_or_default(),
            }),
        }
    }

    fn insert_event(
        tx: &mut Transaction<'_>,
        id: &str,
        event: &StoredEvent,
    ) -> Result<u64, postgres::Error> {
        tx.execute(
            // A retry of a write whose commit went through but whose answer was lost finds
            // its row there: the same event, so nothing to do.
            "INSERT INTO run_events (run_id, seq, at_ms, kind, data) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (run_id, seq) DO NOTHING",
            &[&id, &event.seq, &event.at_ms, &event.kind, &event.data],
        )
    }
}

impl RunStore for PgStore {
    fn location(&self) -> String {
        self.shown.clone()
    }

    fn insert_run(
        &self,
        id: &str,
        request: &Value,
        submitted_by: Option<&str>,
    ) -> Result<RunRecord, StoreError> {
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, state, created_at_ms, updated_at_ms, request, owner,
                 submitted_by) VALUES ($1, 'queued', $2, $2, $3, $4, $5)",
                &[
                    &id,
                    &now,
                    &request.to_string(),
                    &self.instance,
                    &submitted_by,
                ],
            )
        })?;
        Ok(RunRecord {
            id: id.to_string(),
            state: RunState::Queued,
            created_at_ms: now,
            updated_at_ms: now,
            request: request.clone(),
            submitted_by: submitted_by.map(str::to_string),
            outcome: None,
            error: None,
        })
    }

    fn set_running(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'running', updated_at_ms = $2
                 WHERE id = $1 AND state IN ('queued', 'running')",
                &[&id, &now_ms()],
            )
        })
        .map(|updated| updated > 0)
    }

    fn append_event(&self, id: &str, event: &StoredEvent) -> Result<(), StoreError> {
        let same = self.with(|c| {
            let mut tx = c.transaction()?;
            let added = Self::insert_event(&mut tx, id, event)?;
            // The number taken: the same event again (a retried write whose first commit
            // went through) is fine; another event under it is refused.
            let same = added == 1
                || tx
                    .query_one(
                        "SELECT kind = $3 AND data = $4 FROM run_events WHERE run_id = $1 AND seq = $2",
                        &[&id, &event.seq, &event.kind, &event.data],
                    )?
                    .get::<_, bool>(0);
            tx.commit()?;
            Ok(same)
        })?;
        if same {
            Ok(())
        } else {
            Err(StoreError {
                path: self.shown.clone(),
                message: format!("run {id} already has another event {}", event.seq),
            })
        }
    }

    fn finish_run(
        &self,
        id: &str,
        state: RunState,
        outcome: Option<&Value>,
        error: Option<&ErrorOut>,
        done: &StoredEvent,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // Only a run still open: one another host closed as gone stays closed (its `done`
            // is stored), rather than being overwritten under a second `done`.
            let open = tx.execute(
                "UPDATE runs SET state = $2, updated_at_ms = $3, outcome = $4, error_code = $5,
                 error_message = $6 WHERE id = $1 AND state IN ('queued', 'running')",
                &[
                    &id,
                    &state.as_str(),
                    &now_ms(),
                    &outcome.map(Value::to_string),
                    &error.map(|e| e.code.as_str()),
                    &error.map(|e| e.message.as_str()),
                ],
            )?;
            if open == 0 {
                tracing::warn!(run = %id, "the run was closed by another host meanwhile; its end is not stored");
                return tx.commit();
            }
            Self::insert_event(&mut tx, id, done)?;
            tx.commit()
        })
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(&format!("SELECT {COLUMNS} FROM runs WHERE id = $1"), &[&id])
                .map(|row| row.as_ref().map(Self::record))
        })
    }

    fn list_runs(
        &self,
        limit: usize,
        before: Option<(i64, &str)>,
        submitted_by: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, ""));
        // Two statements rather than `$4 IS NULL OR …`, so that each can use its index.
        let whose = if submitted_by.is_some() {
            "submitted_by = $4 AND"
        } else {
            "$4::TEXT IS NULL AND"
        };
        self.with(|c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE {whose} (created_at_ms, id) < ($1, $2)
                     ORDER BY created_at_ms DESC, id DESC LIMIT $3"
                ),
                &[&before_ms, &before_id, &(limit as i64), &submitted_by],
            )
            .map(|rows| rows.iter().map(Self::record).collect())
        })
    }

    fn queued_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with(|c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE state = 'queued' AND owner = $1
                     ORDER BY created_at_ms, id"
                ),
                &[&self.instance],
            )
            .map(|rows| rows.iter().map(Self::record).collect())
        })
    }

    fn count_by_state(&self) -> Result<Vec<(RunState, usize)>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT state, COUNT(*) FROM runs GROUP BY state ORDER BY state",
                &[],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            RunState::parse(r.get::<_, &str>(0)),
                            r.get::<_, i64>(1) as usize,
                        )
                    })
                    .collect()
            })
        })
    }

    fn events_after(&self, id: &str, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT seq, at_ms, kind, data FROM run_events WHERE run_id = $1 AND seq > $2
                 ORDER BY seq",
                &[&id, &after],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| StoredEvent {
                        seq: r.get(0),
                        at_ms: r.get(1),
                        kind: r.get(2),
                        data: r.get(3),
                    })
                    .collect()
            })
        })
    }

    fn prune_finished(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Their events go with them (ON DELETE CASCADE).
        self.with(|c| {
            c.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs
                 WHERE state IN ('completed', 'failed', 'cancelled') AND updated_at_ms < $1
                 ORDER BY updated_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&before_ms, &limit],
            )
        })
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn interrupt_unfinished(&self) -> Result<usize, StoreError> {
        self.close_unfinished(true)
    }

    fn close_gone_hosts(&self) -> Result<usize, StoreError> {
        self.close_unfinished(false)
    }

    fn check_integrity(&self) -> Result<Result<(), Vec<String>>, StoreError> {
        self.with(|c| {
            let rows = c.query(super::INVARIANTS_QUERY, &[])?;
            let problems: Vec<String> = rows
                .iter()
                .filter_map(|r| {
                    super::invariant_problem(
                        r.get(0),
                        RunState::parse(r.get::<_, &str>(1)),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                    )
                })
                .flatten()
                .collect();
            Ok(if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            })
        })
    }

    fn save_plugin_stats(&self, plugin: &str, counter: &Counter) -> Result<(), StoreError> {
        let json = serde_json::to_string(counter).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "INSERT INTO plugin_stats (owner, plugin, counter, updated_at_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (owner, plugin) DO UPDATE SET counter = $3, updated_at_ms = $4",
                &[&self.instance, &plugin, &json, &now_ms()],
            )
        })
        .map(drop)
    }

    fn load_plugin_stats(&self) -> Result<Vec<(String, Counter)>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT plugin, counter FROM plugin_stats WHERE owner = $1 ORDER BY plugin",
                &[&self.instance],
            )
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .map(super::parse_counters)
    }

    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.with(|c| c.batch_execute(sql))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_limits_unless_the_url_sets_its_own() {
        use std::time::Duration;
        let c = connection_config("postgres://u@db.example/agentrt").expect("url");
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        let own = connection_config(
            "postgres://u@db.example/agentrt?connect_timeout=3&tcp_user_timeout=5&keepalives_idle=60",
        )
        .expect("url");
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(own.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(60));
    }

    /// Wait until `client` holds this instance's lock (another session may take moments to
    /// let it go).
    fn take_instance_lock(client: &mut Client, instance: &str) {
        for _ in 0..100 {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('agentrt instance ' || current_schema() || ' ' || $1))",
                    &[&instance],
                )
                .expect("try the lock")
                .get(0);
            if got {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the instance lock was never free");
    }

    /// The session's pid and start, as the store records its own.
    fn session(client: &mut Client) -> (i32, String) {
        let row = client
            .query_one(
                "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .expect("session");
        (row.get(0), row.get(1))
    }

    #[test]
    fn a_reconnect_ends_its_own_lingering_session_but_not_another_hosts() {
        let Some(harness) = crate::store::conformance::postgres() else {
            return;
        };
        let url = harness.postgres_url.clone().expect("a PostgreSQL harness");
        let instance = "lingering-test";
        let store = PgStore::connect(&url, instance, true).expect("connect");
        // The store's session is lost on its side while its backend lives on holding the lock
        // (a half-open drop): a second session holding the lock plays that backend.
        *store.client.lock().expect("client") = None;
        let mut lingering = Client::connect(&url, NoTls).expect("connect");
        take_instance_lock(&mut lingering, instance);
        // Lost in the middle of a transaction: its row locks would hold the schema step.
        lingering
            .batch_execute("BEGIN; UPDATE runs SET updated_at_ms = updated_at_ms")
            .expect("an open transaction");
        *store.last_backend.lock().expect("pid") = Some(session(&mut lingering));
        assert!(store.run("none").expect("reconnected").is_none());
        assert!(
            lingering.simple_query("SELECT 1").is_err(),
            "the lingering session was ended"
        );
        // A session of another host holding the lock is not this store's to end.
        *store.client.lock().expect("client") = None;
        let mut other = Client::connect(&url, NoTls).expect("connect");
        take_instance_lock(&mut other, instance);
        let refused = store.run("none").expect_err("the instance is taken");
        assert!(
            refused.message.contains("another agentrt server"),
            "{refused}"
        );
        other
            .simple_query("SELECT 1")
            .expect("the other host's session lives");
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://agentrt:secret@db:5432/runs?sslmode=disable"),
            "postgres://agentrt:***@db:5432/runs?sslmode=disable"
        );
        assert_eq!(redact("postgres://db/runs"), "postgres://db/runs");
        assert_eq!(
            redact("postgres://u@db/x?sslmode=require&password=secret&x=1"),
            "postgres://u@db/x?sslmode=require&password=***&x=1"
        );
        assert_eq!(redact("postgresql://u@db/x"), "postgresql://u@db/x");
        assert!(is_postgres_url("postgresql://db/x") && !is_postgres_url("/var/agentrt.db"));
    }
}
