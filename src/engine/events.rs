//! Progress events. The engine never prints: it sends events, and a reporter (the CLI's,
//! or an embedding service's) decides what to show.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::graph::Address;

/// What an apply is doing to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    /// "Creating", "Modifying", "Destroying".
    pub fn progressive(self) -> &'static str {
        match self {
            Op::Create => "Creating",
            Op::Update => "Modifying",
            Op::Delete => "Destroying",
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            Op::Create => "Creation",
            Op::Update => "Modifications",
            Op::Delete => "Destruction",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Refresh asked the provider about this many recorded resources.
    Refreshing {
        resources: usize,
    },
    Started {
        address: Address,
        op: Op,
    },
    /// Sent every few seconds while a long operation runs.
    StillRunning {
        address: Address,
        op: Op,
        elapsed_secs: u64,
    },
    Finished {
        address: Address,
        op: Op,
        elapsed_secs: u64,
        id: Option<String>,
    },
    Failed {
        address: Address,
        op: Op,
        error: String,
    },
    /// Not attempted because something it depends on failed.
    Skipped {
        address: Address,
        op: Op,
    },
}

/// Where events go. Cheap to clone; must not block for long.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A sink that drops every event.
pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

/// How often a long operation reports that it is still running.
pub const STILL_RUNNING_EVERY: Duration = Duration::from_secs(10);
