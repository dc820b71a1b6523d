//! Cluster states and their locks in the PostgreSQL store, shared by the services and
//! the CLI (`--state postgres://...`).
//!
//! - `states` holds each cluster's state document (the state file's format) and the one
//!   before the current lock's first save (the state file's backup).
//! - A lock is a session advisory lock on a connection of its own, so that it dies with
//!   its process, and a row in `state_locks` naming the holder with a token. Every save
//!   checks the token in its transaction: a writer whose lock was forced away stops
//!   instead of interleaving its saves with the next holder's.
//! - `force-unlock` removes the row and ends the holder's session, which frees its
//!   advisory lock.

use super::pgstore::{Conns, STATE_LOCK, Spares};
use super::store::StoreError;
use crate::state::{self, Backend, LockInfo, LockedState, State, StateError, StateStore};

/// One cluster's state in the store.
#[derive(Clone)]
pub struct PgStates {
    pool: Conns,
    spares: Spares,
    cluster: String,
}

impl std::fmt::Debug for PgStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.place())
    }
}

impl PgStates {
    pub(super) fn new(pool: Conns, spares: Spares, cluster: &str) -> PgStates {
        PgStates {
            pool,
            spares,
            cluster: cluster.to_string(),
        }
    }

    /// The first column of the row `sql` finds for this cluster (`$1`), as text.
    fn text(&self, sql: &'static str) -> Result<Option<String>, StateError> {
        let cluster = self.cluster.clone();
        self.pool
            .with(move |db| Ok(db.query_opt(sql, &[&cluster])?.map(|r| r.get(0))))
            .map_err(store_error)
    }
}

fn store_error(e: StoreError) -> StateError {
    StateError::Store(e.to_string())
}

/// A holder as the lock row names it (JSON of [`LockInfo`]).
fn holder_text(json: &str) -> String {
    serde_json::from_str::<LockInfo>(json)
        .map(|h| h.to_string())
        .unwrap_or_else(|_| "another process".into())
}

impl Backend for PgStates {
    fn place(&self) -> String {
        format!("the state of `{}` in the PostgreSQL store", self.cluster)
    }

    fn read(&self) -> Result<Option<State>, StateError> {
        self.text("SELECT document FROM states WHERE cluster = $1")?
            .map(|t| state::from_json(&t, &self.place()))
            .transpose()
    }

    fn lock(&self, operation: &str) -> Result<StateStore, StateError> {
        let conn = self.spares.take(&self.pool);
        let token = uuid::Uuid::new_v4().to_string();
        let (cluster, key, ours) = (
            self.cluster.clone(),
            format!("{STATE_LOCK}{}", self.cluster),
            token.clone(),
        );
        let info = serde_json::to_string(&LockInfo::here(operation)).expect("lock info");
        let refused = conn
            .with(move |db| {
                let free: bool = db
                    .query_one(
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                        &[&key],
                    )?
                    .get(0);
                if !free {
                    let holder = db
                        .query_opt(
                            "SELECT holder FROM state_locks WHERE cluster = $1",
                            &[&cluster],
                        )?
                        .map(|r| holder_text(r.get(0)));
                    return Ok(Some(holder.unwrap_or_else(|| "another process".into())));
                }
                // A row left by a holder that died is replaced: its advisory lock is gone.
                db.execute(
                    "INSERT INTO state_locks (cluster, token, holder, pid, backend_start)
                     SELECT $1, $2, $3, pid, backend_start FROM pg_stat_activity
                     WHERE pid = pg_backend_pid()
                     ON CONFLICT (cluster) DO UPDATE SET token = $2, holder = $3,
                         pid = EXCLUDED.pid, backend_start = EXCLUDED.backend_start",
                    &[&cluster, &ours, &info],
                )?;
                Ok(None)
            })
            .map_err(store_error)?;
        if let Some(holder) = refused {
            self.spares.keep(conn);
            return Err(StateError::Locked {
                place: self.place(),
                holder,
            });
        }
        let held = LockedPg {
            conn: Some(conn),
            states: self.clone(),
            token,
            backed_up: false,
        };
        Ok(StateStore::held(self.place(), Box::new(held)))
    }

    fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        // A row whose session has ended is a lock that died with its process.
        let json = self.text(
            "SELECT l.holder FROM state_locks l JOIN pg_stat_activity a
                 ON a.pid = l.pid AND a.backend_start = l.backend_start
             WHERE l.cluster = $1",
        )?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    fn force_unlock(&self) -> Result<Option<String>, StateError> {
        let json = self.text(
            "WITH gone AS (DELETE FROM state_locks WHERE cluster = $1
                           RETURNING holder, pid, backend_start)
             SELECT g.holder, (SELECT bool_or(pg_terminate_backend(a.pid))
                               FROM pg_stat_activity a
                               WHERE a.pid = g.pid AND a.backend_start = g.backend_start)
             FROM gone g",
        )?;
        Ok(json.map(|j| holder_text(&j)))
    }
}

/// A held lock: its own connection (holding the advisory lock) and its token.
struct LockedPg {
    conn: Option<Conns>,
    states: PgStates,
    token: String,
    backed_up: bool,
}

impl LockedState for LockedPg {
    fn read(&self) -> Result<Option<State>, StateError> {
        self.states.read()
    }

    /// Saves in one transaction with the token check; the first save of a lock first
    /// keeps the state it replaces as `previous`.
    fn write(&mut self, state: &State) -> Result<(), StateError> {
        let (cluster, token, first) = (
            self.states.cluster.clone(),
            self.token.clone(),
            !self.backed_up,
        );
        let (document, serial, now) = (
            state::to_json(state),
            state.serial as i64,
            state::now_rfc3339(),
        );
        let save = move |db: &mut postgres::Client| {
            let mut tx = db.transaction()?;
            let ours = tx
                .query_opt(
                    "SELECT 1 FROM state_locks WHERE cluster = $1 AND token = $2 FOR UPDATE",
                    &[&cluster, &token],
                )?
                .is_some();
            if !ours {
                return Ok(false);
            }
            if first {
                tx.execute(
                    "UPDATE states SET previous = document WHERE cluster = $1",
                    &[&cluster],
                )?;
            }
            tx.execute(
                "INSERT INTO states (cluster, document, serial, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (cluster) DO UPDATE SET document = $2, serial = $3,
                         updated_at = $4",
                &[&cluster, &document, &serial, &now],
            )?;
            tx.commit()?;
            Ok(true)
        };
        // Once more on a new connection when the lock's own was cut (a force-unlock ends
        // it; the token check then says so): the transaction is idempotent.
        let conn = self.conn.as_ref().expect("held until dropped");
        let saved = match conn.with(save.clone()) {
            Ok(saved) => saved,
            Err(_) => conn.with(save).map_err(store_error)?,
        };
        if !saved {
            return Err(StateError::LockLost {
                place: self.states.place(),
            });
        }
        self.backed_up = true;
        Ok(())
    }
}

impl Drop for LockedPg {
    fn drop(&mut self) {
        let (cluster, token) = (self.states.cluster.clone(), self.token.clone());
        let Some(conn) = self.conn.take() else { return };
        let _ = conn.with(move |db| {
            db.execute(
                "DELETE FROM state_locks WHERE cluster = $1 AND token = $2",
                &[&cluster, &token],
            )?;
            Ok(())
        });
        // Unlocked before the connection is kept or closes: the server notices a closed
        // connection a moment later, and the next taker must not find the lock held.
        self.states.spares.release(conn);
    }
}
