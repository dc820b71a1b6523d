//! `daemon`: a service that is not a Debian PostgreSQL cluster (etcd, Patroni) running
//! with its current settings. With systemd it is the package's unit; without (the
//! container hosts) pgform starts the program itself as its user, in its own session,
//! with a pid file written from inside. "Current settings" is read from the host: the
//! settings file newer than pgform's last start or reload means restart (etcd) or
//! reload (Patroni), so a run that stopped half-way is finished by the next.

use serde::Deserialize;

use super::modules::{ActionError, Change, ok};
use crate::remote::{Connection, shell::ha as sh};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    Restart,
    Reload,
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
}

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
        let what = match self.state(conn).await? {
            State::Running => return Ok(None),
            State::Stopped => format!("start {}", self.name),
            State::Stale => match self.on_change {
                OnChange::Restart => format!("restart {} (its settings changed)", self.name),
                OnChange::Reload => format!("reload {} (its settings changed)", self.name),
            },
        };
        Ok(Some(Change {
            summary: what,
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let state = self.state(conn).await?;
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
