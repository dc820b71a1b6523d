//! The cluster operations the worker calls, over the library's [`crate::ops`]: one small
//! function per operation, so the rest of the service depends only on these.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::engine::Interrupt;
use crate::ops::{self, Approval};
use crate::plan::Plan;

pub use crate::ops::{Cluster, Layer};

/// Where each progress event goes (as the JSON document that is stored and streamed).
pub type Sink = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// An operation's failure: the user-facing message, and whether it failed because the
/// state moved since the plan (a confirm then answers 409).
#[derive(Debug)]
pub struct ExecError {
    pub message: String,
    pub stale: bool,
}

impl From<ops::OpsError> for ExecError {
    fn from(e: ops::OpsError) -> ExecError {
        // The whole chain of causes, each once (some messages already hold theirs).
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        ExecError {
            stale: e.is_stale_plan(),
            message,
        }
    }
}

impl From<String> for ExecError {
    fn from(message: String) -> ExecError {
        ExecError {
            message,
            stale: false,
        }
    }
}

/// Loads the spec file (paths in it relative to it); returns the warnings too.
pub fn load(spec_file: &Path, state_path: &Path) -> Result<(Cluster, Vec<String>), ExecError> {
    Ok(Cluster::load(spec_file, state_path)?)
}

/// A plan: its JSON document (as `pgform plan --json`), the infrastructure plan a
/// confirmation applies, whether anything changes, and how many steps applying it takes
/// (each resource change, plus the hosts layer as one).
pub struct Planned {
    pub json: serde_json::Value,
    pub has_changes: bool,
    pub steps: u64,
}

fn options(only: Option<Layer>, interrupt: Interrupt, sink: &Sink) -> ops::Options {
    let sink = sink.clone();
    ops::Options {
        only,
        interrupt,
        events: Arc::new(move |e: &ops::Event| {
            if let Ok(v) = serde_json::to_value(e) {
                sink(v)
            }
        }),
        ..ops::Options::default()
    }
}

pub async fn plan(
    c: &Cluster,
    destroy: bool,
    only: Option<Layer>,
    sink: &Sink,
) -> Result<Planned, ExecError> {
    let plan = ops::plan(c, destroy, &options(only, Interrupt::default(), sink)).await?;
    // A plan that could not look at some hosts cannot say "no changes" for them.
    if !plan.not_checked().is_empty() {
        return Err(ExecError::from(format!(
            "the plan is incomplete: could not check the host(s) {}; make them reachable \
             over SSH (or run with `only: infra`)",
            plan.not_checked().join(", ")
        )));
    }
    let infra_steps: u64 = if only == Some(Layer::Hosts) {
        0
    } else {
        plan.infra
            .changes
            .iter()
            .map(|ch| 1 + (ch.action == crate::plan::Action::Replace) as u64)
            .sum()
    };
    let hosts_step = (!destroy && only != Some(Layer::Infra)) as u64;
    Ok(Planned {
        json: plan.to_json(),
        has_changes: plan.has_changes(),
        steps: infra_steps + hosts_step,
    })
}

/// Applies the saved infrastructure plan (the engine refuses it when the state moved),
/// then the hosts layer; or destroys with it.
pub async fn apply(
    c: &Cluster,
    saved: Plan,
    only: Option<Layer>,
    interrupt: Interrupt,
    sink: &Sink,
) -> Result<serde_json::Value, ExecError> {
    let o = options(only, interrupt, sink);
    let applied = if saved.destroy {
        ops::destroy(c, Approval::Saved(saved), &o).await?
    } else {
        ops::apply(c, Approval::Saved(saved), &o).await?
    };
    let outputs = ops::outputs(c).unwrap_or_default();
    Ok(serde_json::json!({ "applied": applied, "outputs": outputs }))
}

pub fn outputs(c: &Cluster) -> Result<BTreeMap<String, serde_json::Value>, ExecError> {
    Ok(ops::outputs(c)?)
}

/// Each node's role and replication state (asks the hosts).
pub async fn status(c: &Cluster) -> Result<serde_json::Value, ExecError> {
    let status = ops::status(c).await?;
    Ok(serde_json::to_value(status).unwrap_or_default())
}

/// Whether the plan's state has moved: `Some(reason)` when it has.
pub fn plan_is_stale(c: &Cluster, plan: &Plan) -> Result<Option<String>, ExecError> {
    let state = c.read_state()?;
    let fresh = state.serial == 0 && state.resources.is_empty();
    let same = state.lineage == plan.lineage || (fresh && plan.serial == 0);
    Ok((!same || state.serial != plan.serial).then(|| {
        format!(
            "the state moved since the plan: the plan was made from serial {} (lineage {}), \
             the state is now at serial {} (lineage {}); retry the run to plan again",
            plan.serial, plan.lineage, state.serial, state.lineage
        )
    }))
}

/// The infrastructure plan inside a stored plan document (`hosts` and `cost` sit beside
/// its fields).
pub fn infra_plan(doc: &str) -> Option<Plan> {
    let mut v: serde_json::Value = serde_json::from_str(doc).ok()?;
    let map = v.as_object_mut()?;
    map.remove("hosts");
    map.remove("cost");
    serde_json::from_value(v).ok()
}
