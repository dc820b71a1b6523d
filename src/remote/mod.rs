//! SSH to the hosts: one multiplexed OpenSSH master per host (the `openssh` crate, so
//! ~/.ssh/config and the agent work as they do for `ssh`), through jump hosts with the
//! spec's key ([`jump`]), commands built by [`shell`], at most [`CHANNELS_PER_HOST`] at
//! once per host (sshd's MaxSessions is 10, and a session just ended may count a little
//! longer).

pub mod jump;
pub mod shell;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

pub use jump::Hop;
pub use shell::Sh;

pub const CHANNELS_PER_HOST: usize = 6;

/// What the master says when sshd refuses a new session (MaxSessions reached).
const SESSION_REFUSED: &str = "Session open refused";
/// How often a refused session is retried (waiting 20 ms more each time: ~1.6 s in all).
const SESSION_RETRIES: u64 = 12;

/// How to reach one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name the reports use (`primary`, `replica1`).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub private_key: Option<PathBuf>,
    /// Bastions to go through, in order (empty: connect directly).
    pub jump: Vec<Hop>,
    /// Reject unknown host keys, the hops' too (otherwise new hosts are trusted on first
    /// contact).
    pub strict_host_keys: bool,
    pub known_hosts_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {host} ({address}): {message}")]
    Connect {
        host: String,
        address: String,
        message: String,
    },
    #[error("cannot reach the jump host {jump} on the way to {host} ({address}): {message}")]
    Jump {
        host: String,
        address: String,
        jump: String,
        message: String,
    },
    #[error("lost the connection to {host}: {message}")]
    Lost { host: String, message: String },
}

impl RemoteError {
    /// The name of the host the error is about.
    pub fn host(&self) -> &str {
        match self {
            RemoteError::Connect { host, .. }
            | RemoteError::Jump { host, .. }
            | RemoteError::Lost { host, .. } => host,
        }
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    /// The last lines of stderr (or stdout), for an error message.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.trim().lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    }
}

/// A live connection to one host.
#[derive(Clone)]
pub struct Connection {
    target: Arc<Target>,
    session: Arc<Session>,
    channels: Arc<Semaphore>,
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection, RemoteError> {
        let mut b = builder(target.strict_host_keys);
        b.user(target.user.clone()).port(target.port);
        if let Some(key) = &target.private_key {
            b.keyfile(key);
        }
        if let Some(file) = &target.known_hosts_file {
            b.user_known_hosts_file(file);
        }
        // ssh reads the config only while it connects: the file can go once it has.
        let config = match target.jump.last() {
            Some(last) => {
                let file = jump_config(target)?;
                b.config_file(file.path()).jump_hosts([&last.host]);
                Some(file)
            }
            None => None,
        };
        let session = match b.connect_mux(&target.address).await {
            Ok(s) => s,
            Err(e) => {
                let err = match &config {
                    Some(file) => first_unreachable_hop(target, file.path()).await,
                    None => None,
                };
                return Err(err.unwrap_or_else(|| RemoteError::Connect {
                    host: target.name.clone(),
                    address: target.address.clone(),
                    message: error_text(&e),
                }));
            }
        };
        Ok(Connection {
            target: Arc::new(target.clone()),
            session: Arc::new(session),
            channels: Arc::new(Semaphore::new(CHANNELS_PER_HOST)),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `cmd` as root (sudo when the login user is not root), with `stdin` fed to it.
    pub async fn run(&self, cmd: Sh, stdin: Option<&[u8]>) -> Result<Output, RemoteError> {
        let cmd = cmd.as_root(&self.target.user);
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        let mut attempt = 0;
        let mut child = loop {
            let mut command = self.session.raw_command(cmd.text());
            command
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match command.spawn().await {
                Ok(child) => break child,
                // sshd counts a session until the master has acknowledged its close, so
                // one just ended may still hold a slot of MaxSessions: nothing ran, retry.
                Err(e) if attempt < SESSION_RETRIES && error_text(&e).contains(SESSION_REFUSED) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => return Err(self.lost(error_text(&e))),
            }
        };
        if let Some(data) = stdin
            && let Some(mut pipe) = child.stdin().take()
        {
            pipe.write_all(data)
                .await
                .map_err(|e| self.lost(e.to_string()))?;
            pipe.shutdown()
                .await
                .map_err(|e| self.lost(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.lost(error_text(&e)))?;
        Ok(Output {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn lost(&self, message: String) -> RemoteError {
        RemoteError::Lost {
            host: self.target.name.clone(),
            message,
        }
    }

    /// Ends the master connection.
    pub async fn close(self) {
        if let Ok(session) = Arc::try_unwrap(self.session) {
            let _ = session.close().await;
        }
    }
}

/// The options every master gets, the jump hosts' probes included.
fn builder(strict_host_keys: bool) -> SessionBuilder {
    let mut b = SessionBuilder::default();
    b.connect_timeout(Duration::from_secs(15))
        .server_alive_interval(Duration::from_secs(15))
        .known_hosts_check(if strict_host_keys {
            KnownHosts::Strict
        } else {
            KnownHosts::Add
        })
        .control_directory(std::env::temp_dir());
    b
}

/// Writes the jump hosts' ssh config to a private temporary file (mode 600, random name).
fn jump_config(target: &Target) -> Result<tempfile::NamedTempFile, RemoteError> {
    let text = jump::ssh_config(
        &target.jump,
        target.strict_host_keys,
        target.known_hosts_file.as_deref(),
    );
    let write = || -> std::io::Result<tempfile::NamedTempFile> {
        let mut file = tempfile::Builder::new()
            .prefix("pgform-ssh-")
            .suffix(".conf")
            .tempfile()?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        Ok(file)
    };
    write().map_err(|e| RemoteError::Connect {
        host: target.name.clone(),
        address: target.address.clone(),
        message: format!("cannot write the jump hosts' ssh config: {e}"),
    })
}

/// After a failed connection through jump hosts: the first hop that cannot be reached
/// itself (each tried through the ones before it), so that the error names the bastion
/// rather than the database host. None when every hop answers.
async fn first_unreachable_hop(target: &Target, config: &Path) -> Option<RemoteError> {
    for hop in &target.jump {
        let mut b = builder(target.strict_host_keys);
        b.config_file(config);
        match b.connect_mux(&hop.host).await {
            Ok(session) => {
                let _ = session.close().await;
            }
            Err(e) => {
                return Some(RemoteError::Jump {
                    host: target.name.clone(),
                    address: target.address.clone(),
                    jump: hop.to_string(),
                    // The hop's own words (ssh's), not openssh's generic preamble.
                    message: error_text(&e)
                        .trim_start_matches("failed to connect to the remote host: ")
                        .to_string(),
                });
            }
        }
    }
    None
}

/// openssh's errors nest the useful part (ssh's own message) in their sources.
fn error_text(e: &openssh::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
