//! Apply: execute exactly the changes of a plan, in dependency order, in parallel where
//! the graph allows, recording every result in the state the moment it is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use petgraph::graph::{DiGraph, NodeIndex};

use super::EngineError;
use super::events::{Event, EventSink, Op, STILL_RUNNING_EVERY};
use crate::graph::walk::walk_until;
use crate::graph::{Address, Attrs, Resource};
use crate::plan::{Action, Change, Plan};
use crate::provider::{Observed, Provider};
use crate::state::{ResourceState, State, StateStore};

pub struct ApplyOptions {
    /// At most this many provider operations at once.
    pub parallelism: usize,
    pub events: EventSink,
    /// Once triggered (e.g. on Ctrl-C), no new operation starts; running ones finish
    /// and are recorded, so a rerun converges.
    pub interrupt: Interrupt,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            parallelism: 10,
            events: super::no_events(),
            interrupt: Interrupt::default(),
        }
    }
}

/// A request to stop an apply cleanly, shared with whoever may trigger it.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub elapsed_secs: u64,
}

/// One step of the walk: a replace is a delete followed by a create.
struct Step<'p> {
    op: Op,
    change: &'p Change,
}

/// The state and its file, shared by the concurrent steps; every change is saved at once.
struct Recorder<'s> {
    inner: Mutex<(State, &'s mut StateStore)>,
}

impl Recorder<'_> {
    fn record(&self, f: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (state, store) = &mut *guard;
        f(state);
        store
            .save(state)
            .map_err(|e| format!("could not save the state: {e}"))
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard.0)
    }
}

/// Applies `plan` to the state held by `store`. The state must be the one the plan was
/// made from (same lineage and serial), else the plan is stale and nothing is done.
/// On failure the state still holds everything that was made.
pub async fn apply(
    provider: &dyn Provider,
    plan: &Plan,
    store: &mut StateStore,
    state: State,
    options: &ApplyOptions,
) -> Result<(State, ApplyReport), EngineError> {
    let fresh_state = state.serial == 0 && state.resources.is_empty();
    let same_history = state.lineage == plan.lineage || (fresh_state && plan.serial == 0);
    if !same_history || state.serial != plan.serial {
        return Err(EngineError::StalePlan {
            plan_lineage: plan.lineage.clone(),
            plan_serial: plan.serial,
            state_lineage: state.lineage,
            state_serial: state.serial,
        });
    }
    let started = Instant::now();
    let mut state = state;
    state.lineage = plan.lineage.clone();
    state.resources = plan.prior.clone();
    // Records of creates with an unknown outcome are kept only while a create of that
    // address is planned (which reuses their client token).
    state.resources.retain(|address, r| {
        r.id.is_some()
            || plan
                .changes
                .iter()
                .any(|c| &c.address == address && c.action == Action::Create)
    });

    let dag = steps(plan);
    let recorder = Recorder {
        inner: Mutex::new((state, store)),
    };
    // Persist what refresh learned before changing anything.
    recorder.record(|_| {}).map_err(EngineError::Input)?;

    let events = &options.events;
    let interrupt = &options.interrupt;
    let report = walk_until(
        &dag,
        options.parallelism,
        || interrupt.is_triggered(),
        |_, step| run_step(provider, &recorder, step, events),
    )
    .await;

    let (state, _) = recorder
        .inner
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    for node in &report.skipped {
        let step = &dag[*node];
        events(&Event::Skipped {
            address: step.change.address.clone(),
            op: step.op,
        });
    }
    if !report.not_started.is_empty() && report.failed.is_empty() {
        return Err(EngineError::Interrupted {
            completed: report.succeeded.len(),
            not_started: report
                .not_started
                .iter()
                .map(|n| dag[*n].change.address.clone())
                .collect(),
        });
    }
    if !report.failed.is_empty() {
        return Err(EngineError::ApplyFailed {
            failures: report
                .failed
                .into_iter()
                .map(|(n, e)| (dag[n].change.address.clone(), e))
                .collect(),
            skipped: report
                .skipped
                .iter()
                .map(|n| dag[*n].change.address.clone())
                .collect(),
        });
    }
    let mut summary = ApplyReport {
        elapsed_secs: started.elapsed().as_secs(),
        ..Default::default()
    };
    for n in report.succeeded {
        match dag[n].op {
            Op::Create => summary.created += 1,
            Op::Update => summary.updated += 1,
            Op::Delete => summary.deleted += 1,
        }
    }
    Ok((state, summary))
}

/// The steps of a plan and their order: creates and updates after what they depend on;
/// deletes before what they depended on; a replacement's delete before its create.
fn steps(plan: &Plan) -> DiGraph<Step<'_>, ()> {
    let mut dag = DiGraph::new();
    let mut make: HashMap<&Address, NodeIndex> = HashMap::new();
    let mut remove: HashMap<&Address, NodeIndex> = HashMap::new();
    for change in &plan.changes {
        let a = &change.address;
        match change.action {
            Action::Create => {
                make.insert(
                    a,
                    dag.add_node(Step {
                        op: Op::Create,
                        change,
                    }),
                );
            }
            Action::Update => {
                make.insert(
                    a,
                    dag.add_node(Step {
                        op: Op::Update,
                        change,
                    }),
                );
            }
            Action::Delete => {
                remove.insert(
                    a,
                    dag.add_node(Step {
                        op: Op::Delete,
                        change,
                    }),
                );
            }
            Action::Replace => {
                let d = dag.add_node(Step {
                    op: Op::Delete,
                    change,
                });
                let c = dag.add_node(Step {
                    op: Op::Create,
                    change,
                });
                dag.add_edge(d, c, ());
                remove.insert(a, d);
                make.insert(a, c);
            }
        }
    }
    for change in &plan.changes {
        let a = &change.address;
        if let (Some(node), Some(desired)) = (make.get(a), &change.desired) {
            for dep in &desired.depends_on {
                if let Some(d) = make.get(dep) {
                    dag.add_edge(*d, *node, ());
                }
            }
        }
        if let Some(node) = remove.get(a) {
            let recorded = plan
                .prior
                .get(a)
                .map(|r| r.depends_on.iter())
                .into_iter()
                .flatten();
            let wanted = change.desired.iter().flat_map(|d| d.depends_on.iter());
            for dep in recorded.chain(wanted) {
                if let Some(d) = remove.get(dep) {
                    dag.update_edge(*node, *d, ());
                }
            }
        }
    }
    // Deleting what nothing recorded depends on (e.g. a state rebuilt from tags) still
    // goes dependants-first, by kind.
    let deletes: Vec<(&Address, NodeIndex)> = remove.iter().map(|(a, n)| (*a, *n)).collect();
    for (a, n) in &deletes {
        if plan.prior.get(*a).is_none_or(|r| r.depends_on.is_empty()) {
            for (b, m) in &deletes {
                if super::kind_rank(a.kind) < super::kind_rank(b.kind) {
                    dag.update_edge(*m, *n, ());
                }
            }
        }
    }
    dag
}

async fn run_step(
    provider: &dyn Provider,
    recorder: &Recorder<'_>,
    step: &Step<'_>,
    events: &EventSink,
) -> Result<(), String> {
    let address = &step.change.address;
    let op = step.op;
    events(&Event::Started {
        address: address.clone(),
        op,
    });
    let started = Instant::now();
    let work = async {
        match op {
            Op::Create => create(provider, recorder, step.change).await,
            Op::Update => update(provider, recorder, step.change).await,
            Op::Delete => delete(provider, recorder, step.change).await,
        }
    };
    let result = with_ticker(work, |elapsed| {
        events(&Event::StillRunning {
            address: address.clone(),
            op,
            elapsed_secs: elapsed.as_secs(),
        })
    })
    .await;
    match result {
        Ok(id) => {
            events(&Event::Finished {
                address: address.clone(),
                op,
                elapsed_secs: started.elapsed().as_secs(),
                id,
            });
            Ok(())
        }
        Err(error) => {
            events(&Event::Failed {
                address: address.clone(),
                op,
                error: error.clone(),
            });
            Err(error)
        }
    }
}

/// Runs `work`, calling `tick` every STILL_RUNNING_EVERY until it finishes.
async fn with_ticker<T>(work: impl std::future::Future<Output = T>, tick: impl Fn(Duration)) -> T {
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + STILL_RUNNING_EVERY,
        STILL_RUNNING_EVERY,
    );
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => tick(started.elapsed()),
        }
    }
}

/// The desired attributes with references replaced by the ids now recorded.
fn resolve(recorder: &Recorder<'_>, desired: &Resource) -> Result<Attrs, String> {
    let attrs: Attrs = recorder.read(|s| {
        desired
            .attrs
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.resolve(&|a: &Address| s.id_of(a).map(str::to_string)),
                )
            })
            .collect()
    });
    if let Some((k, _)) = attrs.iter().find(|(_, v)| !v.is_known()) {
        return Err(format!("attribute {k} is still unknown when it is needed"));
    }
    Ok(attrs)
}

fn record_observed(state: &mut State, change: &Change, seen: Observed) {
    let entry = state
        .resources
        .entry(change.address.clone())
        .or_insert_with(|| ResourceState {
            id: None,
            attrs: Attrs::new(),
            outputs: Default::default(),
            depends_on: Default::default(),
            client_token: None,
        });
    entry.id = Some(seen.id);
    entry.attrs.extend(seen.attrs);
    entry.outputs = seen.outputs;
    entry.client_token = None;
    if let Some(d) = &change.desired {
        entry.depends_on = d.depends_on.clone();
    }
}

/// The change's desired resource and its attributes with references resolved to ids.
fn desired_attrs<'c>(
    recorder: &Recorder<'_>,
    change: &'c Change,
) -> Result<(&'c Resource, Attrs), String> {
    let desired = change
        .desired
        .as_ref()
        .ok_or("the plan has no desired attributes")?;
    Ok((desired, resolve(recorder, desired)?))
}

async fn create(
    provider: &dyn Provider,
    recorder: &Recorder<'_>,
    change: &Change,
) -> Result<Option<String>, String> {
    let (desired, attrs) = desired_attrs(recorder, change)?;
    // Record the intent (with its client token) before the call, so that an interrupted
    // run finds what this call makes by its tags instead of making it again.
    let mut token = String::new();
    recorder.record(|s| {
        // A retried create (the earlier outcome unknown) reuses its token.
        token = s
            .resources
            .get(&change.address)
            .filter(|r| r.id.is_none())
            .and_then(|r| r.client_token.clone())
            .unwrap_or_else(|| s.client_token(&change.address));
        s.resources.insert(
            change.address.clone(),
            ResourceState {
                id: None,
                attrs: attrs.clone(),
                outputs: Default::default(),
                depends_on: desired.depends_on.clone(),
                client_token: Some(token.clone()),
            },
        );
    })?;
    let save_error: Mutex<Option<String>> = Mutex::new(None);
    let on_id = |id: &str| {
        let id = id.to_string();
        if let Err(e) = recorder.record(|s| {
            if let Some(r) = s.resources.get_mut(&change.address) {
                r.id = Some(id);
            }
        }) {
            *save_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    };
    let seen = provider
        .create(&change.address, &attrs, &token, &on_id)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = save_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let id = seen.id.clone();
    recorder.record(|s| record_observed(s, change, seen))?;
    Ok(Some(id))
}

async fn update(
    provider: &dyn Provider,
    recorder: &Recorder<'_>,
    change: &Change,
) -> Result<Option<String>, String> {
    let (_, attrs) = desired_attrs(recorder, change)?;
    let (id, before) = recorder.read(|s| {
        let r = s.resources.get(&change.address);
        (
            r.and_then(|r| r.id.clone()),
            r.map(|r| r.attrs.clone()).unwrap_or_default(),
        )
    });
    let id = id.ok_or_else(|| format!("{} has no id in the state", change.address))?;
    let seen = provider
        .update(&change.address, &id, &before, &attrs)
        .await
        .map_err(|e| e.to_string())?;
    recorder.record(|s| record_observed(s, change, seen))?;
    Ok(Some(id))
}

async fn delete(
    provider: &dyn Provider,
    recorder: &Recorder<'_>,
    change: &Change,
) -> Result<Option<String>, String> {
    let id = recorder.read(|s| s.id_of(&change.address).map(str::to_string));
    if let Some(id) = &id {
        provider
            .delete(&change.address, id)
            .await
            .map_err(|e| e.to_string())?;
    }
    recorder.record(|s| {
        s.resources.remove(&change.address);
    })?;
    Ok(id)
}
