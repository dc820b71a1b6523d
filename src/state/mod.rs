//! The state: what pgform made, as last seen. `State` is the in-memory model; `file`
//! holds the on-disk format (versioned, sorted, written atomically) and the lock.

mod file;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::{Address, Attrs, Value};

pub use file::{
    LockInfo, StateError, StateStore, backup_path, force_unlock, hostname, lock_path, read, to_json,
};

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
