//! What the service keeps: clusters' submitted specs, runs, their append-only event
//! log, token hashes, idempotency keys and the audit log. Behind [`Store`]:
//! [`SqliteStore`] is the embedded default (one process); [`super::pgstore::PgStore`]
//! lets several processes share one PostgreSQL database.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::run::{Run, RunKind, RunState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the PostgreSQL store: {0}")]
    Postgres(String),
    #[error("the PostgreSQL store: {0}")]
    Unavailable(String),
    #[error("the database holds a value this pgform cannot read: {0}")]
    Corrupt(String),
}

impl From<postgres::Error> for StoreError {
    /// The server's own message (`db error` alone says nothing), or the chain of causes.
    fn from(e: postgres::Error) -> StoreError {
        if let Some(db) = e.as_db_error() {
            return StoreError::Postgres(db.message().to_string());
        }
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            cause = c.source();
        }
        StoreError::Postgres(message)
    }
}

/// A cluster's submitted spec: the document as sent (no inline secret), and its format.
#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub name: String,
    pub spec_text: String,
    /// `toml` or `json`: the extension the document is loaded with.
    pub format: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub hash: [u8; 32],
    pub role: String,
    pub cluster: Option<String>,
    pub created_at: String,
    pub revoked: bool,
}

/// Where a POST with an `Idempotency-Key` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// First time: the caller runs the request, then records the answer.
    New,
    InFlight,
    /// Answered before with this status and body.
    Done {
        status: u16,
        body: String,
    },
    /// The key was used with another body.
    Mismatch,
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub at: String,
    pub token: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A page of runs, oldest first from the cursor (the runs' sequence numbers).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub cluster: Option<String>,
    pub state: Option<RunState>,
    pub after: Option<i64>,
    pub limit: usize,
}

/// Held while a run executes (or while recovery fixes it): proof to other processes
/// that its executor is alive. Dropping it releases it. The SQLite store, used by one
/// process, needs none.
pub struct Lease(#[allow(dead_code)] Option<Box<dyn std::any::Any + Send>>);

impl Lease {
    pub fn none() -> Lease {
        Lease(None)
    }
    pub fn new(held: impl std::any::Any + Send) -> Lease {
        Lease(Some(Box::new(held)))
    }
}

pub trait Store: Send + Sync {
    /// Where a cluster's state and its lock are kept when the store keeps them; `None`:
    /// in the service's folder, as files.
    fn states(&self, _cluster: &str) -> Option<std::sync::Arc<dyn crate::state::Backend>> {
        None
    }

    fn put_cluster(&self, c: &ClusterRow) -> Result<(), StoreError>;
    fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, StoreError>;
    fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError>;

    /// Inserts the run and sets its sequence number.
    fn create_run(&self, run: &mut Run) -> Result<(), StoreError>;
    fn run(&self, id: &str) -> Result<Option<Run>, StoreError>;
    fn update_run(&self, run: &Run) -> Result<(), StoreError>;
    /// The worker takes the oldest queued run whose cluster has no run executing (in
    /// any process sharing the store) and is not in `skip`: marks it `planning` (or
    /// `applying` when it was planned and confirmed) with the start time (once), and
    /// returns it with its lease, held while it executes. `None` when nothing is ready.
    fn claim_next(&self, skip: &[String], now: &str) -> Result<Option<(Run, Lease)>, StoreError>;
    /// The lease of a run marked `planning` or `applying` whose executing process is
    /// gone, held while recovery fixes the run; `None` when that process is alive.
    fn take_orphan(&self, id: &str) -> Result<Option<Lease>, StoreError>;
    /// Asks a live run to stop: a queued or planned one is canceled at once; a planning
    /// or applying one is flagged for the worker. `false` when the run is not live.
    fn request_cancel(&self, id: &str, now: &str) -> Result<bool, StoreError>;
    /// Sets how many steps of the run are done (from the event sink, while it applies).
    fn set_progress(&self, id: &str, done: u64) -> Result<(), StoreError>;
    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError>;
    /// The cluster's newest run in one of `states`.
    fn last_run_in(&self, cluster: &str, states: &[RunState]) -> Result<Option<Run>, StoreError>;

    /// Appends an event to the run's log and returns its number (1, 2, ...).
    fn append_event(&self, run: &str, json: &str) -> Result<i64, StoreError>;
    fn events_after(&self, run: &str, after: i64) -> Result<Vec<(i64, String)>, StoreError>;

    fn add_token(&self, t: &TokenRow) -> Result<(), StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// `false` when no such live token.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;

    fn idempotency_begin(
        &self,
        key: &str,
        scope: &str,
        body_hash: &str,
    ) -> Result<Idempotency, StoreError>;
    fn idempotency_finish(
        &self,
        key: &str,
        scope: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;
    /// Forgets an in-flight key whose request did not complete (so it may be sent again).
    fn idempotency_abort(&self, key: &str, scope: &str) -> Result<(), StoreError>;

    fn audit(&self, row: &AuditRow) -> Result<(), StoreError>;
    fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError>;
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, spec_text TEXT NOT NULL, format TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL,
    kind TEXT NOT NULL, only_layer TEXT, state TEXT NOT NULL, approved INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL, plan TEXT, plan_hash TEXT, error TEXT, result TEXT,
    done INTEGER NOT NULL, total INTEGER NOT NULL, created_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT, retry_of TEXT);
CREATE INDEX IF NOT EXISTS runs_cluster ON runs (cluster, seq);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash BLOB NOT NULL, role TEXT NOT NULL, cluster TEXT,
    created_at TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT NOT NULL, scope TEXT NOT NULL, body_hash TEXT NOT NULL, status INTEGER,
    body TEXT, PRIMARY KEY (key, scope));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, token TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, status INTEGER NOT NULL);
"#;

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Db) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&Db(&conn))?)
    }
}

/// The connection with every statement prepared once and kept: parsing SQL was a fifth
/// of the service's time under load.
struct Db<'c>(&'c Connection);

impl Db<'_> {
    fn prepare(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        self.0.prepare_cached(sql)
    }

    fn execute(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare(sql)?.execute(params)
    }

    fn query_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare(sql)?.query_row(params, f)
    }

    fn last_insert_rowid(&self) -> i64 {
        self.0.last_insert_rowid()
    }
}

const RUN_COLUMNS: &str = "seq, id, cluster, kind, only_layer, state, approved, cancel_requested, \
     plan, plan_hash, error, result, done, total, created_at, started_at, finished_at, retry_of";

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<Result<Run, String>> {
    let kind: String = r.get(3)?;
    let only: Option<String> = r.get(4)?;
    let state: String = r.get(5)?;
    let result: Option<String> = r.get(11)?;
    let parse = || -> Result<Run, String> {
        Ok(Run {
            seq: r.get(0).map_err(|e| e.to_string())?,
            id: r.get(1).map_err(|e| e.to_string())?,
            cluster: r.get(2).map_err(|e| e.to_string())?,
            kind: RunKind::parse(&kind).ok_or(format!("run kind {kind:?}"))?,
            only: match only {
                Some(o) => Some(
                    serde_json::from_value(serde_json::Value::String(o.clone()))
                        .map_err(|_| format!("layer {o:?}"))?,
                ),
                None => None,
            },
            state: RunState::parse(&state).ok_or(format!("run state {state:?}"))?,
            approved: r.get::<_, i64>(6).map_err(|e| e.to_string())? != 0,
            cancel_requested: r.get::<_, i64>(7).map_err(|e| e.to_string())? != 0,
            plan: r.get(8).map_err(|e| e.to_string())?,
            plan_hash: r.get(9).map_err(|e| e.to_string())?,
            error: r.get(10).map_err(|e| e.to_string())?,
            result: match result {
                Some(t) => Some(serde_json::from_str(&t).map_err(|e| e.to_string())?),
                None => None,
            },
            done: r.get::<_, i64>(12).map_err(|e| e.to_string())? as u64,
            total: r.get::<_, i64>(13).map_err(|e| e.to_string())? as u64,
            created_at: r.get(14).map_err(|e| e.to_string())?,
            started_at: r.get(15).map_err(|e| e.to_string())?,
            finished_at: r.get(16).map_err(|e| e.to_string())?,
            retry_of: r.get(17).map_err(|e| e.to_string())?,
        })
    };
    Ok(parse())
}

/// What a claimed run becomes: it plans, unless it was planned and confirmed.
pub fn claim_state(run: &Run) -> RunState {
    if run.plan.is_none() || !run.approved {
        RunState::Planning
    } else {
        RunState::Applying
    }
}

pub(crate) fn layer_text(run: &Run) -> Option<String> {
    run.only
        .and_then(|l| serde_json::to_value(l).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

impl Store for SqliteStore {
    fn put_cluster(&self, c: &ClusterRow) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO clusters (name, spec_text, format, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET spec_text = ?2, format = ?3, updated_at = ?4",
                params![c.name, c.spec_text, c.format, c.updated_at],
            )
            .map(|_| ())
        })
    }

    fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, StoreError> {
        self.with(|db| {
            db.query_row(
                "SELECT name, spec_text, format, updated_at FROM clusters WHERE name = ?1",
                [name],
                |r| {
                    Ok(ClusterRow {
                        name: r.get(0)?,
                        spec_text: r.get(1)?,
                        format: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT name, spec_text, format, updated_at FROM clusters ORDER BY name",
            )?;
            q.query_map([], |r| {
                Ok(ClusterRow {
                    name: r.get(0)?,
                    spec_text: r.get(1)?,
                    format: r.get(2)?,
                    updated_at: r.get(3)?,
                })
            })?
            .collect()
        })
    }

    fn create_run(&self, run: &mut Run) -> Result<(), StoreError> {
        let only = layer_text(run);
        let result = run.result.as_ref().map(|v| v.to_string());
        let seq = self.with(|db| {
            db.execute(
                "INSERT INTO runs (id, cluster, kind, only_layer, state, approved, cancel_requested,
                   plan, plan_hash, error, result, done, total, created_at, started_at, finished_at,
                   retry_of)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    run.id,
                    run.cluster,
                    run.kind.as_str(),
                    only,
                    run.state.as_str(),
                    run.approved as i64,
                    run.cancel_requested as i64,
                    run.plan,
                    run.plan_hash,
                    run.error,
                    result,
                    run.done as i64,
                    run.total as i64,
                    run.created_at,
                    run.started_at,
                    run.finished_at,
                    run.retry_of,
                ],
            )?;
            Ok(db.last_insert_rowid())
        })?;
        run.seq = seq;
        Ok(())
    }

    fn run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        let row = self.with(|db| {
            db.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                run_from_row,
            )
            .optional()
        })?;
        row.transpose().map_err(StoreError::Corrupt)
    }

    fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        let result = run.result.as_ref().map(|v| v.to_string());
        self.with(|db| {
            // A cancel asked for meanwhile is kept: only `request_cancel` sets the flag.
            db.execute(
                "UPDATE runs SET state = ?2, approved = ?3,
                   cancel_requested = cancel_requested OR ?4, plan = ?5,
                   plan_hash = ?6, error = ?7, result = ?8, done = ?9, total = ?10,
                   started_at = ?11, finished_at = ?12 WHERE id = ?1",
                params![
                    run.id,
                    run.state.as_str(),
                    run.approved as i64,
                    run.cancel_requested as i64,
                    run.plan,
                    run.plan_hash,
                    run.error,
                    result,
                    run.done as i64,
                    run.total as i64,
                    run.started_at,
                    run.finished_at,
                ],
            )
            .map(|_| ())
        })
    }

    fn claim_next(&self, skip: &[String], now: &str) -> Result<Option<(Run, Lease)>, StoreError> {
        let skip = serde_json::to_string(skip).unwrap_or_default();
        let row = self.with(|db| {
            // One connection: the select and the update cannot interleave with another
            // claim.
            let found = db
                .query_row(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM runs q WHERE state = 'queued'
                           AND cluster NOT IN (SELECT value FROM json_each(?1))
                           AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.cluster = q.cluster
                                             AND a.state IN ('planning', 'applying'))
                         ORDER BY seq LIMIT 1"
                    ),
                    [&skip],
                    run_from_row,
                )
                .optional()?;
            if let Some(Ok(run)) = &found {
                db.execute(
                    "UPDATE runs SET state = ?2, started_at = COALESCE(started_at, ?3)
                     WHERE id = ?1",
                    params![run.id, claim_state(run).as_str(), now],
                )?;
            }
            Ok(found)
        })?;
        let Some(mut run) = row.transpose().map_err(StoreError::Corrupt)? else {
            return Ok(None);
        };
        run.state = claim_state(&run);
        run.started_at.get_or_insert_with(|| now.to_string());
        Ok(Some((run, Lease::none())))
    }

    fn take_orphan(&self, _id: &str) -> Result<Option<Lease>, StoreError> {
        // One process per database: at start, and for runs it does not execute, the
        // executor is gone.
        Ok(Some(Lease::none()))
    }

    fn request_cancel(&self, id: &str, now: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE runs SET cancel_requested = 1,
                   finished_at = CASE WHEN state IN ('queued', 'planned') THEN ?2 ELSE finished_at END,
                   state = CASE WHEN state IN ('queued', 'planned') THEN 'canceled' ELSE state END
                 WHERE id = ?1 AND state IN ('queued', 'planning', 'planned', 'applying')",
                params![id, now],
            )
            .map(|n| n == 1)
        })
    }

    fn set_progress(&self, id: &str, done: u64) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE runs SET done = ?2 WHERE id = ?1",
                params![id, done as i64],
            )
            .map(|_| ())
        })
    }

    fn runs(&self, f: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let rows = self.with(|db| {
            let mut q = db.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR cluster = ?1)
                   AND (?2 IS NULL OR state = ?2) AND seq > ?3 ORDER BY seq LIMIT ?4"
            ))?;
            q.query_map(
                params![
                    f.cluster,
                    f.state.map(|s| s.as_str()),
                    f.after.unwrap_or(0),
                    f.limit as i64
                ],
                run_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|r| r.map_err(StoreError::Corrupt))
            .collect()
    }

    fn last_run_in(&self, cluster: &str, states: &[RunState]) -> Result<Option<Run>, StoreError> {
        let names: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let row = self.with(|db| {
            db.query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE cluster = ?1 AND state IN ({})
                     ORDER BY seq DESC LIMIT 1",
                    names.join(", ")
                ),
                [cluster],
                run_from_row,
            )
            .optional()
        })?;
        row.transpose().map_err(StoreError::Corrupt)
    }

    fn append_event(&self, run: &str, json: &str) -> Result<i64, StoreError> {
        self.with(|db| {
            let next: i64 = db.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?1",
                [run],
                |r| r.get(0),
            )?;
            db.execute(
                "INSERT INTO events (run_id, seq, data) VALUES (?1, ?2, ?3)",
                params![run, next, json],
            )?;
            Ok(next)
        })
    }

    fn events_after(&self, run: &str, after: i64) -> Result<Vec<(i64, String)>, StoreError> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT seq, data FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            q.query_map(params![run, after], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    fn add_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO tokens (id, hash, role, cluster, created_at, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                params![t.id, &t.hash[..], t.role, t.cluster, t.created_at],
            )
            .map(|_| ())
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT id, hash, role, cluster, created_at, revoked FROM tokens ORDER BY rowid",
            )?;
            q.query_map([], |r| {
                let bytes: Vec<u8> = r.get(1)?;
                let mut hash = [0u8; 32];
                if bytes.len() == 32 {
                    hash.copy_from_slice(&bytes);
                }
                Ok(TokenRow {
                    id: r.get(0)?,
                    hash,
                    role: r.get(2)?,
                    cluster: r.get(3)?,
                    created_at: r.get(4)?,
                    revoked: r.get::<_, i64>(5)? != 0,
                })
            })?
            .collect()
        })
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
                [id],
            )
            .map(|n| n > 0)
        })
    }

    fn idempotency_begin(
        &self,
        key: &str,
        scope: &str,
        body_hash: &str,
    ) -> Result<Idempotency, StoreError> {
        self.with(|db| {
            let found: Option<(String, Option<u16>, Option<String>)> = db
                .query_row(
                    "SELECT body_hash, status, body FROM idempotency WHERE key = ?1 AND scope = ?2",
                    params![key, scope],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            Ok(match found {
                None => {
                    db.execute(
                        "INSERT INTO idempotency (key, scope, body_hash) VALUES (?1, ?2, ?3)",
                        params![key, scope, body_hash],
                    )?;
                    Idempotency::New
                }
                Some((h, _, _)) if h != body_hash => Idempotency::Mismatch,
                Some((_, Some(status), Some(body))) => Idempotency::Done { status, body },
                Some(_) => Idempotency::InFlight,
            })
        })
    }

    fn idempotency_finish(
        &self,
        key: &str,
        scope: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE idempotency SET status = ?3, body = ?4 WHERE key = ?1 AND scope = ?2",
                params![key, scope, status, body],
            )
            .map(|_| ())
        })
    }

    fn idempotency_abort(&self, key: &str, scope: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM idempotency WHERE key = ?1 AND scope = ?2 AND status IS NULL",
                params![key, scope],
            )
            .map(|_| ())
        })
    }

    fn audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO audit (at, token, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.at, a.token, a.method, a.path, a.status],
            )
            .map(|_| ())
        })
    }

    fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError> {
        self.with(|db| {
            let mut q =
                db.prepare("SELECT at, token, method, path, status FROM audit ORDER BY id")?;
            q.query_map([], |r| {
                Ok(AuditRow {
                    at: r.get(0)?,
                    token: r.get(1)?,
                    method: r.get(2)?,
                    path: r.get(3)?,
                    status: r.get(4)?,
                })
            })?
            .collect()
        })
    }
}

/// Now, as RFC 3339 in UTC with milliseconds.
pub fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::store_cases as cases;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn all_cases() {
        for (name, case) in cases::ALL {
            let (_d, s) = store();
            eprintln!("case {name}");
            case(&s);
        }
    }
}
