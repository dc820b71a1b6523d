//! `daemon`: a service that is not a Debian PostgreSQL cluster (etcd, Patroni) running
//! with its current settings. With systemd it is the package's unit; without (the
//! container hosts) pgform starts the program itself as its user, in its own session,
//! with a pid file written from inside. "Current settings" is read from the host: the
//! settings file newer than pgform's last start or reload means restart (etcd) or
//! reload (Patroni), so a run that stopped half-way is finished by the next.
//!
//! A daemon whose members form a quorum (etcd) splits its work in two tasks: the
//! start of a stopped member (`acts_on: start`, every host at once: a new cluster
//! needs its members up together) and the restart its changed settings need
//! (`acts_on: settings` with `throttle: 1` and `healthy`): one member at a time, each
//! only while the whole cluster is healthy and waited for until it is again, so the
//! quorum never goes.

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
    /// Starts a stopped daemon only (a running one with changed settings is left alone).
    Start,
    /// Applies changed settings to a running daemon only (a stopped one is left alone).
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

#[derive(Debug, PartialEq, Eq)]
enum State {
    Stopped,
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
            "stale" => State::Stale,
            _ => State::Running,
        })
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        let state = self.state(conn).await?;
        if !self.acts_on_state(&state) {
            return Ok(None);
        }
        let what = match state {
            State::Running => return Ok(None),
            State::Stopped => format!("start {}", self.name),
            State::Stale => match self.on_change {
                OnChange::Restart if self.healthy.is_empty() => {
                    format!("restart {} (its settings changed)", self.name)
                }
                OnChange::Restart => format!(
                    "restart {} (its settings changed), once its cluster is healthy",
                    self.name
                ),
                OnChange::Reload => format!("reload {} (its settings changed)", self.name),
            },
        };
        Ok(Some(Change {
            summary: what,
            diff: None,
            note_only: false,
        }))
    }

    fn acts_on_state(&self, state: &State) -> bool {
        match self.acts_on {
            ActsOn::All => true,
            ActsOn::Start => *state != State::Stale,
            ActsOn::Settings => *state != State::Stopped,
        }
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let state = self.state(conn).await?;
        if !self.acts_on_state(&state) {
            return Ok(());
        }
        if state == State::Stale && self.on_change == OnChange::Restart && !self.healthy.is_empty()
        {
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
        if state == State::Stale {
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
        if state != State::Running {
            ok(
                conn.run(
                    sh::daemon_start(
                        &self.name,
                        &self.user,
                        &self.argv,
                        &self.env_file,
                        &self.log,
                    ),
                    None,
                )
                .await?,
                &format!("starting {}", self.name),
            )?;
        }
        Ok(())
    }
}
