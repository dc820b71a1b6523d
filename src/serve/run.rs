//! A run and its state machine:
//!
//! ```text
//! queued -> planning -> planned -(confirm)-> queued -> applying -> applied
//!                    \-> no_changes        (discard) -> discarded
//! any live state -(cancel)-> canceled; a failure -> errored;
//! applying when the service stopped -> interrupted; errored|interrupted|canceled -(retry)-> a new run
//! ```
//! Only `queued`, `planning` and `applying` hold the cluster (one per cluster at a time);
//! `planned` waits for confirmation and holds nothing.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::exec::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// Plan the changes; confirm applies them.
    Plan,
    /// Plan and apply without a confirmation (needs the apply role).
    Apply,
    /// Plan the destruction of everything; confirm carries it out.
    Destroy,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Plan => "plan",
            RunKind::Apply => "apply",
            RunKind::Destroy => "destroy",
        }
    }
    pub fn parse(s: &str) -> Option<RunKind> {
        [RunKind::Plan, RunKind::Apply, RunKind::Destroy]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Planning,
    /// Waiting for confirmation (holds no lock).
    Planned,
    NoChanges,
    Applying,
    Applied,
    Discarded,
    Canceled,
    Errored,
    /// The service stopped (or died) while it applied; `retry` plans again.
    Interrupted,
}

pub const ALL_STATES: [RunState; 10] = [
    RunState::Queued,
    RunState::Planning,
    RunState::Planned,
    RunState::NoChanges,
    RunState::Applying,
    RunState::Applied,
    RunState::Discarded,
    RunState::Canceled,
    RunState::Errored,
    RunState::Interrupted,
];

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Planning => "planning",
            RunState::Planned => "planned",
            RunState::NoChanges => "no_changes",
            RunState::Applying => "applying",
            RunState::Applied => "applied",
            RunState::Discarded => "discarded",
            RunState::Canceled => "canceled",
            RunState::Errored => "errored",
            RunState::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<RunState> {
        ALL_STATES.into_iter().find(|k| k.as_str() == s)
    }
    /// Nothing more happens to a run in a final state (a retry is a new run).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::NoChanges
                | RunState::Applied
                | RunState::Discarded
                | RunState::Canceled
                | RunState::Errored
                | RunState::Interrupted
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Confirm,
    Discard,
    Cancel,
    Retry,
}

#[derive(Debug, Clone)]
pub struct Run {
    /// The order runs were made in: the list's cursor.
    pub seq: i64,
    pub id: String,
    pub cluster: String,
    pub kind: RunKind,
    pub only: Option<Layer>,
    pub state: RunState,
    /// Confirmed (or an `apply` run): the worker applies once it has planned.
    pub approved: bool,
    pub cancel_requested: bool,
    /// The plan as JSON (`ClusterPlan::to_json`), and its hash (hex SHA-256).
    pub plan: Option<String>,
    pub plan_hash: Option<String>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub done: u64,
    pub total: u64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub retry_of: Option<String>,
}

impl Run {
    pub fn new(cluster: &str, kind: RunKind, only: Option<Layer>) -> Run {
        Run {
            seq: 0,
            id: format!("run-{}", uuid::Uuid::new_v4().simple()),
            cluster: cluster.into(),
            kind,
            only,
            state: RunState::Queued,
            approved: kind == RunKind::Apply,
            cancel_requested: false,
            plan: None,
            plan_hash: None,
            error: None,
            result: None,
            done: 0,
            total: 0,
            created_at: super::store::now(),
            started_at: None,
            finished_at: None,
            retry_of: None,
        }
    }

    /// What a caller may do with the run now.
    pub fn allowed_actions(&self) -> Vec<Action> {
        match self.state {
            RunState::Planned => vec![Action::Confirm, Action::Discard, Action::Cancel],
            RunState::Queued | RunState::Planning | RunState::Applying => vec![Action::Cancel],
            RunState::Errored | RunState::Interrupted | RunState::Canceled => vec![Action::Retry],
            RunState::NoChanges | RunState::Applied | RunState::Discarded => vec![],
        }
    }

    /// Holds the cluster: only one such run per cluster executes at a time.
    pub fn is_active(&self) -> bool {
        matches!(self.state, RunState::Planning | RunState::Applying)
    }

    pub fn percent(&self) -> u8 {
        match (self.state, self.total) {
            (RunState::Applied | RunState::NoChanges, _) => 100,
            (_, 0) => 0,
            (_, t) => (self.done.min(t) * 100 / t) as u8,
        }
    }

    pub fn finish(&mut self, state: RunState) {
        self.state = state;
        self.finished_at = Some(super::store::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ALL_STATES {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(RunState::parse("done"), None);
        assert_eq!(RunKind::parse("destroy"), Some(RunKind::Destroy));
    }

    #[test]
    fn a_planned_run_waits_and_may_be_confirmed() {
        let mut r = Run::new("c", RunKind::Plan, None);
        assert!(!r.approved);
        r.state = RunState::Planned;
        assert!(!r.is_active() && !r.state.is_final());
        assert!(r.allowed_actions().contains(&Action::Confirm));
        r.finish(RunState::Interrupted);
        assert_eq!(r.allowed_actions(), vec![Action::Retry]);
        assert!(Run::new("c", RunKind::Apply, None).approved);
    }

    #[test]
    fn percent_is_bounded() {
        let mut r = Run::new("c", RunKind::Plan, None);
        assert_eq!(r.percent(), 0);
        r.total = 4;
        r.done = 1;
        assert_eq!(r.percent(), 25);
        r.done = 9;
        assert_eq!(r.percent(), 100);
    }
}
