//! The task-list interpreter. `playbooks/` (YAML plays of tasks, Jinja templates) is
//! embedded at build time; [`Playbook::embedded`] parses it into typed actions. Each
//! action is asked what needs doing (query) before it acts, so check mode and
//! idempotence come by construction; handlers run only after a real change. The engine
//! never prints: the runner sends [`TaskEvent`]s to a sink.

pub mod conninfo;
pub mod daemon;
pub mod modules;
pub mod patroni;
pub mod pg_access;
pub mod pg_conf;
pub mod run;
pub(crate) mod scram;
pub mod takeover;
pub mod tls_files;
pub mod volume;

use std::collections::BTreeMap;

use include_dir::{Dir, include_dir};
use serde::Deserialize;

pub use modules::Action;
pub use run::{Recap, RunOptions, Sink, TaskEvent, TaskStatus, run_playbook};

static PLAYBOOKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/playbooks");

/// The main task list's file inside `playbooks/`.
pub const SITE: &str = "site.yml";

/// The task list of the HA mode (`[ha] mode = "patroni"`): etcd and Patroni own
/// PostgreSQL there, so the plain mode's plays (settings files, seeding) do not apply.
pub const PATRONI: &str = "patroni.yml";

/// The HA mode's conversion of a plain-mode cluster (`hosts::ha` runs it on the old
/// primary first, then on the replicas); not part of the Ansible export.
pub const PATRONI_CONVERT: &str = "patroni-convert.yml";

/// The template variables that hold secrets: the replication password, the
/// application users' passwords (a JSON map of name to password) and the HA mode's
/// (`rest`, `superuser`, `rewind`). A task that uses one (in its condition, arguments
/// or template) must be marked `secret: true`.
pub const SECRET_VARS: [&str; 3] = ["replication_password", "user_passwords", "ha_passwords"];

/// Which hosts a play runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hosts {
    All,
    Primary,
    Replicas,
}

/// In what order a play's hosts go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// All at once.
    #[default]
    Parallel,
    /// Replicas (at once), then the primary: a standby must never run with a lower
    /// max_connections (and similar) than its primary.
    ReplicasFirst,
    /// The primary, then the replicas (at once): for lowering those same limits.
    PrimaryFirst,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Play {
    pub name: String,
    pub hosts: Hosts,
    #[serde(default)]
    pub order: Order,
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub handlers: Vec<Task>,
}

/// One step. Its arguments are Jinja strings, rendered per host before the action runs.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub name: String,
    /// A Jinja expression; the task is skipped on hosts where it is false.
    #[serde(default)]
    pub when: Option<String>,
    /// Handlers (by name) to run at the end of the play if this task changed something.
    #[serde(default)]
    pub notify: Vec<String>,
    /// The task handles the replication password: no diff, no content in any output.
    #[serde(default)]
    pub secret: bool,
    /// At most this many hosts act on the task at once (Jinja, as Ansible's `throttle`):
    /// a limit of the primary's, such as WAL senders, that the hosts share.
    #[serde(default)]
    pub throttle: Option<String>,
    #[serde(flatten)]
    pub action: serde_norway::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("playbook file {0} is missing")]
    Missing(String),
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
}

/// A parsed task list plus the templates it may use.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub plays: Vec<Play>,
    pub templates: BTreeMap<String, String>,
}

impl Playbook {
    /// The task list compiled into this binary, checked: every action parses and every
    /// template it names exists.
    pub fn embedded() -> Result<Playbook, PlaybookError> {
        Playbook::embedded_file(SITE)
    }

    /// One of the embedded task lists ([`SITE`], [`PATRONI`]), checked the same way.
    pub fn embedded_file(file: &str) -> Result<Playbook, PlaybookError> {
        let site = PLAYBOOKS
            .get_file(file)
            .and_then(|f| f.contents_utf8())
            .ok_or_else(|| PlaybookError::Missing(file.into()))?;
        let mut templates = BTreeMap::new();
        if let Some(dir) = PLAYBOOKS.get_dir("templates") {
            for f in dir.files() {
                let name = f
                    .path()
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                templates.insert(name, f.contents_utf8().unwrap_or_default().to_string());
            }
        }
        Playbook::parse_file(file, site, templates)
    }

    pub fn parse(
        site: &str,
        templates: BTreeMap<String, String>,
    ) -> Result<Playbook, PlaybookError> {
        Playbook::parse_file(SITE, site, templates)
    }

    fn parse_file(
        file: &str,
        site: &str,
        templates: BTreeMap<String, String>,
    ) -> Result<Playbook, PlaybookError> {
        let bad = |message: String| PlaybookError::Parse {
            file: file.into(),
            message,
        };
        let plays: Vec<Play> = serde_norway::from_str(site).map_err(|e| bad(e.to_string()))?;
        let env = run::template_environment(&templates);
        for play in &plays {
            for task in play.tasks.iter().chain(&play.handlers) {
                let action = Action::parse(&task.action)
                    .map_err(|e| bad(format!("task `{}`: {e}", task.name)))?;
                if let Some(src) = action.template_name()
                    && !src.contains("{{")
                    && !templates.contains_key(src)
                {
                    return Err(bad(format!("task `{}`: no template `{src}`", task.name)));
                }
                if let Some(t) = &task.throttle
                    && let Err(e) = env.template_from_str(t)
                {
                    return Err(bad(format!("task `{}`: throttle: {e}", task.name)));
                }
                if !task.secret && run::task_uses_secret(&env, task) {
                    return Err(bad(format!(
                        "task `{}` uses `{}` but is not marked `secret: true`",
                        task.name,
                        run::secrets_used(&env, task).join("`, `")
                    )));
                }
                for h in &task.notify {
                    if !play.handlers.iter().any(|x| &x.name == h) {
                        return Err(bad(format!(
                            "task `{}` notifies `{h}`, which play `{}` has no handler for",
                            task.name, play.name
                        )));
                    }
                }
            }
        }
        Ok(Playbook { plays, templates })
    }

    /// The embedded files, by path (for the Ansible export).
    pub fn files() -> impl Iterator<Item = (&'static str, &'static [u8])> {
        fn walk(dir: &'static Dir<'static>, out: &mut Vec<(&'static str, &'static [u8])>) {
            for f in dir.files() {
                out.push((f.path().to_str().unwrap_or_default(), f.contents()));
            }
            for d in dir.dirs() {
                walk(d, out);
            }
        }
        let mut out = Vec::new();
        walk(&PLAYBOOKS, &mut out);
        out.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_playbook_parses() {
        let book = Playbook::embedded().expect("embedded playbook is valid");
        assert!(book.plays.len() >= 3);
        assert!(book.templates.contains_key("pgform.conf.j2"));
        let ha = Playbook::embedded_file(PATRONI).expect("the HA task list is valid");
        assert!(ha.templates.contains_key("patroni.yml.j2"));
        let convert = Playbook::embedded_file(PATRONI_CONVERT).expect("the conversion is valid");
        assert_eq!(convert.plays.len(), 1);
    }

    #[test]
    fn seeds_are_throttled_and_a_bad_throttle_is_refused() {
        let book = Playbook::embedded().unwrap();
        let seed = book
            .plays
            .iter()
            .flat_map(|p| &p.tasks)
            .find(|t| t.name == "seed from the primary")
            .expect("the seed task");
        assert_eq!(seed.throttle.as_deref(), Some("{{ seeds_at_once }}"));
        let throttle = |n: &str| {
            let env = run::template_environment(&BTreeMap::new());
            let vars = minijinja::context! { seeds_at_once => 3 };
            let task = Task {
                throttle: Some(n.into()),
                ..seed.clone()
            };
            run::throttle(&env, &task, Some(&vars))
        };
        assert_eq!(throttle("{{ seeds_at_once }}"), Some(3));
        assert_eq!(throttle("0"), None);
        assert_eq!(throttle("many"), None);
        let err = Playbook::parse(
            "- name: p\n  hosts: all\n  tasks:\n    - name: t\n      throttle: \"{{ x\"\n      file: {path: /x, state: absent}\n",
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("throttle"), "{err}");
    }

    #[test]
    fn unknown_module_and_missing_handler_are_refused() {
        let err = Playbook::parse(
            "- name: p\n  hosts: all\n  tasks:\n    - name: t\n      frobnicate: {}\n",
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("task `t`"), "{err}");
        let err = Playbook::parse(
            "- name: p\n  hosts: all\n  tasks:\n    - name: t\n      notify: [h]\n      file: {path: /x, state: absent}\n",
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no handler"), "{err}");
    }
}
