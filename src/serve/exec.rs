//! The cluster operations the worker calls: one small function per operation, so the
//! rest of the service does not depend on how they are carried out.
//!
//! Until the library's cluster operations (`pgform::ops`) are merged, these run the
//! infrastructure layer through [`crate::engine`] directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::{self, ApplyOptions, Interrupt};
use crate::plan::Plan;
use crate::provider::Provider;
use crate::spec::{self, ClusterSpec, ProviderKind};
use crate::state::{self, State, StateStore};

/// One layer of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Infra,
    Hosts,
}

/// Where each progress event goes (as the JSON document that is stored and streamed).
pub type Sink = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// An operation's failure: the user-facing message, and whether it failed because the
/// state moved since the plan (a confirm then answers 409).
#[derive(Debug)]
pub struct ExecError {
    pub message: String,
    pub stale: bool,
}

impl<E: std::fmt::Display> From<E> for ExecError {
    fn from(e: E) -> ExecError {
        ExecError {
            message: e.to_string(),
            stale: false,
        }
    }
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub state_path: PathBuf,
}

/// Loads the spec file (paths in it relative to it); returns the warnings too.
pub fn load(spec_file: &Path, state_path: &Path) -> Result<(Cluster, Vec<String>), ExecError> {
    let loaded = spec::load_file(spec_file)?;
    let mut spec = loaded.spec;
    let dir = match spec.tls.dir.take() {
        Some(d) => {
            let d = spec::expand_home(&d);
            match spec_file.parent() {
                Some(base) if d.is_relative() => base.join(d),
                _ => d,
            }
        }
        None => crate::tls::default_dir(state_path, &spec.name),
    };
    spec.tls.dir = Some(std::path::absolute(&dir).unwrap_or(dir));
    Ok((
        Cluster {
            spec,
            state_path: state_path.to_path_buf(),
        },
        loaded.warnings,
    ))
}

/// A plan: its JSON document, the infrastructure plan to apply on confirmation, whether
/// anything changes, and how many steps applying it takes (for progress).
pub struct Planned {
    pub json: serde_json::Value,
    pub infra: Option<Plan>,
    pub has_changes: bool,
    pub steps: u64,
}

pub fn read_state(c: &Cluster) -> Result<State, ExecError> {
    match state::read(&c.state_path)? {
        Some(s) if s.cluster != c.spec.name => Err(ExecError::from(format!(
            "{} belongs to cluster `{}`, not `{}`",
            c.state_path.display(),
            s.cluster,
            c.spec.name
        ))),
        Some(s) => Ok(s),
        None => Ok(State::new(&c.spec.name)),
    }
}

async fn provider(spec: &ClusterSpec) -> Result<Box<dyn Provider>, ExecError> {
    Ok(match spec.provider {
        ProviderKind::Aws => {
            Box::new(crate::provider::aws::AwsProvider::from_env(&spec.region).await)
        }
        ProviderKind::Docker => {
            Box::new(crate::provider::docker::DockerProvider::from_env().await?)
        }
        ProviderKind::Hosts => Box::new(crate::provider::memory::MemoryProvider::new()),
    })
}

fn engine_sink(sink: &Sink) -> engine::EventSink {
    let sink = sink.clone();
    Arc::new(move |e: &engine::Event| {
        if let Ok(v) = serde_json::to_value(e) {
            sink(v)
        }
    })
}

pub async fn plan(
    c: &Cluster,
    destroy: bool,
    only: Option<Layer>,
    sink: &Sink,
) -> Result<Planned, ExecError> {
    if only == Some(Layer::Hosts) {
        return Err(ExecError::from(
            "the hosts layer is not available in the service yet; plan with `only: infra`",
        ));
    }
    let state = read_state(c)?;
    let provider = provider(&c.spec).await?;
    let events = engine_sink(sink);
    let plan = if destroy {
        engine::plan_destroy(&*provider, &state, &events).await?
    } else {
        engine::plan(&*provider, &c.spec, &state, &events).await?
    };
    // A replacement is two steps: the delete and the create.
    let steps = plan
        .changes
        .iter()
        .map(|ch| 1 + (ch.action == crate::plan::Action::Replace) as u64)
        .sum();
    Ok(Planned {
        json: serde_json::json!({ "infra": plan }),
        has_changes: plan.has_changes(),
        infra: Some(plan),
        steps,
    })
}

/// Applies (or destroys with) the saved infrastructure plan; the engine refuses a plan
/// whose state moved.
pub async fn apply(
    c: &Cluster,
    saved: Plan,
    _only: Option<Layer>,
    interrupt: Interrupt,
    sink: &Sink,
) -> Result<serde_json::Value, ExecError> {
    let verb = if saved.destroy { "destroy" } else { "apply" };
    let mut store = StateStore::lock(&c.state_path, verb)?;
    let state = store.load_or_new(&c.spec.name)?;
    let provider = provider(&c.spec).await?;
    let options = ApplyOptions {
        parallelism: 10,
        events: engine_sink(sink),
        interrupt,
    };
    match engine::apply(&*provider, &saved, &mut store, state, &options).await {
        Ok((state, report)) => Ok(serde_json::json!({
            "report": report,
            "outputs": engine::outputs(&state, Some(&c.spec)),
        })),
        Err(e @ engine::EngineError::StalePlan { .. }) => Err(ExecError {
            message: e.to_string(),
            stale: true,
        }),
        Err(e) => Err(e.into()),
    }
}

pub fn outputs(c: &Cluster) -> Result<BTreeMap<String, serde_json::Value>, ExecError> {
    let state = read_state(c)?;
    Ok(engine::outputs(&state, Some(&c.spec)))
}

/// Each node's role and replication state.
pub async fn status(c: &Cluster) -> Result<serde_json::Value, ExecError> {
    let state = read_state(c)?;
    let nodes: Vec<String> = state.resources.keys().map(|a| a.to_string()).collect();
    Ok(serde_json::json!({ "resources": nodes }))
}

/// Whether the plan's state has moved: `Some(reason)` when it has.
pub fn plan_is_stale(c: &Cluster, plan: &Plan) -> Result<Option<String>, ExecError> {
    let state = read_state(c)?;
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
