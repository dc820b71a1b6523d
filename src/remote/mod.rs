//! SSH to the hosts: one multiplexed OpenSSH master per host (the `openssh` crate, so
//! ~/.ssh/config and the agent work as they do for `ssh`), through jump hosts with the
//! spec's key ([`jump`]), commands built by [`shell`], at most [`CHANNELS_PER_HOST`] at
//! once per host (sshd's MaxSessions is 10, and a session just ended may count a little
//! longer).
//!
//! Masters outlive the run by default ([`keep_masters`], ControlPersist): the next run on
//! the same host resumes one instead of paying for a new connection (~0.1 s a host). They
//! live in a private directory ([`masters_dir`]) under a name made from everything that
//! makes a host that host (address, port, user, key, jump chain, host-key policy and the
//! host's known-hosts lines), so a replaced host or a changed key gets a new master.

pub mod jump;
pub mod shell;

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use sha2::{Digest, Sha256};
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
    /// Keep the master this long after the run when idle, for the next run to resume
    /// (None: close it at the end of the run). See [`keep_masters`].
    pub keep_master: Option<Duration>,
}

/// The default idle time of kept masters, in seconds (0: masters are not kept).
static KEEP_MASTERS_SECS: AtomicU64 = AtomicU64::new(60);

/// How long masters are kept after a run by default (the CLI's `--ssh-persist`).
pub fn keep_masters() -> Option<Duration> {
    match KEEP_MASTERS_SECS.load(Ordering::Relaxed) {
        0 => None,
        s => Some(Duration::from_secs(s)),
    }
}

/// Sets [`keep_masters`] for this process (None: close masters at the end of each run).
pub fn set_keep_masters(keep: Option<Duration>) {
    KEEP_MASTERS_SECS.store(keep.map_or(0, |d| d.as_secs()), Ordering::Relaxed);
}

#[derive(Debug, Clone, thiserror::Error)]
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
    /// The master is kept after the run ([`Target::keep_master`]).
    kept: bool,
    /// For a kept master: a session held open for as long as the connection lives, so
    /// that the master's idle timeout cannot end it in the middle of a run (a host idle
    /// while others install for more than the timeout). It ends with the last clone.
    _hold: Option<Arc<openssh::Child<Arc<Session>>>>,
    /// File reads asked for at the same moment, answered by one command.
    reads: Arc<std::sync::Mutex<ReadBatch>>,
}

/// Reads waiting for the next batch, and whether a reader is gathering one.
#[derive(Default)]
struct ReadBatch {
    gathering: bool,
    waiting: Vec<(Read, Answer)>,
}

/// A read-only question to a host, which may share a command with others.
enum Read {
    /// A command that changes nothing and reads no standard input.
    Command(Sh),
    /// Read-only SQL for psql as postgres in database `postgres`, with this major.
    Sql { version: u32, sql: String },
}

type Answer = tokio::sync::oneshot::Sender<Result<Output, RemoteError>>;

impl Connection {
    /// Resumes the host's kept master when one is alive, or opens a new one (kept after
    /// the run when the target asks for it and the masters' directory is private).
    pub async fn open(target: &Target) -> Result<Connection, RemoteError> {
        let dir = target.keep_master.and_then(|_| masters_dir());
        if let Some(dir) = &dir
            && let Some(session) = resume(dir, target).await
        {
            return Ok(Connection::new(target, session, true).await);
        }
        let session = connect(target, dir.as_deref()).await?;
        let Some(dir) = dir else {
            return Ok(Connection::new(target, session, false).await);
        };
        // Named now, after the connection: accept-new has just added the host's key. A
        // name already taken (another run's master, made meanwhile) is left alone: this
        // master then ends with the run.
        let kept = master_path(&dir, target);
        let moved = session
            .control_socket()
            .parent()
            .is_some_and(|from| std::fs::rename(from, &kept).is_ok());
        if !moved {
            return Ok(Connection::new(target, session, false).await);
        }
        let _ = session.detach();
        let session = Session::resume_mux(kept.join("master").into(), None);
        Ok(Connection::new(target, session, true).await)
    }

    async fn new(target: &Target, session: Session, kept: bool) -> Connection {
        let session = Arc::new(session);
        let hold = if kept {
            // `cat` ends when its standard input closes: when the hold is dropped.
            let mut cmd = Session::to_raw_command(session.clone(), "cat");
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.spawn().await.ok().map(Arc::new)
        } else {
            None
        };
        Connection {
            target: Arc::new(target.clone()),
            session,
            channels: Arc::new(Semaphore::new(CHANNELS_PER_HOST)),
            kept,
            _hold: hold,
            reads: Arc::default(),
        }
    }

    /// [`shell::read_file`]'s output for `path`, shared as [`Self::run_read`] is.
    pub async fn read_file(&self, path: &str) -> Result<Output, RemoteError> {
        self.run_read(shell::read_file(path)).await
    }

    /// Runs `cmd` (as root, no standard input), which must change nothing. Reads asked
    /// for together (a task list's queries are all asked at once) share one command;
    /// one that fails there runs again alone, for its own error output.
    pub async fn run_read(&self, cmd: Sh) -> Result<Output, RemoteError> {
        self.read(Read::Command(cmd)).await
    }

    /// psql's output for read-only `sql` (as postgres, database `postgres`), shared with
    /// the other queries asked at the same moment: one psql for all when every one of
    /// them succeeds, else each runs alone (so each gets its own answer or error).
    pub async fn psql_read(&self, version: u32, sql: &str) -> Result<Output, RemoteError> {
        self.read(Read::Sql {
            version,
            sql: sql.to_string(),
        })
        .await
    }

    /// The first asker gathers the reads asked until its task yields, runs them as one
    /// command per kind, and hands each its output.
    async fn read(&self, read: Read) -> Result<Output, RemoteError> {
        let (answer, wait) = tokio::sync::oneshot::channel();
        let gather = {
            let mut batch = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            batch.waiting.push((read, answer));
            !std::mem::replace(&mut batch.gathering, true)
        };
        if gather {
            // The other reads of this moment are asked while this future waits.
            tokio::task::yield_now().await;
            let waiting = {
                let mut batch = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                batch.gathering = false;
                std::mem::take(&mut batch.waiting)
            };
            let (mut commands, mut sqls) = (Vec::new(), Vec::new());
            for (read, answer) in waiting {
                match read {
                    Read::Command(cmd) => commands.push((cmd, answer)),
                    Read::Sql { version, sql } => sqls.push(((version, sql), answer)),
                }
            }
            tokio::join!(self.read_commands(commands), self.read_sqls(sqls));
        }
        wait.await
            .unwrap_or_else(|_| Err(self.lost("a read was abandoned".into())))
    }

    async fn read_commands(&self, waiting: Vec<(Sh, Answer)>) {
        if waiting.len() < 2 {
            for (cmd, answer) in waiting {
                let _ = answer.send(self.run(cmd, None).await);
            }
            return;
        }
        let boundary = format!("pgform-{}", uuid::Uuid::new_v4().simple());
        let cmds: Vec<&Sh> = waiting.iter().map(|(c, _)| c).collect();
        let together = self.run(shell::batch(&cmds, &boundary), None).await;
        let mut parts = match &together {
            Ok(out) => split_reads(&out.stdout, &boundary, true).into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let again = waiting.into_iter().filter_map(|(cmd, answer)| {
            match (&together, parts.next().flatten()) {
                (Ok(_), Some(out)) => {
                    let _ = answer.send(Ok(out));
                    None
                }
                (Err(e), _) => {
                    let _ = answer.send(Err(e.clone()));
                    None
                }
                // Cut off (the batch ended early): alone.
                (Ok(_), None) => Some(async move {
                    let _ = answer.send(self.run(cmd, None).await);
                }),
            }
        });
        futures::future::join_all(again.collect::<Vec<_>>()).await;
    }

    async fn read_sqls(&self, mut waiting: Vec<((u32, String), Answer)>) {
        let alone = |(version, sql): (u32, String), answer: Answer| async move {
            let out = self
                .run(shell::psql(version, "postgres"), Some(sql.as_bytes()))
                .await;
            let _ = answer.send(out);
        };
        // One psql per major (there is one in practice).
        while let Some(((version, _), _)) = waiting.first() {
            let version = *version;
            let (same, rest): (Vec<_>, Vec<_>) =
                waiting.into_iter().partition(|((v, _), _)| *v == version);
            waiting = rest;
            if same.len() < 2 {
                for (q, answer) in same {
                    alone(q, answer).await;
                }
                continue;
            }
            // Each answer ends with an empty line, so that the boundary after it starts
            // a line of its own (see `split_reads`).
            let boundary = format!("pgform-{}", uuid::Uuid::new_v4().simple());
            let mut script = String::new();
            for ((_, sql), _) in &same {
                let sql = sql.trim_end();
                // A statement left open would run on into the next query (a psql
                // meta-command such as `\\endif` ends a script as well).
                let closed = sql.ends_with(';')
                    || sql
                        .lines()
                        .last()
                        .is_some_and(|l| l.trim_start().starts_with('\\'));
                let end = if closed { "" } else { ";" };
                script.push_str(&format!(
                    "\\echo {boundary} begin\n{sql}{end}\n\\echo\n\\echo {boundary} 0\n"
                ));
            }
            let together = self
                .run(shell::psql(version, "postgres"), Some(script.as_bytes()))
                .await;
            let parts = match &together {
                Ok(out) if out.success() && out.stderr.trim().is_empty() => {
                    split_reads(&out.stdout, &boundary, false)
                }
                _ => Vec::new(),
            };
            if parts.len() == same.len() && parts.iter().all(Option::is_some) {
                for ((_, answer), part) in same.into_iter().zip(parts) {
                    let _ = answer.send(part.ok_or_else(|| self.lost("unreachable".into())));
                }
            } else {
                // Something failed: each query alone, for its own answer or error.
                futures::future::join_all(same.into_iter().map(|(q, a)| alone(q, a))).await;
            }
        }
    }

    /// The control socket of this connection's master.
    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
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

    /// Ends the master connection, unless it is kept for the next run.
    pub async fn close(self) {
        if self.kept {
            return;
        }
        if let Ok(session) = Arc::try_unwrap(self.session) {
            let _ = session.close().await;
        }
    }
}

/// A new master for `target`; in `dir` with an idle timeout when it is to be kept.
async fn connect(target: &Target, dir: Option<&Path>) -> Result<Session, RemoteError> {
    let mut b = builder(target.strict_host_keys);
    if let (Some(dir), Some(keep)) = (dir, target.keep_master) {
        let secs = std::num::NonZeroUsize::new(keep.as_secs() as usize)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        b.control_directory(dir)
            .control_persist(ControlPersist::IdleFor(secs));
    }
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
    Ok(session)
}

/// The kept master of `target` in `dir`, if it is alive and still reaches the host: a
/// master whose host went away is closed (and its directory removed).
async fn resume(dir: &Path, target: &Target) -> Option<Session> {
    let path = master_path(dir, target);
    let socket = path.join("master");
    if !socket.exists() {
        // Nothing to resume; a directory left without its socket would block the name.
        let _ = std::fs::remove_dir_all(&path);
        return None;
    }
    let session = Session::resume_mux(socket.into(), None);
    // A round trip, not only the master's own liveness check: a host that went away
    // leaves a master that still answers locally.
    let mut probe = session.raw_command("true");
    probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let alive = matches!(
        tokio::time::timeout(RESUME_PROBE, probe.status()).await,
        Ok(Ok(status)) if status.success()
    );
    if alive {
        return Some(session);
    }
    let _ = session.close().await;
    let _ = std::fs::remove_dir_all(&path);
    None
}

/// How long a kept master may take to show it still reaches its host.
const RESUME_PROBE: Duration = Duration::from_secs(3);

/// Where kept masters live: `$XDG_RUNTIME_DIR/pgform-ssh` or `/tmp/pgform-ssh-<uid>`
/// (short: a unix socket's path must fit in ~108 bytes), made owner-only (0700). None
/// (masters are then not kept) when it is not a directory of this user's that only this
/// user can enter.
pub fn masters_dir() -> Option<PathBuf> {
    let me = tempfile::tempfile().ok()?.metadata().ok()?.uid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("pgform-ssh"),
        _ => PathBuf::from(format!("/tmp/pgform-ssh-{me}")),
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == me && meta.permissions().mode() & 0o077 == 0;
    if !private {
        tracing::warn!(
            "{} is not a private directory of this user's (owner-only, mode 700): SSH \
             masters are not kept between runs",
            dir.display()
        );
    }
    private.then_some(dir)
}

/// The kept master's directory for `target` in `dir`: the address's digest, then the
/// digest of everything that makes the host that host, so that [`close_kept_masters`]
/// finds every master of an address.
fn master_path(dir: &Path, target: &Target) -> PathBuf {
    let address = format!("{}:{}", target.address, target.port);
    let mut id = format!(
        "{address}\n{}\n{}\n{}\n",
        target.user,
        target.strict_host_keys,
        target
            .known_hosts_file
            .as_deref()
            .unwrap_or(Path::new(""))
            .display()
    );
    let keys = target
        .private_key
        .iter()
        .chain(target.jump.iter().filter_map(|h| h.private_key.as_ref()));
    for key in keys {
        id.push_str(&key_identity(key));
    }
    for hop in &target.jump {
        id.push_str(&format!("hop {hop}\n"));
    }
    if let Some(file) = &target.known_hosts_file {
        let mut hosts = vec![known_hosts_name(&target.address, target.port)];
        hosts.extend(
            target
                .jump
                .iter()
                .map(|h| known_hosts_name(&h.host, h.port.unwrap_or(22))),
        );
        id.push_str(&known_hosts_lines(file, &hosts));
    }
    dir.join(format!("{}-{}", digest(&address, 8), digest(&id, 16)))
}

/// A key file as part of a master's identity: its path, size and modification time (a
/// new key at the same path is another identity; the key itself is never read).
fn key_identity(key: &Path) -> String {
    let meta = std::fs::metadata(key).ok();
    let modified = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "key {} {} {modified}\n",
        key.display(),
        meta.map_or(0, |m| m.len())
    )
}

/// How known_hosts names a host.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The lines of a known-hosts file about `hosts` (and every hashed line, which cannot
/// be told apart without hashing: a change there makes new masters, never reuses).
fn known_hosts_lines(file: &Path, hosts: &[String]) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| {
            let names = l.split_whitespace().next().unwrap_or("");
            names.starts_with('|') || names.split(',').any(|n| hosts.iter().any(|h| h == n))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The first `n` hex digits of `text`'s SHA-256.
fn digest(text: &str, n: usize) -> String {
    let mut hex = hex::encode(Sha256::digest(text.as_bytes()));
    hex.truncate(n);
    hex
}

/// Closes every kept master of `address`:`port` (a host pgform has just replaced: its
/// key is forgotten, and no run may reach its successor through the old connection).
pub async fn close_kept_masters(address: &str, port: u16) {
    let Some(dir) = masters_dir() else {
        return;
    };
    let prefix = format!("{}-", digest(&format!("{address}:{port}"), 8));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let session = Session::resume_mux(entry.path().join("master").into(), None);
        let _ = session.close().await;
        let _ = std::fs::remove_dir_all(entry.path());
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

/// A batch's output, one [`Output`] per command in order (`None` from where it cannot
/// be told apart): [`shell::batch`]'s (`with_stderr`), or psql's between `\echo`
/// boundaries (an exit status line only).
fn split_reads(stdout: &str, boundary: &str, with_stderr: bool) -> Vec<Option<Output>> {
    let begin = format!("{boundary} begin\n");
    let status_line = format!("\n{boundary} ");
    let end_line = format!("\n{boundary} end\n");
    let mut parts = Vec::new();
    let mut rest = stdout;
    while let Some(start) = rest.find(&begin) {
        let body = &rest[start + begin.len()..];
        let Some(end) = body.find(&status_line) else {
            parts.push(None);
            break;
        };
        let after = &body[end + status_line.len()..];
        let (code, mut next) = after.split_once('\n').unwrap_or((after, ""));
        let mut stderr = String::new();
        if with_stderr {
            // The standard error ends with a newline of the batch's before the end line.
            let Some(e) = format!("\n{next}").find(&end_line) else {
                parts.push(None);
                break;
            };
            stderr = next[..e.saturating_sub(1)].to_string();
            next = &next[(e + end_line.len()).saturating_sub(1)..];
        }
        parts.push(Some(Output {
            status: code.trim().parse::<i32>().ok(),
            stdout: body[..end].to_string(),
            stderr,
        }));
        rest = next;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of file reads, run by a real shell on real files, splits back into what
    /// each read prints alone.
    #[test]
    fn batched_file_reads_split_into_each_files_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("no-newline", Some("last line")),
            ("newline", Some("a\nb\n")),
            ("empty", Some("")),
            ("absent", None),
            (
                "looks like a boundary",
                Some("pgform-x begin\n\npgform-x 0\n"),
            ),
            ("it's quoted", Some("$(touch pwned) `id`\n")),
        ];
        let paths: Vec<String> = files
            .iter()
            .map(|(name, content)| {
                let p = dir.path().join(name);
                if let Some(c) = content {
                    std::fs::write(&p, c).unwrap();
                }
                p.to_string_lossy().into_owned()
            })
            .collect();
        let sh = |text: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", text])
                .current_dir(dir.path())
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert!(!refs.is_empty());
        let boundary = "pgform-0123456789abcdef";
        let reads: Vec<Sh> = refs.iter().map(|p| shell::read_file(p)).collect();
        let together = sh(shell::batch(&reads.iter().collect::<Vec<_>>(), boundary).text());
        let parts = split_reads(&together, boundary, true);
        assert_eq!(parts.len(), files.len(), "{together}");
        for (path, part) in paths.iter().zip(parts) {
            let part = part.unwrap_or_else(|| panic!("{path}: not found in {together}"));
            assert_eq!(part.status, Some(0), "{path}");
            assert_eq!(part.stdout, sh(shell::read_file(path).text()), "{path}");
        }
        assert!(!dir.path().join("pwned").exists());

        // A failing command keeps its status and its own standard error.
        let absent = dir.path().join("absent").to_string_lossy().into_owned();
        let cmds = [
            shell::exists(&absent),
            Sh::argv(["ls", absent.as_str()]),
            Sh::argv(["echo", "ok"]),
        ];
        let together = sh(shell::batch(&cmds.iter().collect::<Vec<_>>(), boundary).text());
        let parts: Vec<Output> = split_reads(&together, boundary, true)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(parts[0].status, Some(1));
        assert_eq!(parts[1].status, Some(2));
        assert!(parts[1].stderr.contains("No such file"), "{:?}", parts[1]);
        assert!(parts[1].stderr.ends_with('\n') && !parts[0].stderr.contains("No such"));
        assert_eq!(
            (parts[2].status, parts[2].stdout.as_str()),
            (Some(0), "ok\n")
        );
    }

    #[test]
    fn a_cut_off_batch_leaves_the_rest_unanswered() {
        let b = "pgform-b";
        let parts = split_reads(
            "pgform-b begin\nabsent\n\npgform-b 0\n\npgform-b end\npgform-b begin\nroot",
            b,
            true,
        );
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ref().unwrap().stdout, "absent\n");
        assert!(parts[1].is_none());
        let psql = split_reads("pgform-b begin\n1\n\npgform-b 0\n", b, false);
        assert_eq!(psql[0].as_ref().unwrap().stdout, "1\n");
    }

    fn target(dir: &Path) -> Target {
        Target {
            name: "primary".into(),
            address: "10.0.0.11".into(),
            port: 22,
            user: "admin".into(),
            private_key: Some(dir.join("id")),
            jump: Vec::new(),
            strict_host_keys: false,
            known_hosts_file: Some(dir.join("known_hosts")),
            keep_master: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn a_master_is_named_after_what_makes_the_host_that_host() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("id"), "key one").unwrap();
        std::fs::write(
            dir.join("known_hosts"),
            "10.0.0.11 ssh-ed25519 AAAAone\n10.0.0.12 ssh-ed25519 AAAAother\n",
        )
        .unwrap();
        let base = target(dir);
        let name = master_path(Path::new("/m"), &base);
        assert_eq!(name, master_path(Path::new("/m"), &base.clone()), "stable");
        // "/tmp/pgform-ssh-<uid>/" + the name + "/master" fits a unix socket's ~108 bytes.
        assert_eq!(name.file_name().unwrap().len(), 8 + 1 + 16);

        let changed = |f: &dyn Fn(&mut Target)| {
            let mut t = base.clone();
            f(&mut t);
            master_path(Path::new("/m"), &t)
        };
        assert_ne!(name, changed(&|t| t.port = 2222));
        assert_ne!(name, changed(&|t| t.user = "root".into()));
        assert_ne!(name, changed(&|t| t.strict_host_keys = true));
        assert_ne!(name, changed(&|t| t.private_key = None));
        assert_ne!(
            name,
            changed(&|t| t.jump = vec![Hop {
                host: "bastion".into(),
                port: None,
                user: None,
                private_key: None,
            }])
        );
        // The same address's other masters share the prefix close_kept_masters looks for.
        let other_user = changed(&|t| t.user = "root".into());
        let prefix = |p: &Path| p.file_name().unwrap().to_string_lossy()[..9].to_string();
        assert_eq!(prefix(&name), prefix(&other_user));
        assert_ne!(
            prefix(&name),
            prefix(&changed(&|t| t.address = "10.0.0.12".into()))
        );

        // Another host's line does not matter; this host's does.
        std::fs::write(
            dir.join("known_hosts"),
            "10.0.0.11 ssh-ed25519 AAAAone\n10.0.0.12 ssh-ed25519 AAAAnew\n",
        )
        .unwrap();
        assert_eq!(name, master_path(Path::new("/m"), &base));
        std::fs::write(dir.join("known_hosts"), "10.0.0.11 ssh-ed25519 AAAAtwo\n").unwrap();
        assert_ne!(name, master_path(Path::new("/m"), &base));

        // A new key written at the same path is another identity.
        std::fs::write(
            dir.join("known_hosts"),
            "10.0.0.11 ssh-ed25519 AAAAone\n10.0.0.12 ssh-ed25519 AAAAother\n",
        )
        .unwrap();
        assert_eq!(name, master_path(Path::new("/m"), &base));
        std::fs::write(dir.join("id"), "key number two").unwrap();
        assert_ne!(name, master_path(Path::new("/m"), &base));
    }
}
