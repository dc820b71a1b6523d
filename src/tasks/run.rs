//! Runs a playbook: plays in order; within a play, hosts in parallel (or replicas first);
//! on each host, tasks in order. A host whose task fails drops out of the rest of the
//! run; the others go on, and the recap names every failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use minijinja::Environment;
use serde::Serialize;

use super::modules::{Action, ActionError, Cx};
use super::{Hosts, Order, Playbook, Task};
use crate::remote::Connection;
use crate::spec::Role;

/// One host of the run: its connection, role and template variables.
pub struct HostRun {
    pub conn: Connection,
    pub role: Role,
    pub vars: minijinja::Value,
}

impl HostRun {
    fn name(&self) -> &str {
        &self.conn.target().name
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Ok,
    Changed,
    /// Check mode: the task would change something.
    WouldChange,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskEvent {
    pub host: String,
    pub play: String,
    pub task: String,
    pub status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

pub type Sink = Arc<dyn Fn(&TaskEvent) + Send + Sync>;

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Change nothing; report what would change.
    pub check: bool,
    pub events: Option<Sink>,
}

/// Counts per host, and what failed where.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recap {
    pub hosts: BTreeMap<String, HostCounts>,
    pub failures: Vec<Failure>,
    /// Wall time per task name, summed over hosts (for the benchmark).
    pub task_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostCounts {
    pub ok: u32,
    pub changed: u32,
    pub skipped: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub host: String,
    pub task: String,
    pub error: String,
}

impl Recap {
    pub fn changed(&self) -> u32 {
        self.hosts.values().map(|h| h.changed).sum()
    }
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }
    fn record(&mut self, e: &TaskEvent) {
        let h = self.hosts.entry(e.host.clone()).or_default();
        match e.status {
            TaskStatus::Ok => h.ok += 1,
            TaskStatus::Changed | TaskStatus::WouldChange => h.changed += 1,
            TaskStatus::Skipped => h.skipped += 1,
            TaskStatus::Failed => h.failed += 1,
        }
        *self.task_seconds.entry(e.task.clone()).or_default() += e.seconds;
        if let Some(err) = &e.error {
            self.failures.push(Failure {
                host: e.host.clone(),
                task: e.task.clone(),
                error: err.clone(),
            });
        }
    }
}

/// Runs `book` on `hosts`. `secret` is the replication password: it may appear only in
/// tasks marked `secret`, never in a diff, a summary or an error.
pub async fn run_playbook(
    book: &Playbook,
    hosts: &[HostRun],
    secret: &str,
    opts: &RunOptions,
) -> Recap {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Ansible's template defaults, so the same files render the same in an export.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    for (name, text) in &book.templates {
        if let Err(e) = env.add_template_owned(name.clone(), text.clone()) {
            tracing::error!("template {name}: {e}");
        }
    }
    let mut recap = Recap::default();
    let mut failed: Vec<bool> = vec![false; hosts.len()];
    for play in &book.plays {
        let chosen: Vec<usize> = (0..hosts.len())
            .filter(|&i| !failed[i])
            .filter(|&i| match play.hosts {
                Hosts::All => true,
                Hosts::Primary => hosts[i].role == Role::Primary,
                Hosts::Replicas => hosts[i].role == Role::Replica,
            })
            .collect();
        let batches: Vec<Vec<usize>> = match play.order {
            Order::Parallel => vec![chosen],
            Order::ReplicasFirst => {
                let (r, p): (Vec<usize>, Vec<usize>) = chosen
                    .into_iter()
                    .partition(|&i| hosts[i].role == Role::Replica);
                vec![r, p]
            }
            Order::PrimaryFirst => {
                let (r, p): (Vec<usize>, Vec<usize>) = chosen
                    .into_iter()
                    .partition(|&i| hosts[i].role == Role::Replica);
                vec![p, r]
            }
        };
        for batch in batches {
            let runs = batch.iter().map(|&i| {
                let env = &env;
                async move {
                    let events = run_host(
                        env,
                        &play.name,
                        &play.tasks,
                        &play.handlers,
                        &hosts[i],
                        secret,
                        opts,
                    )
                    .await;
                    (i, events)
                }
            });
            for (i, events) in futures::future::join_all(runs).await {
                for e in &events {
                    recap.record(e);
                    if e.status == TaskStatus::Failed {
                        failed[i] = true;
                    }
                }
            }
        }
    }
    recap
}

/// One play on one host: its tasks, then the handlers they notified.
async fn run_host(
    env: &Environment<'_>,
    play: &str,
    tasks: &[Task],
    handlers: &[Task],
    host: &HostRun,
    secret: &str,
    opts: &RunOptions,
) -> Vec<TaskEvent> {
    let mut events = Vec::new();
    let mut notified: Vec<&str> = Vec::new();
    for task in tasks {
        let event = run_task(env, play, task, host, secret, opts).await;
        let status = event.status;
        emit(opts, &event);
        events.push(event);
        match status {
            TaskStatus::Failed => return events,
            TaskStatus::Changed | TaskStatus::WouldChange => {
                for h in &task.notify {
                    if !notified.contains(&h.as_str()) {
                        notified.push(h);
                    }
                }
            }
            _ => {}
        }
    }
    for handler in handlers
        .iter()
        .filter(|h| notified.contains(&h.name.as_str()))
    {
        let event = run_task(env, play, handler, host, secret, opts).await;
        let status = event.status;
        emit(opts, &event);
        events.push(event);
        if status == TaskStatus::Failed {
            break;
        }
    }
    events
}

fn emit(opts: &RunOptions, e: &TaskEvent) {
    if let Some(sink) = &opts.events {
        sink(e);
    }
}

async fn run_task(
    env: &Environment<'_>,
    play: &str,
    task: &Task,
    host: &HostRun,
    secret: &str,
    opts: &RunOptions,
) -> TaskEvent {
    let started = Instant::now();
    let mut event = TaskEvent {
        host: host.name().to_string(),
        play: play.to_string(),
        task: task.name.clone(),
        status: TaskStatus::Ok,
        summary: None,
        diff: None,
        error: None,
        seconds: 0.0,
    };
    let outcome = attempt(env, task, host, secret, opts).await;
    match outcome {
        Ok(Step::Skipped) => event.status = TaskStatus::Skipped,
        Ok(Step::Unchanged) => {}
        Ok(Step::Changed(change)) => {
            event.status = if opts.check {
                TaskStatus::WouldChange
            } else {
                TaskStatus::Changed
            };
            if task.secret {
                event.summary = Some("changed (secret: no details)".into());
            } else {
                event.summary = Some(change.summary);
                event.diff = change.diff;
            }
        }
        Err(e) => {
            event.status = TaskStatus::Failed;
            event.error = Some(redact(&e.to_string(), secret));
        }
    }
    event.seconds = started.elapsed().as_secs_f64();
    event
}

enum Step {
    Skipped,
    Unchanged,
    Changed(super::modules::Change),
}

async fn attempt(
    env: &Environment<'_>,
    task: &Task,
    host: &HostRun,
    secret: &str,
    opts: &RunOptions,
) -> Result<Step, ActionError> {
    let jinja = |e: minijinja::Error| ActionError::Invalid(format!("template error: {e:#}"));
    if let Some(when) = &task.when {
        let expr = env.compile_expression(when).map_err(jinja)?;
        if !expr.eval(&host.vars).map_err(jinja)?.is_true() {
            return Ok(Step::Skipped);
        }
    }
    let guard = |text: &str| -> Result<(), ActionError> {
        if !task.secret && !secret.is_empty() && text.contains(secret) {
            return Err(ActionError::Invalid(format!(
                "task `{}` would expose the replication password; mark it `secret: true`",
                task.name
            )));
        }
        Ok(())
    };
    let rendered = render_value(env, &task.action, &host.vars).map_err(jinja)?;
    guard(&serde_norway::to_string(&rendered).unwrap_or_default())?;
    let action = Action::parse(&rendered).map_err(ActionError::Invalid)?;
    let render = |name: &str| -> Result<String, ActionError> {
        let text = env
            .get_template(name)
            .and_then(|t| t.render(&host.vars))
            .map_err(jinja)?;
        guard(&text)?;
        Ok(text)
    };
    let cx = Cx {
        conn: &host.conn,
        render: &render,
    };
    let Some(change) = action.query(&cx).await? else {
        return Ok(Step::Unchanged);
    };
    if !opts.check {
        action.act(&cx).await?;
    }
    Ok(Step::Changed(change))
}

/// Renders every string inside a task's arguments.
fn render_value(
    env: &Environment<'_>,
    v: &serde_norway::Value,
    ctx: &minijinja::Value,
) -> Result<serde_norway::Value, minijinja::Error> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::String(s) if s.contains("{{") || s.contains("{%") => Y::String(env.render_str(s, ctx)?),
        Y::Sequence(items) => Y::Sequence(
            items
                .iter()
                .map(|i| render_value(env, i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_norway::Mapping::new();
            for (k, val) in m {
                out.insert(k.clone(), render_value(env, val, ctx)?);
            }
            Y::Mapping(out)
        }
        other => other.clone(),
    })
}

fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "********")
    }
}
