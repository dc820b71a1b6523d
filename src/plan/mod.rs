//! Plans: the pure diff of the desired graph against the refreshed state, drift found by
//! refresh, and their rendering. A plan is plain data: apply walks only what it holds.

mod diff;
mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{Address, Resource, Value};
use crate::state::ResourceState;

pub use diff::{Observation, delete_change, diff, merge_observations};
pub use render::{render, render_drift};

pub const PLAN_FORMAT_VERSION: u32 = 1;

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    /// Delete, then create anew (an attribute that cannot change in place changed).
    Replace,
    Delete,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// One attribute's before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrChange {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forces_replacement: bool,
}

/// One resource's change, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    pub reason: String,
    /// The id it has now (update, replace, delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Attributes that differ (all of them for create and delete).
    pub attrs: Vec<AttrChange>,
    /// What apply makes it into (create, update, replace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<Resource>,
}

/// Something changed outside pgform since the state was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub address: Address,
    /// Empty when the resource is gone.
    pub attrs: Vec<AttrChange>,
    pub deleted: bool,
}

/// A saved or shown plan. `lineage` and `serial` tie it to the state it was made from:
/// apply refuses it once that state has moved on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub cluster: String,
    pub lineage: String,
    pub serial: u64,
    pub destroy: bool,
    pub drift: Vec<Drift>,
    pub changes: Vec<Change>,
    /// The refreshed state the plan was made from; apply starts from it, so what
    /// refresh learned (adopted or vanished resources) is recorded too.
    pub prior: BTreeMap<Address, ResourceState>,
}

/// Counts of a plan's changes, as in "2 to add, 1 to change, 0 to destroy".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1
                }
                Action::Delete => s.destroy += 1,
            }
        }
        s
    }

    pub fn change(&self, address: &Address) -> Option<&Change> {
        self.changes.iter().find(|c| &c.address == address)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} to add, {} to change, {} to destroy",
            self.add, self.change, self.destroy
        )
    }
}
