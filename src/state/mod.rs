//! The state: what pgform made, as last seen. `State` is the in-memory model; a
//! [`Backend`] keeps it and its lock: a file (`file`: versioned, sorted, written
//! atomically, the lock beside it) or a shared store (the service's PostgreSQL store).

mod file;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::{Address, Attrs, Value};

pub use file::{
    FileStates, backup_path, force_unlock, from_json, hostname, lock_path, now_rfc3339, read,
    to_json,
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{place} is not a pgform state: {why}")]
    Corrupt { place: String, why: String },
    #[error(
        "{place} is locked by {holder}\n  another pgform is using it; wait for it to finish. If that process is gone, run `pgform force-unlock`"
    )]
    Locked { place: String, holder: String },
    #[error("{place} belongs to cluster `{found}`, but the spec is for `{expected}`")]
    WrongCluster {
        place: String,
        found: String,
        expected: String,
    },
    /// The store that keeps the state failed (its own words, no password in them).
    #[error("{0}")]
    Store(String),
    /// The lock was taken away (`force-unlock`) while this run held it: nothing more is
    /// written, so that two writers never interleave.
    #[error(
        "the state lock on {place} was removed (force-unlock) while this run held it; nothing more was saved: run again to converge"
    )]
    LockLost { place: String },
}

/// Who holds the lock; kept with the lock so a refused run can name them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub operation: String,
    pub host: String,
    pub since: String,
}

impl LockInfo {
    /// This process, about to do `operation`.
    pub fn here(operation: &str) -> LockInfo {
        LockInfo {
            pid: std::process::id(),
            operation: operation.to_string(),
            host: hostname(),
            since: now_rfc3339(),
        }
    }
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`pgform {}` (pid {} on {}, since {})",
            self.operation, self.pid, self.host, self.since
        )
    }
}

/// Where a cluster's state lives, and its lock.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where, in words for messages: "the state file PATH", "the state of `NAME` in
    /// the PostgreSQL store".
    fn place(&self) -> String;
    /// The state as last saved (no lock: saves are atomic); `None` before the first.
    fn read(&self) -> Result<Option<State>, StateError>;
    /// Takes the lock for `operation`, or says who holds it.
    fn lock(&self, operation: &str) -> Result<StateStore, StateError>;
    /// Who holds the lock now, if anyone.
    fn holder(&self) -> Result<Option<LockInfo>, StateError>;
    /// Removes the lock of a holder that is gone; returns who held it, if known.
    fn force_unlock(&self) -> Result<Option<String>, StateError>;
}

/// The writing side of a held lock. The first save of a lock keeps the state as it was
/// before (a backup); dropping it releases the lock.
pub trait LockedState: Send {
    fn read(&self) -> Result<Option<State>, StateError>;
    fn write(&mut self, state: &State) -> Result<(), StateError>;
}

/// A state held under its lock for the life of the value.
pub struct StateStore {
    place: String,
    held: Box<dyn LockedState>,
}

impl StateStore {
    /// Takes the lock of the state file at `path` (see [`FileStates`]).
    pub fn lock(path: &std::path::Path, operation: &str) -> Result<StateStore, StateError> {
        FileStates::new(path).lock(operation)
    }

    /// A lock a backend took.
    pub fn held(place: String, held: Box<dyn LockedState>) -> StateStore {
        StateStore { place, held }
    }

    pub fn place(&self) -> &str {
        &self.place
    }

    /// The locked state, or a new empty one for `cluster`.
    pub fn load_or_new(&self, cluster: &str) -> Result<State, StateError> {
        match self.held.read()? {
            Some(s) if s.cluster != cluster => Err(StateError::WrongCluster {
                place: self.place.clone(),
                found: s.cluster,
                expected: cluster.to_string(),
            }),
            Some(s) => Ok(s),
            None => Ok(State::new(cluster)),
        }
    }

    /// Saves `state` with its serial increased.
    pub fn save(&mut self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        self.held.write(state)
    }
}

/// Everything recorded for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Identifies this state's history; a plan made from another lineage is refused.
    pub lineage: String,
    /// Increases with every write; a plan made at another serial is stale.
    pub serial: u64,
    pub cluster: String,
    pub resources: BTreeMap<Address, ResourceState>,
}

/// One resource. Without an id, a create was started (with `client_token`) but its
/// answer was never recorded: refresh finds it by its tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub attrs: Attrs,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
    /// What it depended on when last applied: deletes run in the reverse order.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub depends_on: BTreeSet<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl State {
    pub fn new(cluster: &str) -> State {
        State {
            lineage: uuid::Uuid::new_v4().to_string(),
            serial: 0,
            cluster: cluster.to_string(),
            resources: BTreeMap::new(),
        }
    }

    /// The id of a recorded resource.
    pub fn id_of(&self, address: &Address) -> Option<&str> {
        self.resources.get(address).and_then(|r| r.id.as_deref())
    }

    /// A token unique to this creation of `address`, recorded before the create call.
    pub fn client_token(&self, address: &Address) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!(
            "{}|{}|{}|{}",
            self.lineage, self.cluster, address, self.serial
        ));
        // EC2 accepts client tokens of up to 64 ASCII characters.
        format!("pgform-{}", &hex::encode(digest)[..40])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Kind;

    #[test]
    fn client_tokens_differ_per_address_and_serial() {
        let mut s = State::new("demo");
        let a = Address::new(Kind::Instance, "primary");
        let b = Address::indexed(Kind::Instance, "replica", 0);
        let t = s.client_token(&a);
        assert!(t.len() <= 64);
        assert_ne!(t, s.client_token(&b));
        assert_eq!(t, s.client_token(&a));
        s.serial += 1;
        assert_ne!(t, s.client_token(&a));
    }
}
