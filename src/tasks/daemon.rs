//! `daemon`: a service that is not a Debian PostgreSQL cluster (etcd, Patroni) running
//! with its current settings. With systemd it is the package's unit; without (the
//! container hosts) pgform starts the program itself as its user, in its own session,
//! with a pid file written from inside. "Current settings" is read from the host: the
//! settings file newer than pgform's last start or reload means restart (etcd) or
//! reload (Patroni), so a run that stopped half-way is finished by the next; running
//! with no start of pgform's (the package's own start) means the same.
//!
//! A daemon whose members form a quorum (etcd) splits its work in two tasks: the
//! first start of a member (`acts_on: start`: stopped, or started by its package;
//! every host at once, since a new cluster needs its members up together) and the
//! restart its changed settings need (`acts_on: settings` with `throttle: 1` and
//! `healthy`): one member at a time, each only while the whole cluster is healthy and
//! waited for until it is again, so the quorum never goes.

use serde::Deserialize;

use super::modules::{ActionError, Change, ok};
use crate::remote::{Connection, shell::ha as sh};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    Restart,
    Reload,
}

/// Which of a daemon's changes a task makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActsOn {
    /// Starts a stopped daemon and applies changed settings.
    #[default]
    All,
    /// The first start only: a stopped daemon, or one its package started (a running
    /// one with changed settings is left alone).
    Start,
    /// Applies changed settings to a daemon pgform started only.
    Settings,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// The program's name (its process name and systemd unit).
    pub name: String,
    pub user: String,
    /// The command line (without systemd).
    pub argv: Vec<String>,
    /// `KEY=value` lines exported before the start (without systemd), if it exists.
    #[serde(default)]
    pub env_file: String,
    /// The settings file whose change needs `on_change`.
    pub config: String,
    pub log: String,
    pub on_change: OnChange,
    #[serde(default)]
    pub acts_on: ActsOn,
    /// A shell command that succeeds while the daemon's whole cluster is healthy (for
    /// etcd: every member answers). A restart waits for it before the stop and after
    /// the start (up to a minute each): with `throttle: 1`, members restart one at a
    /// time and never while another is down.
    #[serde(default)]
    pub healthy: String,
}

/// How long a restart waits for `healthy`, before the stop and after the start.
pub const HEALTHY_WAIT_SECONDS: u32 = 60;

/// A daemon's state on a host ([`sh::daemon_state`]'s words).
#[derive(Debug, PartialEq, Eq)]
enum State {
    Stopped,
    /// Running, but never started by pgform: the package's own start, with its
    /// settings (Debian starts etcd as a one-member cluster of its own).
    Unstamped,
    /// Running, with settings newer than pgform's last start or reload.
    Stale,
    Running,
}

impl Daemon {
    async fn state(&self, conn: &Connection) -> Result<State, ActionError> {
        let out = ok(
            conn.run(sh::daemon_state(&self.name, &self.config), None)
                .await?,
            &format!("{} state", self.name),
        )?;
        Ok(match out.stdout.trim() {
            "stopped" => State::Stopped,
            "unstamped" => State::Unstamped,
            "stale" => State::Stale,
            _ => State::Running,
        })
    }

    /// Whether the task makes first starts: a stopped daemon, or one its package started.
    pub fn starts_first(&self) -> bool {
        self.acts_on != ActsOn::Settings
    }

    /// Whether the task applies changed settings to a daemon pgform started.
    pub fn applies_settings(&self) -> bool {
        self.acts_on != ActsOn::Start
    }

    /// Whether its restarts for changed settings wait for a healthy cluster.
    pub fn restarts_when_healthy(&self) -> bool {
        self.applies_settings() && self.on_change == OnChange::Restart && !self.healthy.is_empty()
    }

    /// Whether this task acts on a daemon in `state`.
    fn acts_on_state(&self, state: &State) -> bool {
        match state {
            State::Running => false,
            State::Stopped | State::Unstamped => self.starts_first(),
            State::Stale => self.applies_settings(),
        }
    }

    /// A restart for changed settings that waits for a healthy cluster.
    fn waits_for_health(&self, state: &State) -> bool {
        *state == State::Stale && self.restarts_when_healthy()
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        let state = self.state(conn).await?;
        if !self.acts_on_state(&state) {
            return Ok(None);
        }
        let name = &self.name;
        let verb = match self.on_change {
            OnChange::Restart => "restart",
            OnChange::Reload => "reload",
        };
        let what = match state {
            State::Stopped => format!("start {name}"),
            State::Unstamped => format!("{verb} {name} (its package started it, not pgform)"),
            _ if self.waits_for_health(&state) => {
                format!("restart {name} (its settings changed), once its cluster is healthy")
            }
            _ => format!("{verb} {name} (its settings changed)"),
        };
        Ok(Some(Change {
            summary: what,
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let state = self.state(conn).await?;
        if !self.acts_on_state(&state) {
            return Ok(());
        }
        if self.waits_for_health(&state) {
            let restart = sh::daemon_restart_when_healthy(
                &self.name,
                &self.user,
                &self.argv,
                &self.env_file,
                &self.log,
                &self.healthy,
                HEALTHY_WAIT_SECONDS,
            );
            ok(
                conn.run(restart, None).await?,
                &format!("restarting {}", self.name),
            )?;
            return Ok(());
        }
        if matches!(state, State::Stale | State::Unstamped) {
            if self.on_change == OnChange::Reload {
                ok(
                    conn.run(sh::daemon_reload(&self.name), None).await?,
                    &format!("reloading {}", self.name),
                )?;
                return Ok(());
            }
            ok(
                conn.run(sh::daemon_stop(&self.name), None).await?,
                &format!("stopping {}", self.name),
            )?;
        }
        let start = sh::daemon_start(
            &self.name,
            &self.user,
            &self.argv,
            &self.env_file,
            &self.log,
        );
        ok(
            conn.run(start, None).await?,
            &format!("starting {}", self.name),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(acts_on: &str) -> Daemon {
        serde_norway::from_str(&format!(
            "{{name: etcd, user: etcd, argv: [etcd], config: /etc/default/etcd, \
             log: /var/log/pgform-etcd.log, on_change: restart, acts_on: {acts_on}, \
             healthy: 'etcdctl endpoint health --cluster'}}"
        ))
        .unwrap()
    }

    #[test]
    fn a_first_start_and_changed_settings_belong_to_different_tasks() {
        use State::*;
        let (all, start, settings) = (etcd("all"), etcd("start"), etcd("settings"));
        for s in [Stopped, Unstamped, Stale] {
            assert!(all.acts_on_state(&s), "{s:?}");
        }
        // The package's own start is a first start: every member at once.
        assert!(start.acts_on_state(&Stopped) && start.acts_on_state(&Unstamped));
        assert!(!start.acts_on_state(&Stale));
        assert!(settings.acts_on_state(&Stale));
        assert!(!settings.acts_on_state(&Stopped) && !settings.acts_on_state(&Unstamped));
        for d in [&all, &start, &settings] {
            assert!(!d.acts_on_state(&Running));
        }
        // Only a restart for changed settings waits for a healthy cluster.
        assert!(settings.waits_for_health(&Stale));
        assert!(!start.waits_for_health(&Unstamped));
        assert!(!start.waits_for_health(&Stopped));
    }
}
