//! Runs a playbook: plays in order; within a play, hosts in parallel (or replicas first);
//! on each host, tasks in order. A host whose task fails drops out of the rest of the
//! run; the others go on, and the recap names every failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use minijinja::Environment;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::modules::{Action, ActionError, Cx};
use super::{Hosts, Order, Playbook, SECRET_VARS, Task};
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
    /// Once triggered, no task starts: the ones running finish (with the handlers they
    /// notified, so that what changed also runs) and the run ends, marked interrupted.
    pub interrupt: crate::engine::Interrupt,
}

/// Counts per host, and what failed where.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recap {
    pub hosts: BTreeMap<String, HostCounts>,
    pub failures: Vec<Failure>,
    /// The run stopped early on request: tasks after the ones running then did not run.
    pub interrupted: bool,
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

/// Runs `book` on `hosts`. `secrets` are the values of [`SECRET_VARS`] (the replication
/// password, the users' passwords): they may appear only in tasks marked `secret`,
/// never in a diff, a summary or an error (each is masked there).
pub async fn run_playbook(
    book: &Playbook,
    hosts: &[HostRun],
    secrets: &[String],
    opts: &RunOptions,
) -> Recap {
    let secret = secrets;
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

    // A throttled task's permits, shared by the play's hosts (rendered with the first
    // host's variables: a cluster-wide value).
    let throttles: Vec<Vec<Option<Semaphore>>> = book
        .plays
        .iter()
        .zip(&plays_hosts)
        .map(|(play, chosen)| {
            let vars = chosen.first().map(|&i| &hosts[i].vars);
            play.tasks
                .iter()
                .map(|t| throttle(env, t, vars).map(Semaphore::new))
                .collect()
        })
        .collect();

    let mut recap = Recap::default();
    let mut failed: Vec<bool> = vec![false; hosts.len()];
    let mut changed_anywhere = false;
    for (((play, chosen), early), throttles) in book
        .plays
        .iter()
        .zip(plays_hosts)
        .zip(&mut early)
        .zip(&throttles)
    {
        let chosen: Vec<usize> = chosen.into_iter().filter(|&i| !failed[i]).collect();
        for batch in batches(play.order, chosen, hosts) {
            if opts.interrupt.is_triggered() {
                break;
            }
            // Hosts of one batch run side by side, so a change on one does not make
            // another's answers stale; a change in an earlier batch does.
            let runs = batch.iter().map(|&i| {
                let answers = early[i].take().filter(|_| !changed_anywhere);
                async move {
                    let events =
                        run_host(env, play, throttles, &hosts[i], secret, opts, answers).await;
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
    recap.interrupted = opts.interrupt.is_triggered();
    recap
}

/// The template environment, with Ansible's template defaults so that the same files
/// render the same in an export.
fn environment(book: &Playbook) -> Environment<'static> {
    template_environment(&book.templates)
}

pub(crate) fn template_environment(templates: &BTreeMap<String, String>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    for (name, text) in templates {
        if let Err(e) = env.add_template_owned(name.clone(), text.clone()) {
            tracing::error!("template {name}: {e}");
        }
    }
    env
}

/// A task's `throttle`, rendered (none when it is absent, does not render to a positive
/// number, or the play has no host).
pub(super) fn throttle(
    env: &Environment<'_>,
    task: &Task,
    vars: Option<&minijinja::Value>,
) -> Option<usize> {
    let text = env.render_str(task.throttle.as_deref()?, vars?).ok()?;
    text.trim().parse().ok().filter(|&n| n > 0)
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
async fn ask_all(
    env: &Environment<'_>,
    tasks: &[Task],
    host: &HostRun,
    secret: &[String],
) -> Answers {
    futures::future::join_all(tasks.iter().map(|task| async move {
        let run = TaskRun {
            env,
            task,
            host,
            secret,
            throttle: None,
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
    throttles: &[Option<Semaphore>],
    host: &HostRun,
    secret: &[String],
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
    for ((task, (asked, seconds)), throttle) in play.tasks.iter().zip(early).zip(throttles) {
        if opts.interrupt.is_triggered() {
            break;
        }
        let run = TaskRun {
            env,
            task,
            host,
            secret,
            throttle: throttle.as_ref(),
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
            throttle: None,
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
    Changes(Box<Action>, super::modules::Change),
}

/// One task on one host.
struct TaskRun<'a> {
    env: &'a Environment<'a>,
    task: &'a Task,
    host: &'a HostRun,
    secret: &'a [String],
    /// Shared with the other hosts acting on the task (its `throttle`).
    throttle: Option<&'a Semaphore>,
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
        self.guard(value_uses_secret(self.env, &self.task.action))?;
        let rendered = render_value(self.env, &self.task.action, &self.host.vars).map_err(jinja)?;
        let action = Action::parse(&rendered).map_err(ActionError::Invalid)?;
        let render = |name: &str| self.render(name);
        let cx = Cx {
            conn: &self.host.conn,
            render: &render,
        };
        Ok(match action.query(&cx).await? {
            None => Asked::Unchanged,
            Some(change) => Asked::Changes(Box::new(action), change),
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
            Ok(Asked::Changes(action, change)) if !opts.check && !change.note_only => {
                let render = |name: &str| self.render(name);
                let cx = Cx {
                    conn: &self.host.conn,
                    render: &render,
                };
                // Never closed, so acquiring cannot fail.
                let _permit = match self.throttle {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
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
            // Nothing to do, but something to say (what is kept): shown, not changed.
            Ok(Asked::Changes(action, change)) if change.note_only => {
                if !self.task.secret || action.summary_names_no_secret() {
                    event.summary = Some(change.summary);
                }
            }
            Ok(Asked::Changes(action, change)) => {
                event.status = if opts.check {
                    TaskStatus::WouldChange
                } else {
                    TaskStatus::Changed
                };
                if self.task.secret && action.summary_names_no_secret() {
                    event.summary = Some(change.summary);
                } else if self.task.secret {
                    event.summary = Some("changed (secret: no details)".into());
                } else {
                    event.summary = Some(change.summary);
                    event.diff = change.diff;
                }
            }
            Err(e) => {
                event.status = TaskStatus::Failed;
                // Only a task that uses the password can have it in its output.
                event.error = Some(if self.task.secret {
                    self.secret
                        .iter()
                        .fold(e.to_string(), |text, secret| redact(&text, secret))
                } else {
                    e.to_string()
                });
            }
        }
        event.seconds = started.elapsed().as_secs_f64();
        event
    }

    /// A template file rendered for this host.
    fn render(&self, name: &str) -> Result<String, ActionError> {
        let template = self.env.get_template(name).map_err(jinja)?;
        self.guard(template_uses_secret(&template))?;
        template.render(&self.host.vars).map_err(jinja)
    }

    /// Refuses to render the password for a task not marked `secret` (whose diff and
    /// details are shown). `Playbook::parse` refuses such a task already; this holds for
    /// template names known only when rendered.
    fn guard(&self, uses_secret: bool) -> Result<(), ActionError> {
        guard(self.task, uses_secret)
    }
}

fn guard(task: &Task, uses_secret: bool) -> Result<(), ActionError> {
    if uses_secret && !task.secret {
        return Err(ActionError::Invalid(format!(
            "internal error in pgform's task list: task `{}` uses a password \
             but is not marked secret, so it was not run (please report this bug)",
            task.name
        )));
    }
    Ok(())
}

fn any_secret(names: &std::collections::HashSet<String>) -> bool {
    SECRET_VARS.iter().any(|v| names.contains(*v))
}

/// Whether Jinja text uses one of [`SECRET_VARS`] (text that does not parse uses
/// nothing; it fails when rendered).
fn text_uses_secret(env: &Environment<'_>, text: &str) -> bool {
    env.template_from_str(text)
        .is_ok_and(|t| any_secret(&t.undeclared_variables(false)))
}

fn template_uses_secret(template: &minijinja::Template<'_, '_>) -> bool {
    any_secret(&template.undeclared_variables(false))
}

/// Which of [`SECRET_VARS`] Jinja text uses (for the parser's message).
fn text_secrets(env: &Environment<'_>, text: &str) -> Vec<&'static str> {
    env.template_from_str(text)
        .map(|t| {
            let names = t.undeclared_variables(false);
            SECRET_VARS
                .into_iter()
                .filter(|v| names.contains(*v))
                .collect()
        })
        .unwrap_or_default()
}

/// The secret variables a task uses, by name (in its arguments, else "a secret").
pub(super) fn secrets_used(env: &Environment<'_>, task: &Task) -> Vec<&'static str> {
    fn walk(env: &Environment<'_>, v: &serde_norway::Value, out: &mut Vec<&'static str>) {
        use serde_norway::Value as Y;
        match v {
            Y::String(s) => out.extend(text_secrets(env, s)),
            Y::Sequence(items) => items.iter().for_each(|i| walk(env, i, out)),
            Y::Mapping(m) => m.values().for_each(|i| walk(env, i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(env, &task.action, &mut out);
    if let Some(w) = &task.when {
        out.extend(text_secrets(env, &format!("{{{{ {w} }}}}")));
    }
    if out.is_empty() {
        // In the template file it names: the first secret variable it renders.
        out.push(SECRET_VARS[0]);
    }
    out.sort();
    out.dedup();
    out
}

/// Whether any string in a task's arguments uses one of [`SECRET_VARS`].
fn value_uses_secret(env: &Environment<'_>, v: &serde_norway::Value) -> bool {
    use serde_norway::Value as Y;
    match v {
        Y::String(s) => (s.contains("{{") || s.contains("{%")) && text_uses_secret(env, s),
        Y::Sequence(items) => items.iter().any(|i| value_uses_secret(env, i)),
        Y::Mapping(m) => m.values().any(|i| value_uses_secret(env, i)),
        _ => false,
    }
}

/// Whether `task` uses the password: in its condition, its arguments or the template
/// file it names.
pub(super) fn task_uses_secret(env: &Environment<'_>, task: &Task) -> bool {
    let when = task.when.as_deref().is_some_and(|w| {
        env.compile_expression(w)
            .is_ok_and(|e| any_secret(&e.undeclared_variables(false)))
    });
    let template = Action::parse(&task.action)
        .ok()
        .and_then(|a| a.template_name().map(String::from))
        .and_then(|name| {
            env.get_template(&name)
                .ok()
                .map(|t| template_uses_secret(&t))
        })
        .unwrap_or(false);
    when || template || value_uses_secret(env, &task.action)
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

/// `text` with every whole occurrence of `secret` masked. An occurrence inside a longer
/// word (the password `postgres` in `/usr/lib/postgresql`) is that word, not the
/// password: it stays, so that no message is shredded.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let (first, last) = (secret.chars().next(), secret.chars().last());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut before: Option<char> = None;
    while let Some(at) = rest.find(secret) {
        let prev = rest[..at].chars().last().or(before);
        let next = rest[at + secret.len()..].chars().next();
        let inside_word = (word(first) && word(prev)) || (word(last) && word(next));
        out.push_str(&rest[..at]);
        if inside_word {
            // Keep this occurrence; look again one character further.
            let step = rest[at..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[at..at + step]);
            before = rest[at..].chars().next();
            rest = &rest[at + step..];
        } else {
            out.push_str("********");
            before = last;
            rest = &rest[at + secret.len()..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_the_whole_secret_and_never_splits_a_word() {
        assert_eq!(
            redact("role rep: password 'postgres' rejected", "postgres"),
            "role rep: password '********' rejected"
        );
        assert_eq!(
            redact("cannot connect to /usr/lib/postgresql/15/bin", "postgres"),
            "cannot connect to /usr/lib/postgresql/15/bin"
        );
        assert_eq!(redact("would expose e", "e"), "would expose ********");
        assert_eq!(redact("x $(id) y", "$(id)"), "x ******** y");
        assert_eq!(redact("ab=ab", "ab"), "********=********");
        assert_eq!(redact("text", ""), "text");
    }

    fn book(secret: bool, uses: &str) -> Result<Playbook, super::super::PlaybookError> {
        let mut templates = BTreeMap::new();
        templates.insert(
            "pass.j2".to_string(),
            "x:{{ replication_password | replace(':', '\\:') }}\n".to_string(),
        );
        templates.insert("plain.j2".to_string(), "{{ node_name }}\n".to_string());
        Playbook::parse(
            &format!(
                "- name: p\n  hosts: all\n  tasks:\n    - name: t\n      secret: {secret}\n      {uses}\n"
            ),
            templates,
        )
    }

    #[test]
    fn a_task_that_uses_the_password_must_be_marked_secret() {
        let uses = [
            "copy: {dest: /x, content: \"{{ replication_password }}\"}",
            "template: {src: pass.j2, dest: /x}",
            "pg_role: {version: '15', name: r, password: \"{{ replication_password | upper }}\"}",
        ];
        for task in uses {
            let err = book(false, task).unwrap_err().to_string();
            assert!(
                err.contains("task `t` uses `replication_password`"),
                "{err}"
            );
            book(true, task).expect("marked secret");
        }
        // Using other variables, whatever their values, is not using the password.
        book(false, "template: {src: plain.j2, dest: /x}").expect("no secret");
        book(
            false,
            "copy: {dest: /x, content: \"postgres {{ node_name }}\"}",
        )
        .expect("no secret");
    }

    #[test]
    fn the_runner_refuses_an_unmarked_task_that_renders_the_password() {
        // Past the parser's check: a template chosen at run time.
        let book = book(false, "template: {src: \"{{ which }}\", dest: /x}").expect("parses");
        let env = environment(&book);
        let task = &book.plays[0].tasks[0];
        assert!(!task_uses_secret(&env, task));
        let template = env.get_template("pass.j2").unwrap();
        let err = guard(task, template_uses_secret(&template)).unwrap_err();
        assert!(err.to_string().contains("internal error"), "{err}");
        assert!(!err.to_string().contains("mark it"), "{err}");
        let plain = env.get_template("plain.j2").unwrap();
        guard(task, template_uses_secret(&plain)).expect("no secret in plain.j2");
    }
}
