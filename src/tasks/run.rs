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
    let env = &environment(book);
    let plays_hosts: Vec<Vec<usize>> = book.plays.iter().map(|p| chosen(p, hosts)).collect();

    // Queries only read, so every task's query on every host is sent at once, before
    // anything runs. While nothing has changed, each answer is what the query would say
    // in its turn: a converged run costs one round of queries, not one per task. After
    // the first batch of hosts with a change, later plays ask again (see `run_host`).
    let mut early: Vec<Vec<Option<Answers>>> =
        futures::future::join_all(book.plays.iter().zip(&plays_hosts).map(
            |(play, chosen)| async move {
                let mut by_host: Vec<Option<Answers>> = (0..hosts.len()).map(|_| None).collect();
                let asked = futures::future::join_all(
                    chosen
                        .iter()
                        .map(|&i| ask_all(env, &play.tasks, &hosts[i], secret)),
                )
                .await;
                for (&i, answers) in chosen.iter().zip(asked) {
                    by_host[i] = Some(answers);
                }
                by_host
            },
        ))
        .await;

    let mut recap = Recap::default();
    let mut failed: Vec<bool> = vec![false; hosts.len()];
    let mut changed_anywhere = false;
    for ((play, chosen), early) in book.plays.iter().zip(plays_hosts).zip(&mut early) {
        let chosen: Vec<usize> = chosen.into_iter().filter(|&i| !failed[i]).collect();
        for batch in batches(play.order, chosen, hosts) {
            // Hosts of one batch run side by side, so a change on one does not make
            // another's answers stale; a change in an earlier batch does.
            let runs = batch.iter().map(|&i| {
                let answers = early[i].take().filter(|_| !changed_anywhere);
                async move {
                    let events = run_host(env, play, &hosts[i], secret, opts, answers).await;
                    (i, events)
                }
            });
            for (i, events) in futures::future::join_all(runs).await {
                for e in &events {
                    recap.record(e);
                    match e.status {
                        TaskStatus::Failed => failed[i] = true,
                        TaskStatus::Changed => changed_anywhere = true,
                        _ => {}
                    }
                }
            }
        }
    }
    recap
}

/// The template environment, with Ansible's template defaults so that the same files
/// render the same in an export.
fn environment(book: &Playbook) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
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
    env
}

/// The hosts (indexes) a play runs on.
fn chosen(play: &super::Play, hosts: &[HostRun]) -> Vec<usize> {
    (0..hosts.len())
        .filter(|&i| match play.hosts {
            Hosts::All => true,
            Hosts::Primary => hosts[i].role == Role::Primary,
            Hosts::Replicas => hosts[i].role == Role::Replica,
        })
        .collect()
}

/// `chosen` in the batches the play's order asks for, one after the other.
fn batches(order: Order, chosen: Vec<usize>, hosts: &[HostRun]) -> Vec<Vec<usize>> {
    let (replicas, primary): (Vec<usize>, Vec<usize>) = chosen
        .iter()
        .partition(|&&i| hosts[i].role == Role::Replica);
    match order {
        Order::Parallel => vec![chosen],
        Order::ReplicasFirst => vec![replicas, primary],
        Order::PrimaryFirst => vec![primary, replicas],
    }
}

/// Each task's answer on one host, with how long its query took.
type Answers = Vec<(Result<Asked, ActionError>, f64)>;

/// All of `tasks`' queries on `host` at once.
async fn ask_all(env: &Environment<'_>, tasks: &[Task], host: &HostRun, secret: &str) -> Answers {
    futures::future::join_all(tasks.iter().map(|task| async move {
        let run = TaskRun {
            env,
            task,
            host,
            secret,
        };
        let started = Instant::now();
        let asked = run.ask().await;
        (asked, started.elapsed().as_secs_f64())
    }))
    .await
}

/// One play on one host: its tasks, then the handlers they notified. `early` holds the
/// answers to the play's queries asked before the run, if nothing has changed since;
/// otherwise they are all asked now, at once. Either way an answer stands only until
/// the host changes: the queries after a change are asked again, in order. (Check mode
/// changes nothing, so there every early answer stands.)
async fn run_host(
    env: &Environment<'_>,
    play: &super::Play,
    host: &HostRun,
    secret: &str,
    opts: &RunOptions,
    early: Option<Answers>,
) -> Vec<TaskEvent> {
    let early = match early {
        Some(answers) => answers,
        None => ask_all(env, &play.tasks, host, secret).await,
    };
    let (name, handlers) = (&play.name, &play.handlers);
    let mut events = Vec::new();
    let mut notified: Vec<&str> = Vec::new();
    let mut host_changed = false;
    for (task, (asked, seconds)) in play.tasks.iter().zip(early) {
        let run = TaskRun {
            env,
            task,
            host,
            secret,
        };
        let event = if host_changed {
            run.event(name, opts, Instant::now(), run.ask().await).await
        } else {
            // Its time is its own query's (and action's), not the wait for the others.
            let took = std::time::Duration::from_secs_f64(seconds);
            let started = Instant::now()
                .checked_sub(took)
                .unwrap_or_else(Instant::now);
            run.event(name, opts, started, asked).await
        };
        let status = event.status;
        emit(opts, &event);
        events.push(event);
        match status {
            TaskStatus::Failed => return events,
            TaskStatus::Changed => host_changed = true,
            _ => {}
        }
        if matches!(status, TaskStatus::Changed | TaskStatus::WouldChange) {
            for h in &run.task.notify {
                if !notified.contains(&h.as_str()) {
                    notified.push(h);
                }
            }
        }
    }
    for handler in handlers
        .iter()
        .filter(|h| notified.contains(&h.name.as_str()))
    {
        let run = TaskRun {
            env,
            task: handler,
            host,
            secret,
        };
        let event = run.event(name, opts, Instant::now(), run.ask().await).await;
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

/// What a task's query found on a host.
enum Asked {
    Skipped,
    Unchanged,
    /// The action to take (unless in check mode) and what it changes.
    Changes(Action, super::modules::Change),
}

/// One task on one host.
struct TaskRun<'a> {
    env: &'a Environment<'a>,
    task: &'a Task,
    host: &'a HostRun,
    secret: &'a str,
}

impl TaskRun<'_> {
    /// Evaluates `when`, renders and parses the arguments, and asks the host whether
    /// anything needs doing (reading only).
    async fn ask(&self) -> Result<Asked, ActionError> {
        if let Some(when) = &self.task.when {
            let expr = self.env.compile_expression(when).map_err(jinja)?;
            if !expr.eval(&self.host.vars).map_err(jinja)?.is_true() {
                return Ok(Asked::Skipped);
            }
        }
        let rendered = render_value(self.env, &self.task.action, &self.host.vars).map_err(jinja)?;
        self.guard(&serde_norway::to_string(&rendered).unwrap_or_default())?;
        let action = Action::parse(&rendered).map_err(ActionError::Invalid)?;
        let render = |name: &str| self.render(name);
        let cx = Cx {
            conn: &self.host.conn,
            render: &render,
        };
        Ok(match action.query(&cx).await? {
            None => Asked::Unchanged,
            Some(change) => Asked::Changes(action, change),
        })
    }

    /// The task's event: acts on what `asked` found (unless in check mode).
    async fn event(
        &self,
        play: &str,
        opts: &RunOptions,
        started: Instant,
        asked: Result<Asked, ActionError>,
    ) -> TaskEvent {
        let mut event = TaskEvent {
            host: self.host.name().to_string(),
            play: play.to_string(),
            task: self.task.name.clone(),
            status: TaskStatus::Ok,
            summary: None,
            diff: None,
            error: None,
            seconds: 0.0,
        };
        let outcome = match asked {
            Ok(Asked::Changes(action, change)) if !opts.check => {
                let render = |name: &str| self.render(name);
                let cx = Cx {
                    conn: &self.host.conn,
                    render: &render,
                };
                action
                    .act(&cx)
                    .await
                    .map(|()| Asked::Changes(action, change))
            }
            other => other,
        };
        match outcome {
            Ok(Asked::Skipped) => event.status = TaskStatus::Skipped,
            Ok(Asked::Unchanged) => {}
            Ok(Asked::Changes(_, change)) => {
                event.status = if opts.check {
                    TaskStatus::WouldChange
                } else {
                    TaskStatus::Changed
                };
                if self.task.secret {
                    event.summary = Some("changed (secret: no details)".into());
                } else {
                    event.summary = Some(change.summary);
                    event.diff = change.diff;
                }
            }
            Err(e) => {
                event.status = TaskStatus::Failed;
                event.error = Some(redact(&e.to_string(), self.secret));
            }
        }
        event.seconds = started.elapsed().as_secs_f64();
        event
    }

    /// A template file rendered for this host.
    fn render(&self, name: &str) -> Result<String, ActionError> {
        let text = self
            .env
            .get_template(name)
            .and_then(|t| t.render(&self.host.vars))
            .map_err(jinja)?;
        self.guard(&text)?;
        Ok(text)
    }

    /// Refuses text with the replication password in a task not marked `secret`.
    fn guard(&self, text: &str) -> Result<(), ActionError> {
        if !self.task.secret && !self.secret.is_empty() && text.contains(self.secret) {
            return Err(ActionError::Invalid(format!(
                "task `{}` would expose the replication password; mark it `secret: true`",
                self.task.name
            )));
        }
        Ok(())
    }
}

fn jinja(e: minijinja::Error) -> ActionError {
    ActionError::Invalid(format!("template error: {e:#}"))
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
