//! The PostgreSQL store (`pgform serve --store postgres://USER@HOST:PORT/DB`): the same
//! tables as the SQLite store, shared by several service processes.
//!
//! - The `postgres` client is synchronous and must not run on the async runtime's
//!   threads, so a few threads of their own own the connections and take jobs over a
//!   channel; a store call waits for its job's answer.
//! - Claims: one claimer at a time (a transaction-scoped advisory lock), the oldest
//!   queued run whose cluster has nothing executing, `FOR UPDATE SKIP LOCKED`.
//! - Liveness: an executing run's process holds a session advisory lock named after the
//!   run, on a connection of its own (the run's [`Lease`]). When the process dies the
//!   server drops the connection and the lock with it, so recovery touches a run only
//!   when it can take that lock.
//! - The schema is made or migrated on open (`pgform_schema` holds its version).

use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls, Row};

use super::run::{Run, RunKind, RunState};
use super::store::{
    AuditRow, ClusterRow, Idempotency, Lease, RunFilter, Store, StoreError, TokenRow, claim_state,
    layer_text,
};

/// Connections for ordinary calls (each on its own thread).
const POOL: usize = 4;

/// The schema's versions, in order: the index + 1 is the version each makes.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clusters (
    name TEXT PRIMARY KEY, spec_text TEXT NOT NULL, format TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE runs (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL,
    kind TEXT NOT NULL, only_layer TEXT, state TEXT NOT NULL, approved BOOLEAN NOT NULL,
    cancel_requested BOOLEAN NOT NULL, plan TEXT, plan_hash TEXT, error TEXT, result TEXT,
    done BIGINT NOT NULL, total BIGINT NOT NULL, created_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT, retry_of TEXT);
CREATE INDEX runs_cluster ON runs (cluster, seq);
CREATE INDEX runs_state ON runs (state, seq);
CREATE TABLE events (
    run_id TEXT NOT NULL, seq BIGINT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE tokens (
    ord BIGSERIAL, id TEXT PRIMARY KEY, hash BYTEA NOT NULL, role TEXT NOT NULL, cluster TEXT,
    created_at TEXT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE);
CREATE TABLE idempotency (
    key TEXT NOT NULL, scope TEXT NOT NULL, body_hash TEXT NOT NULL, status INTEGER,
    body TEXT, PRIMARY KEY (key, scope));
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, token TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, status INTEGER NOT NULL);
"#,
    r#"
CREATE TABLE states (
    cluster TEXT PRIMARY KEY, document TEXT NOT NULL, serial BIGINT NOT NULL,
    previous TEXT, updated_at TEXT NOT NULL);
CREATE TABLE state_locks (
    cluster TEXT PRIMARY KEY, token TEXT NOT NULL, holder TEXT NOT NULL,
    pid INTEGER NOT NULL, backend_start TIMESTAMPTZ);
"#,
];

/// Advisory lock keys: `hashtextextended(name, 0)` of these names (a run's adds its id).
const MIGRATE_LOCK: &str = "pgform:migrate";
const CLAIM_LOCK: &str = "pgform:claim";
const RUN_LOCK: &str = "pgform:run:";
const EVENTS_LOCK: &str = "pgform:events:";
pub(super) const STATE_LOCK: &str = "pgform:state:";

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

/// A thread (or threads) owning connections, fed jobs over a channel. Dropping the last
/// sender (clones share the threads) ends the threads and closes their connections.
#[derive(Clone)]
pub(super) struct Conns {
    jobs: mpsc::Sender<Job>,
    config: postgres::Config,
}

impl Conns {
    pub(super) fn spawn(config: &postgres::Config, threads: usize) -> Conns {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut client: Option<Client> = None;
                loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job(&mut client);
                }
            });
        }
        Conns {
            jobs,
            config: config.clone(),
        }
    }

    /// Runs `f` on one of the connections (connecting first when it has none, or lost
    /// it) and waits for its answer.
    pub(super) fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let config = self.config.clone();
        let job: Job = Box::new(move |slot: &mut Option<Client>| {
            let answer = (|| {
                if slot.as_ref().is_none_or(|c| c.is_closed()) {
                    *slot = None;
                    *slot = Some(config.connect(NoTls)?);
                }
                let client = slot.as_mut().expect("connected above");
                f(client)
            })();
            let _ = tx.send(answer);
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("its connection threads stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Unavailable("a connection thread stopped".into()))?
    }
}

/// Connections of their own (one thread each) for session locks, kept for the next
/// holder once they hold nothing: a new connection costs a thread and an authentication
/// (SCRAM's key derivation, slow in a debug build), once per run otherwise.
#[derive(Clone, Default)]
pub(super) struct Spares(Arc<Mutex<Vec<Conns>>>);

/// At most this many kept (about the runs executing at once).
const SPARES: usize = 8;

impl Spares {
    /// A connection of its own: a kept one, or a new one like `pool`'s.
    pub(super) fn take(&self, pool: &Conns) -> Conns {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| Conns::spawn(&pool.config, 1))
    }

    /// Keeps `conn`, whose session holds no lock.
    pub(super) fn keep(&self, conn: Conns) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < SPARES {
            kept.push(conn);
        }
    }

    /// Releases the session locks `conn` holds, then keeps it; one that cannot is closed.
    pub(super) fn release(&self, conn: Conns) {
        let unlocked = conn.with(|db| {
            db.batch_execute("SELECT pg_advisory_unlock_all()")?;
            Ok(())
        });
        if unlocked.is_ok() {
            self.keep(conn);
        }
    }
}

/// A connection holding a run's lock: released when dropped, before the connection is
/// kept or closes (the server notices a closed connection a moment later, and another
/// claim or recovery must not find the lock still held by a run that was saved final).
struct Held {
    conn: Option<Conns>,
    spares: Spares,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.spares.release(conn);
        }
    }
}

pub struct PgStore {
    pool: Conns,
    spares: Spares,
}

/// How the service finds a store password that is not in the URL: `PGPASSWORD`, then
/// the password file (`PGPASSFILE`, or `~/.pgpass`), as libpq does.
pub fn with_password(mut config: postgres::Config) -> postgres::Config {
    if config.get_password().is_some() {
        return config;
    }
    if let Some(p) = std::env::var_os("PGPASSWORD") {
        config.password(p.as_encoded_bytes());
        return config;
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")));
    if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "localhost".into(),
        };
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let user = config.get_user().unwrap_or_default().to_string();
        let db = config.get_dbname().unwrap_or(&user).to_string();
        if let Some(p) = pgpass_lookup(&text, [&host, &port, &db, &user]) {
            config.password(p);
        }
    }
    config
}

/// The password of the first `host:port:database:user:password` line that matches
/// (`*` matches anything; `\:` and `\\` are a colon and a backslash).
pub fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => fields.last_mut()?.extend(chars.next()),
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut()?.push(c),
            }
        }
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(want)
                .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

impl PgStore {
    /// Connects and makes or migrates the schema. `url` is a libpq URL or key=value
    /// string; a password not in it comes from `PGPASSWORD` or the password file.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config = postgres::Config::from_str(url)?;
        if config.get_user().is_none()
            && let Some(u) = std::env::var_os("PGUSER").or_else(|| std::env::var_os("USER"))
        {
            config.user(u.to_string_lossy().as_ref());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.application_name("pgform serve");
        let config = with_password(config);
        let store = PgStore {
            pool: Conns::spawn(&config, POOL),
            spares: Spares::default(),
        };
        store.pool.with(migrate)?;
        Ok(store)
    }

    fn dedicated(&self) -> Conns {
        self.spares.take(&self.pool)
    }

    fn keep_spare(&self, conn: Conns) {
        self.spares.keep(conn);
    }

    fn held(&self, conn: Conns) -> Lease {
        Lease::new(Held {
            conn: Some(conn),
            spares: self.spares.clone(),
        })
    }
}

fn migrate(db: &mut Client) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    // Two services starting at once: one migrates, the other then finds it done.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&MIGRATE_LOCK],
    )?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS pgform_schema (version INTEGER NOT NULL)")?;
    let version: i32 = tx
        .query_opt("SELECT max(version) FROM pgform_schema", &[])?
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "the store's schema is version {version}, newer than this pgform's ({known}): \
             upgrade pgform"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO pgform_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

const RUN_COLUMNS: &str = "seq, id, cluster, kind, only_layer, state, approved, cancel_requested, \
     plan, plan_hash, error, result, done, total, created_at, started_at, finished_at, retry_of";

fn run_from_row(r: &Row) -> Result<Run, StoreError> {
    let kind: String = r.try_get(3)?;
    let only: Option<String> = r.try_get(4)?;
    let state: String = r.try_get(5)?;
    let result: Option<String> = r.try_get(11)?;
    let corrupt = StoreError::Corrupt;
    Ok(Run {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        cluster: r.try_get(2)?,
        kind: RunKind::parse(&kind).ok_or_else(|| corrupt(format!("run kind {kind:?}")))?,
        only: match only {
            Some(o) => Some(
                serde_json::from_value(serde_json::Value::String(o.clone()))
                    .map_err(|_| corrupt(format!("layer {o:?}")))?,
            ),
            None => None,
        },
        state: RunState::parse(&state).ok_or_else(|| corrupt(format!("run state {state:?}")))?,
        approved: r.try_get(6)?,
        cancel_requested: r.try_get(7)?,
        plan: r.try_get(8)?,
        plan_hash: r.try_get(9)?,
        error: r.try_get(10)?,
        result: match result {
            Some(t) => Some(serde_json::from_str(&t).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        },
        done: r.try_get::<_, i64>(12)? as u64,
        total: r.try_get::<_, i64>(13)? as u64,
        created_at: r.try_get(14)?,
        started_at: r.try_get(15)?,
        finished_at: r.try_get(16)?,
        retry_of: r.try_get(17)?,
    })
}

fn cluster_from_row(r: &Row) -> Result<ClusterRow, StoreError> {
    Ok(ClusterRow {
        name: r.try_get(0)?,
        spec_text: r.try_get(1)?,
        format: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}

impl Store for PgStore {
    fn states(&self, cluster: &str) -> Option<Arc<dyn crate::state::Backend>> {
        Some(Arc::new(super::pgstates::PgStates::new(
            self.pool.clone(),
            self.spares.clone(),
            cluster,
        )))
    }

    fn put_cluster(&self, c: &ClusterRow) -> Result<(), StoreError> {
        let c = c.clone();
        self.pool.with(move |db| {
            db.execute(
                "INSERT INTO clusters (name, spec_text, format, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET spec_text = $2, format = $3, updated_at = $4",
                &[&c.name, &c.spec_text, &c.format, &c.updated_at],
            )?;
            Ok(())
        })
    }

    fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, StoreError> {
        let name = name.to_string();
        self.pool.with(move |db| {
            db.query_opt(
                "SELECT name, spec_text, format, updated_at FROM clusters WHERE name = $1",
                &[&name],
            )?
            .as_ref()
            .map(cluster_from_row)
            .transpose()
        })
    }

    fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError> {
        self.pool.with(|db| {
            db.query(
                "SELECT name, spec_text, format, updated_at FROM clusters ORDER BY name",
                &[],
            )?
            .iter()
            .map(cluster_from_row)
            .collect()
        })
    }

    fn create_run(&self, run: &mut Run) -> Result<(), StoreError> {
        let r = run.clone();
        let seq = self.pool.with(move |db| {
            let row = db.query_one(
                "INSERT INTO runs (id, cluster, kind, only_layer, state, approved, cancel_requested,
                   plan, plan_hash, error, result, done, total, created_at, started_at, finished_at,
                   retry_of)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
                 RETURNING seq",
                &[
                    &r.id,
                    &r.cluster,
                    &r.kind.as_str(),
                    &layer_text(&r),
                    &r.state.as_str(),
                    &r.approved,
                    &r.cancel_requested,
                    &r.plan,
                    &r.plan_hash,
                    &r.error,
                    &r.result.as_ref().map(|v| v.to_string()),
                    &(r.done as i64),
                    &(r.total as i64),
                    &r.created_at,
                    &r.started_at,
                    &r.finished_at,
                    &r.retry_of,
                ],
            )?;
            Ok(row.try_get::<_, i64>(0)?)
        })?;
        run.seq = seq;
        Ok(())
    }

    fn run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        let id = id.to_string();
        self.pool.with(move |db| {
            db.query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(run_from_row)
            .transpose()
        })
    }

    fn update_run(&self, run: &Run) -> Result<(), StoreError> {
        let r = run.clone();
        self.pool.with(move |db| {
            // A cancel another process asked for is kept: only it sets the flag.
            db.execute(
                "UPDATE runs SET state = $2, approved = $3,
                   cancel_requested = cancel_requested OR $4, plan = $5,
                   plan_hash = $6, error = $7, result = $8, done = $9, total = $10,
                   started_at = $11, finished_at = $12 WHERE id = $1",
                &[
                    &r.id,
                    &r.state.as_str(),
                    &r.approved,
                    &r.cancel_requested,
                    &r.plan,
                    &r.plan_hash,
                    &r.error,
                    &r.result.as_ref().map(|v| v.to_string()),
                    &(r.done as i64),
                    &(r.total as i64),
                    &r.started_at,
                    &r.finished_at,
                ],
            )?;
            Ok(())
        })
    }

    fn claim_next(&self, skip: &[String], now: &str) -> Result<Option<(Run, Lease)>, StoreError> {
        let skip = skip.to_vec();
        let now = now.to_string();
        // Claimed on the connection that then holds the run's lock: no moment where the
        // run executes with nobody holding it.
        let conn = self.dedicated();
        let claimed = conn.with(move |db| {
            let mut tx = db.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&CLAIM_LOCK],
            )?;
            let candidates = tx.query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs q WHERE state = 'queued'
                       AND NOT (cluster = ANY($1))
                       AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.cluster = q.cluster
                                         AND a.state IN ('planning', 'applying'))
                     ORDER BY seq LIMIT 8 FOR UPDATE SKIP LOCKED"
                ),
                &[&skip],
            )?;
            // A run's lock may still be held for a moment by the process that last
            // executed it (it releases it after saving the run): skip it, never wait.
            let mut claimed = None;
            for row in &candidates {
                let run = run_from_row(row)?;
                let locked: bool = tx
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                        &[&format!("{RUN_LOCK}{}", run.id)],
                    )?
                    .try_get(0)?;
                if locked {
                    claimed = Some(run);
                    break;
                }
            }
            let Some(mut run) = claimed else {
                return Ok(None);
            };
            run.state = claim_state(&run);
            run.started_at.get_or_insert(now);
            tx.execute(
                "UPDATE runs SET state = $2, started_at = $3 WHERE id = $1",
                &[&run.id, &run.state.as_str(), &run.started_at],
            )?;
            tx.commit()?;
            Ok(Some(run))
        });
        match claimed {
            Ok(Some(run)) => Ok(Some((run, self.held(conn)))),
            Ok(None) => {
                self.keep_spare(conn);
                Ok(None)
            }
            // The connection may hold the run's lock: dropping it closes it.
            Err(e) => Err(e),
        }
    }

    fn take_orphan(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let key = format!("{RUN_LOCK}{id}");
        let conn = self.dedicated();
        let free = conn.with(move |db| {
            let row = db.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )?;
            Ok(row.try_get::<_, bool>(0)?)
        })?;
        if free {
            Ok(Some(self.held(conn)))
        } else {
            self.keep_spare(conn);
            Ok(None)
        }
    }

    fn request_cancel(&self, id: &str, now: &str) -> Result<bool, StoreError> {
        let (id, now) = (id.to_string(), now.to_string());
        self.pool.with(move |db| {
            let n = db.execute(
                "UPDATE runs SET cancel_requested = TRUE,
                   finished_at = CASE WHEN state IN ('queued', 'planned') THEN $2 ELSE finished_at END,
                   state = CASE WHEN state IN ('queued', 'planned') THEN 'canceled' ELSE state END
                 WHERE id = $1 AND state IN ('queued', 'planning', 'planned', 'applying')",
                &[&id, &now],
            )?;
            Ok(n == 1)
        })
    }

    fn set_progress(&self, id: &str, done: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.pool.with(move |db| {
            db.execute(
                "UPDATE runs SET done = $2 WHERE id = $1",
                &[&id, &(done as i64)],
            )?;
            Ok(())
        })
    }

    fn runs(&self, f: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let cluster = f.cluster.clone();
        let state = f.state.map(|s| s.as_str().to_string());
        let after = f.after.unwrap_or(0);
        let limit = f.limit.min(i64::MAX as usize) as i64;
        self.pool.with(move |db| {
            db.query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::TEXT IS NULL OR cluster = $1)
                       AND ($2::TEXT IS NULL OR state = $2) AND seq > $3 ORDER BY seq LIMIT $4"
                ),
                &[&cluster, &state, &after, &limit],
            )?
            .iter()
            .map(run_from_row)
            .collect()
        })
    }

    fn last_run_in(&self, cluster: &str, states: &[RunState]) -> Result<Option<Run>, StoreError> {
        let cluster = cluster.to_string();
        let states: Vec<String> = states.iter().map(|s| s.as_str().to_string()).collect();
        self.pool.with(move |db| {
            db.query_opt(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE cluster = $1 AND state = ANY($2)
                     ORDER BY seq DESC LIMIT 1"
                ),
                &[&cluster, &states],
            )?
            .as_ref()
            .map(run_from_row)
            .transpose()
        })
    }

    fn append_event(&self, run: &str, json: &str) -> Result<i64, StoreError> {
        let (run, json) = (run.to_string(), json.to_string());
        self.pool.with(move |db| {
            // Processes append to one run (its executor, a cancel elsewhere): numbered
            // one at a time.
            let mut tx = db.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&format!("{EVENTS_LOCK}{run}")],
            )?;
            let row = tx.query_one(
                "INSERT INTO events (run_id, seq, data)
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2 FROM events WHERE run_id = $1
                 RETURNING seq",
                &[&run, &json],
            )?;
            tx.commit()?;
            Ok(row.try_get::<_, i64>(0)?)
        })
    }

    fn events_after(&self, run: &str, after: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let run = run.to_string();
        self.pool.with(move |db| {
            db.query(
                "SELECT seq, data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq",
                &[&run, &after],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
        })
    }

    fn add_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        let t = t.clone();
        self.pool.with(move |db| {
            db.execute(
                "INSERT INTO tokens (id, hash, role, cluster, created_at, revoked)
                 VALUES ($1, $2, $3, $4, $5, FALSE)",
                &[&t.id, &&t.hash[..], &t.role, &t.cluster, &t.created_at],
            )?;
            Ok(())
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.pool.with(|db| {
            db.query(
                "SELECT id, hash, role, cluster, created_at, revoked FROM tokens ORDER BY ord",
                &[],
            )?
            .iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get(1)?;
                let mut hash = [0u8; 32];
                if bytes.len() == 32 {
                    hash.copy_from_slice(&bytes);
                }
                Ok(TokenRow {
                    id: r.try_get(0)?,
                    hash,
                    role: r.try_get(2)?,
                    cluster: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    revoked: r.try_get(5)?,
                })
            })
            .collect()
        })
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.pool.with(move |db| {
            let n = db.execute(
                "UPDATE tokens SET revoked = TRUE WHERE id = $1 AND NOT revoked",
                &[&id],
            )?;
            Ok(n > 0)
        })
    }

    fn idempotency_begin(
        &self,
        key: &str,
        scope: &str,
        body_hash: &str,
    ) -> Result<Idempotency, StoreError> {
        let (key, scope, body_hash) = (key.to_string(), scope.to_string(), body_hash.to_string());
        self.pool.with(move |db| {
            // Insert first: of two processes sending the same key at once, one inserts.
            let inserted = db.execute(
                "INSERT INTO idempotency (key, scope, body_hash) VALUES ($1, $2, $3)
                 ON CONFLICT (key, scope) DO NOTHING",
                &[&key, &scope, &body_hash],
            )?;
            if inserted == 1 {
                return Ok(Idempotency::New);
            }
            let row = db.query_opt(
                "SELECT body_hash, status, body FROM idempotency WHERE key = $1 AND scope = $2",
                &[&key, &scope],
            )?;
            Ok(match row {
                // Aborted in between: the caller may send it again.
                None => Idempotency::InFlight,
                Some(r) => {
                    let h: String = r.try_get(0)?;
                    let status: Option<i32> = r.try_get(1)?;
                    let body: Option<String> = r.try_get(2)?;
                    match (status, body) {
                        _ if h != body_hash => Idempotency::Mismatch,
                        (Some(status), Some(body)) => Idempotency::Done {
                            status: status as u16,
                            body,
                        },
                        _ => Idempotency::InFlight,
                    }
                }
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
        let (key, scope, body) = (key.to_string(), scope.to_string(), body.to_string());
        self.pool.with(move |db| {
            db.execute(
                "UPDATE idempotency SET status = $3, body = $4 WHERE key = $1 AND scope = $2",
                &[&key, &scope, &(status as i32), &body],
            )?;
            Ok(())
        })
    }

    fn idempotency_abort(&self, key: &str, scope: &str) -> Result<(), StoreError> {
        let (key, scope) = (key.to_string(), scope.to_string());
        self.pool.with(move |db| {
            db.execute(
                "DELETE FROM idempotency WHERE key = $1 AND scope = $2 AND status IS NULL",
                &[&key, &scope],
            )?;
            Ok(())
        })
    }

    fn audit(&self, a: &AuditRow) -> Result<(), StoreError> {
        let a = a.clone();
        self.pool.with(move |db| {
            db.execute(
                "INSERT INTO audit (at, token, method, path, status) VALUES ($1, $2, $3, $4, $5)",
                &[&a.at, &a.token, &a.method, &a.path, &(a.status as i32)],
            )?;
            Ok(())
        })
    }

    fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError> {
        self.pool.with(|db| {
            db.query(
                "SELECT at, token, method, path, status FROM audit ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(AuditRow {
                    at: r.try_get(0)?,
                    token: r.try_get(1)?,
                    method: r.try_get(2)?,
                    path: r.try_get(3)?,
                    status: r.try_get::<_, i32>(4)? as u16,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    otherhost:5432:*:u:no\n\
                    127.0.0.1:*:db:u:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, ["127.0.0.1", "6000", "db", "u"]).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            pgpass_lookup(text, ["h", "1", "d", "x"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:1:d:u\n", ["h", "1", "d", "u"]), None);
    }
}
