//! Cluster operations: what a front end (the CLI, `pgform serve`, a service that embeds
//! the library) asks of pgform. Each takes a [`Cluster`] (a spec and its state file),
//! [`Options`] and an event sink, and returns typed results; none prints.
//!
//! - [`plan`]: both layers' plan (infrastructure diff, the task list in check mode on
//!   the hosts that exist) and the cost before/after.
//! - [`apply`]: infrastructure (state locked, the plan approved), then the hosts layer
//!   (task list, then verification that every replica streams).
//! - [`destroy`], [`status`], [`outputs`], and [`configure`] (the hosts layer alone).

mod events;
mod hosts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use events::{Event, Sink, no_events};
pub use hosts::{HostPlan, configure, forget_replaced_hosts, open, plan_hosts};

use crate::cost::{self, PlanCost, PriceError, PriceTable};
use crate::engine::{self, ApplyOptions, ApplyReport, EngineError, Interrupt};
use crate::graph::Kind;
use crate::hosts::HostsError;
use crate::plan::{self, Plan};
use crate::provider::aws::AwsProvider;
use crate::provider::docker::DockerProvider;
use crate::provider::memory::MemoryProvider;
use crate::provider::{Provider, ProviderError};
use crate::spec::{ClusterSpec, ProviderKind, SpecError};
use crate::state::{self, State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// (The cause is the error's source: `{:#}` with anyhow shows both.)
    #[error("cannot load prices (spec field `cost.prices` or --prices)")]
    Prices(#[from] PriceError),
    /// Input that does not fit this cluster: a state or a saved plan of another one, a
    /// secret that cannot be read.
    #[error("{0}")]
    Input(String),
    /// The approver said no (or could not be asked); nothing was changed.
    #[error("{0}")]
    NotApproved(String),
    /// Stopped on request (`Options::interrupt`): what ran is recorded, a rerun goes on.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A task failed on a host, or verification did.
    #[error("{0}")]
    HostsFailed(String),
}

impl OpsError {
    /// The state moved since the plan was made: plan again.
    pub fn is_stale_plan(&self) -> bool {
        matches!(self, OpsError::Engine(EngineError::StalePlan { .. }))
    }
}

/// A cluster: its spec, where relative paths in the spec start, and its state.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub spec: ClusterSpec,
    /// The folder relative paths in the spec (price file, TLS folder) start from.
    pub spec_dir: Option<PathBuf>,
    /// The state file; beside it are the hosts' known keys and the default TLS folder,
    /// which stay local when the state itself is kept elsewhere (`states`).
    pub state_path: PathBuf,
    /// Where the state and its lock are kept: the state file unless told otherwise.
    pub states: Arc<dyn state::Backend>,
}

impl Cluster {
    /// Loads a spec file (TOML, JSON or the old API's flat JSON); returns its warnings.
    pub fn load(spec_file: &Path, state_path: &Path) -> Result<(Cluster, Vec<String>), OpsError> {
        let loaded = crate::spec::load_file(spec_file)?;
        let cluster = Cluster::new(loaded.spec, spec_file.parent(), state_path.to_path_buf());
        Ok((cluster, loaded.warnings))
    }

    /// A cluster from a spec already loaded. Its TLS folder becomes an absolute path
    /// (outputs hand it to clients that run elsewhere): the one it names, relative to
    /// `spec_dir`, else `<cluster>.tls` beside the state.
    pub fn new(mut spec: ClusterSpec, spec_dir: Option<&Path>, state_path: PathBuf) -> Cluster {
        let dir = match spec.tls.dir.take() {
            Some(d) => relative_to(spec_dir, &d),
            None => crate::tls::default_dir(&state_path, &spec.name),
        };
        spec.tls.dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        Cluster {
            spec,
            spec_dir: spec_dir.map(Path::to_path_buf),
            states: Arc::new(state::FileStates::new(&state_path)),
            state_path,
        }
    }

    /// The same cluster with its state kept in `states` (a shared store).
    pub fn with_states(self, states: Arc<dyn state::Backend>) -> Cluster {
        Cluster { states, ..self }
    }

    /// The state as last saved (no lock: reading is safe, saves are atomic); a new one
    /// when there is none.
    pub fn read_state(&self) -> Result<State, OpsError> {
        let cluster = &self.spec.name;
        match self.states.read()? {
            Some(s) if &s.cluster != cluster => Err(OpsError::Input(format!(
                "{} belongs to cluster `{}`, but the spec is for `{cluster}`; pass --state to pick another one",
                self.states.place(),
                s.cluster
            ))),
            Some(s) => Ok(s),
            None => Ok(State::new(cluster)),
        }
    }

    /// The prices to bill with: `file`, else the spec's `[cost] prices`, over the
    /// embedded table.
    pub fn prices(&self, file: Option<&Path>) -> Result<PriceTable, OpsError> {
        let file = file.map(Path::to_path_buf).or_else(|| {
            self.spec
                .cost
                .prices
                .as_ref()
                .map(|p| relative_to(self.spec_dir.as_deref(), p))
        });
        Ok(PriceTable::load(&self.spec.region, file.as_deref())?)
    }
}

/// `path` with `~` expanded, joined to `base` when relative.
fn relative_to(base: Option<&Path>, path: &Path) -> PathBuf {
    let path = crate::spec::expand_home(path);
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    }
}

/// The layers an operation may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Cloud resources or containers.
    Infra,
    /// PostgreSQL on the machines: the task list over SSH, then verification.
    Hosts,
}

#[derive(Clone)]
pub struct Options {
    /// One layer only, or both.
    pub only: Option<Layer>,
    /// At most this many cloud operations at once.
    pub parallelism: usize,
    /// Trigger it to stop cleanly: running steps finish and are recorded, nothing new
    /// starts.
    pub interrupt: Interrupt,
    pub events: Sink,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: None,
            parallelism: 10,
            interrupt: Interrupt::default(),
            events: no_events(),
        }
    }
}

impl Options {
    fn runs(&self, layer: Layer) -> bool {
        self.only.is_none_or(|only| only == layer)
    }
}

/// The provider the spec names. Listed hosts need none: their graph is empty, and an
/// in-memory provider answers its (empty) refresh.
pub async fn provider(spec: &ClusterSpec) -> Result<Box<dyn Provider>, OpsError> {
    Ok(match spec.provider {
        ProviderKind::Aws => Box::new(AwsProvider::from_env(&spec.region).await),
        ProviderKind::Docker => Box::new(DockerProvider::from_env().await?),
        ProviderKind::Hosts => Box::new(MemoryProvider::new()),
    })
}

/// Both layers' plan, and what it costs.
pub struct ClusterPlan {
    /// The infrastructure's plan (empty for listed hosts); the part a confirmation
    /// approves and a saved plan holds.
    pub infra: Plan,
    /// The hosts layer's check; `None` for a destroy or `only: infra`.
    pub hosts: Option<HostPlan>,
    /// The monthly cost before and after (providers that bill).
    pub cost: Option<PlanCost>,
    pub only: Option<Layer>,
}

impl ClusterPlan {
    pub fn has_changes(&self) -> bool {
        (self.only != Some(Layer::Hosts) && self.infra.has_changes())
            || self.hosts.as_ref().is_some_and(HostPlan::has_changes)
    }

    /// Hosts that exist but could not be checked: the plan cannot say "no changes"
    /// for them.
    pub fn not_checked(&self) -> &[String] {
        self.hosts
            .as_ref()
            .map(HostPlan::not_checked)
            .unwrap_or(&[])
    }

    /// The plan document of `plan --json`: the infrastructure plan with `hosts` and
    /// `cost` beside its fields.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(&self.infra).unwrap_or_default();
        if let Some(h) = &self.hosts {
            doc["hosts"] = h.to_json();
        }
        if let Some(c) = &self.cost {
            doc["cost"] = serde_json::to_value(c).unwrap_or_default();
        }
        doc
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.only != Some(Layer::Hosts) {
            out.push_str(&plan::render(&self.infra));
            if let Some(c) = &self.cost {
                out.push_str(&cost::render_plan_cost(c));
            }
        }
        if let Some(h) = &self.hosts {
            out.push_str(&h.render());
        }
        out
    }
}

/// Plans both layers (or `options.only`): the infrastructure diff, then the task list
/// in check mode on the hosts that exist and that the plan leaves as they are.
pub async fn plan(
    cluster: &Cluster,
    destroy: bool,
    options: &Options,
) -> Result<ClusterPlan, OpsError> {
    let spec = &cluster.spec;
    let state = cluster.read_state()?;
    let provider = provider(spec).await?;
    let events = events::resource_sink(&options.events);
    let infra = if destroy {
        engine::plan_destroy(&*provider, &state, &events).await?
    } else {
        engine::plan(&*provider, spec, &state, &events).await?
    };
    // Machines the plan starts or replaces are checked after apply changes them.
    let machines: Vec<String> = infra
        .changes
        .iter()
        .filter(|c| matches!(c.address.kind, Kind::Instance | Kind::DockerContainer))
        .filter(|c| matches!(c.action, plan::Action::Update | plan::Action::Replace))
        .map(|c| c.address.to_string())
        .collect();
    let hosts = if destroy || !options.runs(Layer::Hosts) {
        None
    } else if !machines.is_empty() && options.only != Some(Layer::Hosts) {
        Some(HostPlan::AfterMachines(machines))
    } else {
        Some(plan_hosts(spec, &state, &cluster.state_path).await)
    };
    let cost = match cost::not_billed(spec) {
        Some(_) => None,
        None => Some(cost::plan_cost(
            &infra,
            &spec.region,
            &cluster.prices(None)?,
        )),
    };
    Ok(ClusterPlan {
        infra,
        hosts,
        cost,
        only: options.only,
    })
}

/// Shown the plan; `Err(why)` stops with nothing changed.
pub type Approver = Box<dyn FnOnce(&Plan) -> Result<(), String> + Send>;

/// How an apply or a destroy gets its infrastructure plan approved.
pub enum Approval {
    /// Plan now and go ahead.
    Auto,
    /// Run exactly this plan, made earlier (refused when the state moved since).
    Saved(Plan),
    /// Plan now (with the state locked) and ask: `Err(why)` stops with nothing
    /// changed. Asked with every plan, also one without changes.
    Ask(Approver),
}

/// What an apply or a destroy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// The infrastructure's changes; `None` when that layer did not run or had nothing
    /// to do.
    pub infra: Option<ApplyReport>,
    /// The hosts layer: per-host task counts, and the replication check.
    pub recap: Option<crate::tasks::Recap>,
    pub verified: Option<crate::hosts::Verified>,
}

/// Infrastructure first (unless `only: hosts`; listed hosts have none), then the hosts
/// layer (unless `only: infra`): the task list, then verification.
pub async fn apply(
    cluster: &Cluster,
    approval: Approval,
    options: &Options,
) -> Result<Applied, OpsError> {
    let before = cluster.read_state()?;
    let mut applied = Applied::default();
    if options.runs(Layer::Infra) && cluster.spec.provider != ProviderKind::Hosts {
        applied.infra = infra(cluster, false, approval, options).await?;
    }
    if options.runs(Layer::Hosts) {
        if options.interrupt.is_triggered() {
            return Err(OpsError::Interrupted(
                "the infrastructure is done, the hosts layer did not start; run apply again to finish".into(),
            ));
        }
        let state = cluster.read_state()?;
        forget_replaced_hosts(&cluster.spec, &before, &state, &cluster.state_path).await;
        let (recap, verified) = configure(cluster, false, options).await?;
        applied.recap = Some(recap);
        applied.verified = verified;
    }
    Ok(applied)
}

/// Destroys what the state records (the hosts layer has nothing to undo).
pub async fn destroy(
    cluster: &Cluster,
    approval: Approval,
    options: &Options,
) -> Result<Applied, OpsError> {
    Ok(Applied {
        infra: infra(cluster, true, approval, options).await?,
        ..Applied::default()
    })
}

/// The infrastructure layer, with the state locked from plan to the last save.
async fn infra(
    cluster: &Cluster,
    destroy: bool,
    approval: Approval,
    options: &Options,
) -> Result<Option<ApplyReport>, OpsError> {
    let spec = &cluster.spec;
    let mut store = cluster
        .states
        .lock(if destroy { "destroy" } else { "apply" })?;
    let state = store.load_or_new(&spec.name)?;
    let provider = provider(spec).await?;
    let events = events::resource_sink(&options.events);
    let plan = match approval {
        Approval::Saved(plan) => check_saved(plan, spec)?,
        Approval::Auto | Approval::Ask(_) => {
            let plan = if destroy {
                engine::plan_destroy(&*provider, &state, &events).await?
            } else {
                engine::plan(&*provider, spec, &state, &events).await?
            };
            if let Approval::Ask(ask) = approval {
                ask(&plan).map_err(OpsError::NotApproved)?;
            }
            if !plan.has_changes() {
                return Ok(None);
            }
            plan
        }
    };
    hosts::hand_over_before(cluster, &state, &plan, options).await?;
    let apply_options = ApplyOptions {
        parallelism: options.parallelism,
        events,
        interrupt: options.interrupt.clone(),
    };
    let (state, report) =
        engine::apply(&*provider, &plan, &mut store, state, &apply_options).await?;
    let outputs =
        (!plan.destroy && !state.resources.is_empty()).then(|| engine::outputs(&state, Some(spec)));
    (options.events)(&Event::InfraDone {
        destroy: plan.destroy,
        report: report.clone(),
        outputs,
    });
    Ok(Some(report))
}

/// A saved plan must be of this pgform's format and for this cluster.
fn check_saved(plan: Plan, spec: &ClusterSpec) -> Result<Plan, OpsError> {
    if plan.format_version != plan::PLAN_FORMAT_VERSION {
        return Err(OpsError::Input(format!(
            "the saved plan has format {}, this pgform reads {}",
            plan.format_version,
            plan::PLAN_FORMAT_VERSION
        )));
    }
    if plan.cluster != spec.name {
        return Err(OpsError::Input(format!(
            "the saved plan is for cluster `{}`, but the spec is for `{}`",
            plan.cluster, spec.name
        )));
    }
    Ok(plan)
}

/// The outputs (addresses, connection URLs, ...) from the state; listed hosts, which
/// have no machines to record, take theirs from the spec.
pub fn outputs(cluster: &Cluster) -> Result<BTreeMap<String, serde_json::Value>, OpsError> {
    outputs_at(Some(&cluster.spec), &*cluster.states)
}

/// [`outputs`] where the spec may be missing (the state alone still has them).
pub fn outputs_at(
    spec: Option<&ClusterSpec>,
    states: &dyn state::Backend,
) -> Result<BTreeMap<String, serde_json::Value>, OpsError> {
    let state = match (states.read()?, spec) {
        (Some(state), _) => state,
        (None, Some(spec)) if spec.provider == ProviderKind::Hosts => State::new(&spec.name),
        (None, _) => {
            return Err(OpsError::Input(format!(
                "{} does not exist yet: run `pgform apply` first",
                states.place()
            )));
        }
    };
    Ok(engine::outputs(&state, spec))
}

/// Each node as the cluster sees it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Status {
    /// Plain streaming replication: each node's role, WAL position, replication state,
    /// lag and TLS.
    Plain(Vec<crate::hosts::NodeStatus>),
    /// Patroni's view: the leader, each member, and the DCS's health, from the nodes
    /// that answer; the nodes that do not, with why.
    Patroni {
        leader: Option<String>,
        members: Vec<crate::hosts::ha::Member>,
        etcd: Vec<String>,
        unreachable: Vec<Unreachable>,
    },
}

/// A node that `status` could not reach over SSH.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unreachable {
    pub name: String,
    pub address: String,
    pub error: String,
}

impl Status {
    /// What is wrong, when something is (for an exit code or a health check).
    pub fn problem(&self) -> Option<&'static str> {
        match self {
            Status::Plain(rows) if rows.iter().any(|r| r.role == "down") => {
                Some("some nodes do not answer")
            }
            Status::Patroni { leader: None, .. } => Some("the cluster has no running leader"),
            Status::Patroni { unreachable, .. } if !unreachable.is_empty() => {
                Some("some nodes do not answer")
            }
            _ => None,
        }
    }
}

/// Asks every node how it is (over SSH); under Patroni, Patroni's view. A node that
/// does not answer is shown as such: status is most wanted when something is down.
pub async fn status(cluster: &Cluster) -> Result<Status, OpsError> {
    let spec = &cluster.spec;
    let state = cluster.read_state()?;
    let all = crate::hosts::inventory(spec, &state)?;
    let order: Vec<String> = all.iter().map(|n| n.name.clone()).collect();
    let known = crate::hosts::default_known_hosts(&cluster.state_path, &spec.name);
    let (nodes, conns, down) = hosts::reachable(spec, all, &known).await;
    // Nothing to show: the reasons are the answer.
    if nodes.is_empty() {
        let errors = down.into_iter().map(|(_, e)| e).collect();
        return Err(HostsError::Unreachable(errors).into());
    }
    let status = if spec.ha.patroni() {
        let view = crate::hosts::ha::cluster(&nodes, &conns).await;
        let etcd = crate::hosts::ha::etcd_health(spec, &nodes, &conns).await;
        view.map(|view| Status::Patroni {
            leader: view.leader().map(str::to_string),
            members: view.members,
            etcd,
            unreachable: down
                .iter()
                .map(|(n, error)| Unreachable {
                    name: n.name.clone(),
                    address: n.connect_address.clone(),
                    error: error.to_string(),
                })
                .collect(),
        })
    } else {
        let mut rows = crate::hosts::status(spec, &nodes, &conns).await;
        rows.extend(
            down.iter()
                .map(|(n, e)| crate::hosts::NodeStatus::down(spec, n, Some(e.to_string()))),
        );
        rows.sort_by_key(|r| order.iter().position(|n| *n == r.name));
        Some(Status::Plain(rows))
    };
    for c in conns {
        c.close().await;
    }
    status.ok_or_else(|| {
        let mut why = "Patroni's REST API does not answer on any node".to_string();
        for (n, e) in &down {
            why.push_str(&format!("\n  {} ({}): {e}", n.name, n.connect_address));
        }
        OpsError::HostsFailed(why)
    })
}
