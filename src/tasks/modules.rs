//! The actions a task can take. Each one first asks the host what needs doing
//! ([`Action::query`]) and acts ([`Action::act`]) only when something does. Shell text
//! comes from `remote::shell`; SQL goes to psql on standard input.

use serde::Deserialize;
use similar::TextDiff;

use super::pg_conf;
use crate::remote::{Connection, Output, Sh, shell};

/// What a task would change on a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub summary: String,
    /// A unified diff of a file's content, when the task writes one.
    pub diff: Option<String>,
    /// Nothing to do: the summary is a note for the plan (e.g. what is kept).
    pub note_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Remote(#[from] crate::remote::RemoteError),
    #[error("{what} failed (exit {status}): {detail}")]
    Command {
        what: String,
        status: String,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A task's action with its arguments rendered for one host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Debian packages installed (apt).
    Package { names: Vec<String> },
    /// A file rendered from a template in `playbooks/templates/`.
    Template {
        src: String,
        dest: String,
        #[serde(flatten)]
        meta: Meta,
    },
    /// PostgreSQL running the settings of a postgresql.conf include (in `conf.d`)
    /// rendered from a template: its change says which parameters need a restart and
    /// which only a reload, or what the running server still has to do. The file is
    /// checked by PostgreSQL's parser before it lands, then reloaded (and restarted)
    /// with the previous file put back on any refusal (see `pg_conf.rs`).
    PgConf {
        src: String,
        dest: String,
        version: String,
        #[serde(flatten)]
        meta: Meta,
    },
    /// A file with the given content.
    Copy {
        content: String,
        dest: String,
        #[serde(flatten)]
        meta: Meta,
    },
    /// A block of lines between markers inside a file that the system owns.
    Block {
        path: String,
        block: String,
        #[serde(default = "default_marker")]
        marker: String,
    },
    /// A path that must be absent, or a directory.
    File {
        path: String,
        state: FileState,
        #[serde(flatten)]
        meta: Meta,
    },
    /// A command, guarded so it runs only when needed.
    Command {
        argv: Vec<String>,
        /// Skip when this path exists.
        creates: Option<String>,
        /// Skip when this command succeeds (its exit status is the query).
        unless: Option<Vec<String>>,
    },
    /// A PostgreSQL cluster in the given state (`pg_ctlcluster`, which hands over to
    /// systemctl on systemd hosts; `pg_ctl -w` on hosts without systemd, see
    /// `shell::pg_ctlcluster`).
    Service {
        version: String,
        state: ServiceState,
    },
    /// After a settings change: reload, then restart if a changed parameter needs it
    /// (pg_settings.pending_restart). A stopped cluster is left alone: it reads its
    /// files when it starts. (`pg_conf` reloads and restarts for its own file; this
    /// covers pg_hba.conf, and the Ansible export's template.)
    ApplySettings { version: String },
    /// A login role with the given password and attributes.
    PgRole {
        version: String,
        name: String,
        password: String,
        #[serde(default)]
        replication: bool,
    },
    /// The spec's databases, users and privileges (see `pg_access.rs`): `access` is
    /// the JSON of `pg_access::Desired`, `passwords` a JSON map of user name to
    /// password (the secret variable `user_passwords`).
    PgAccess {
        version: String,
        access: String,
        passwords: String,
    },
    /// Exactly these physical replication slots among those starting with `prefix`.
    PgSlots {
        version: String,
        names: String,
        prefix: String,
    },
    /// A standby seeded from the primary with pg_basebackup, unless it already is one of
    /// that primary (same system identifier).
    BaseBackup {
        version: String,
        data_dir: String,
        primary: String,
        user: String,
        slot: String,
        /// The CA on the host: the standby verifies the primary's certificate
        /// (`sslmode=verify-full`). Empty: no TLS.
        #[serde(default)]
        sslrootcert: String,
    },
    /// PostgreSQL's data disk formatted (only when empty) and mounted (`volume.rs`).
    DataVolume(super::volume::DataVolume),
    /// The cluster CA, the node's certificate and key from pgform's TLS folder.
    TlsFiles(Box<super::tls_files::TlsFiles>),
    /// A standby's primary_conninfo with `sslmode=verify-full`.
    StandbyTls(super::conninfo::StandbyTls),
    /// etcd or Patroni running with its current settings (`daemon.rs`).
    Daemon(Box<super::daemon::Daemon>),
    /// Patroni's dynamic configuration as the spec says (`patroni.rs`).
    PatroniConfig(Box<super::patroni::PatroniConfig>),
    /// A plain-mode cluster handed to Patroni with its data (`takeover.rs`).
    PatroniTakeover(Box<super::takeover::Takeover>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Meta {
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    #[serde(default = "default_mode")]
    pub mode: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Absent,
    Directory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Started,
    Restarted,
    Reloaded,
}

fn root() -> String {
    "root".into()
}
fn default_mode() -> String {
    "644".into()
}
fn default_marker() -> String {
    "pgform".into()
}

/// What the runner gives an action besides its arguments.
pub struct Cx<'a> {
    pub conn: &'a Connection,
    /// Renders a template file by name for this host.
    pub render: &'a (dyn Fn(&str) -> Result<String, ActionError> + Send + Sync),
}

impl Action {
    /// Parses a task's module key and arguments (`package: {names: [...]}`).
    pub fn parse(value: &serde_norway::Value) -> Result<Action, String> {
        let map = value.as_mapping().ok_or("a task needs one module")?;
        if map.len() != 1 {
            let keys: Vec<String> = map
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect();
            return Err(format!(
                "a task needs exactly one module, found {}",
                if keys.is_empty() {
                    "none".into()
                } else {
                    keys.join(", ")
                }
            ));
        }
        // YAML's own enum form is a tagged value (`!package`); a one-key map reads as
        // an externally tagged enum once it is plain data.
        let plain = serde_json::to_value(value).map_err(|e| e.to_string())?;
        serde_json::from_value(plain).map_err(|e| e.to_string())
    }

    pub fn template_name(&self) -> Option<&str> {
        match self {
            Action::Template { src, .. } | Action::PgConf { src, .. } => Some(src),
            _ => None,
        }
    }

    /// What needs doing on this host, or `None` when it is as asked.
    pub async fn query(&self, cx: &Cx<'_>) -> Result<Option<Change>, ActionError> {
        let conn = cx.conn;
        match self {
            Action::Package { names } => {
                let out = ok(
                    conn.run_read(shell::package_status(names)).await?,
                    "dpkg-query",
                )?;
                let installed: Vec<&str> = out
                    .stdout
                    .lines()
                    .filter_map(|l| l.strip_suffix(" installed"))
                    .collect();
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| !installed.contains(&n.as_str()))
                    .collect();
                Ok((!missing.is_empty()).then(|| {
                    change(format!(
                        "install {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                }))
            }
            Action::Template { src, dest, meta } => {
                let content = (cx.render)(src)?;
                file_change(conn, dest, &content, meta).await
            }
            Action::PgConf {
                src,
                dest,
                version,
                meta,
            } => {
                let v = version_number(version)?;
                let content = (cx.render)(src)?;
                // The file and what the server runs, asked at once.
                let (current, running) =
                    futures::future::join(read(conn, dest), pg_conf::Running::read(conn, v, dest))
                        .await;
                let current = current?;
                let old = current
                    .as_ref()
                    .map(|(_, text)| text.clone())
                    .unwrap_or_default();
                if let Some(mut c) = compare_file(dest, current, &content, meta) {
                    if let Some(effect) = settings_effect(v, &old, &content) {
                        c.summary = format!("{}: {effect}", c.summary);
                    }
                    return Ok(Some(c));
                }
                // The file is as asked; the running server must run it too.
                match running {
                    Ok(running) => Ok(running
                        .pending()
                        .map(|what| change(format!("apply {dest}: {what}")))),
                    // A stopped server reads the file when it starts.
                    Err(_) if !cluster_online(conn, v).await? => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Action::Copy {
                content,
                dest,
                meta,
            } => file_change(conn, dest, content, meta).await,
            Action::Block {
                path,
                block,
                marker,
            } => {
                let current = read(conn, path).await?;
                let Some((_, text)) = current else {
                    // Only check mode gets here legitimately (the package that creates
                    // the file is not installed yet); a real run fails in `act`.
                    return Ok(Some(Change {
                        summary: format!("add block to {path} (which does not exist yet)"),
                        diff: None,
                        note_only: false,
                    }));
                };
                let wanted = with_block(&text, marker, block);
                Ok((wanted != text).then(|| Change {
                    summary: format!("update block in {path}"),
                    diff: Some(unified(path, &text, &wanted)),
                    note_only: false,
                }))
            }
            Action::File { path, state, meta } => match state {
                FileState::Absent => {
                    let there = conn.run_read(shell::exists(path)).await?.success();
                    Ok(there.then(|| change(format!("remove {path}"))))
                }
                FileState::Directory => {
                    let out = ok(conn.run_read(shell::dir_meta(path)).await?, "stat")?;
                    let now = out.stdout.trim();
                    let want = format!("{} {} {}", meta.owner, meta.group, meta.mode);
                    Ok((now != want).then(|| change(format!("directory {path} ({want})"))))
                }
            },
            Action::Command {
                argv,
                creates,
                unless,
            } => {
                if let Some(path) = creates
                    && conn.run_read(shell::exists(path)).await?.success()
                {
                    return Ok(None);
                }
                if let Some(check) = unless
                    && conn.run(Sh::argv(check), None).await?.success()
                {
                    return Ok(None);
                }
                Ok(Some(change(format!("run {}", argv.join(" ")))))
            }
            Action::Service { version, state } => {
                let online = cluster_online(conn, version_number(version)?).await?;
                Ok(match state {
                    ServiceState::Started if online => None,
                    ServiceState::Started => Some(change("start PostgreSQL".into())),
                    ServiceState::Restarted => Some(change("restart PostgreSQL".into())),
                    ServiceState::Reloaded => Some(change("reload PostgreSQL".into())),
                })
            }
            Action::ApplySettings { version } => {
                // A stopped server reads its files when it starts: nothing to apply.
                if !cluster_online(conn, version_number(version)?).await? {
                    return Ok(None);
                }
                Ok(Some(change(
                    "reload PostgreSQL (restart if a setting needs it)".into(),
                )))
            }
            Action::PgRole {
                version,
                name,
                password,
                replication,
            } => {
                let v = version_number(version)?;
                let rows = match sql_read(
                    conn,
                    v,
                    &format!(
                        "SELECT rolcanlogin, rolreplication, coalesce(rolpassword, '') \
                         FROM pg_authid WHERE rolname = {};",
                        literal(name)
                    ),
                )
                .await
                {
                    Ok(rows) => rows,
                    Err(_) if !cluster_online(conn, v).await? => {
                        return Ok(Some(change(format!(
                            "create role {name} (PostgreSQL is not running yet)"
                        ))));
                    }
                    Err(e) => return Err(e),
                };
                let mut fields = rows.trim().splitn(3, '|');
                let (login, repl, stored) = (fields.next(), fields.next(), fields.next());
                let want_repl = if *replication { "t" } else { "f" };
                if login != Some("t") || repl != Some(want_repl) {
                    return Ok(Some(change(format!("create or alter role {name}"))));
                }
                // The password is right if the stored verifier is one of it: the check
                // a login makes. A password the verifier cannot be computed for here is
                // tried by a TCP login (read from ~postgres/.pgpass, an earlier task).
                let right = match super::scram::matches(password, stored.unwrap_or("")) {
                    Some(right) => right,
                    None => conn
                        .run(
                            shell::psql_tcp(v, "127.0.0.1", name, "postgres", false),
                            Some(b"SELECT 1;"),
                        )
                        .await?
                        .success(),
                };
                Ok((!right).then(|| change(format!("set the password of role {name}"))))
            }
            Action::PgAccess {
                version,
                access,
                passwords,
            } => {
                let v = version_number(version)?;
                let (desired, passwords) = access_args(access, passwords)?;
                if desired.is_empty() && !cluster_online(conn, v).await? {
                    return Ok(None);
                }
                match super::pg_access::query(conn, v, &desired, &passwords).await {
                    Ok(work) => Ok(super::pg_access::change(&work)),
                    Err(_) if !cluster_online(conn, v).await? => Ok(Some(change(
                        "create databases and users (PostgreSQL is not running yet)".into(),
                    ))),
                    Err(e) => Err(e),
                }
            }
            Action::PgSlots {
                version,
                names,
                prefix,
            } => {
                let v = version_number(version)?;
                let (missing, extra) = match slot_changes(conn, v, names, prefix).await {
                    Ok(changes) => changes,
                    Err(_) if !cluster_online(conn, v).await? => {
                        return Ok(Some(change(format!(
                            "create slot {names} (PostgreSQL is not running yet)"
                        ))));
                    }
                    Err(e) => return Err(e),
                };
                if missing.is_empty() && extra.is_empty() {
                    return Ok(None);
                }
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!("create slot {}", missing.join(", ")));
                }
                if !extra.is_empty() {
                    parts.push(format!("drop slot {}", extra.join(", ")));
                }
                Ok(Some(change(parts.join("; "))))
            }
            Action::BaseBackup {
                version,
                data_dir,
                primary,
                user,
                slot,
                ..
            } => {
                let v = version_number(version)?;
                // A standby streaming from this primary through its slot is seeded: its
                // WAL receiver compared the system identifiers when it connected.
                let receiver = sql_read(
                    conn,
                    v,
                    "SELECT status, sender_host, slot_name FROM pg_stat_wal_receiver;",
                )
                .await;
                if receiver.is_ok_and(|r| r.trim() == format!("streaming|{primary}|{slot}")) {
                    return Ok(None);
                }
                let local = conn
                    .run(shell::control_system_identifier(v, data_dir), None)
                    .await?
                    .stdout
                    .trim()
                    .to_string();
                let standby = conn
                    .run_read(shell::exists(&format!("{data_dir}/standby.signal")))
                    .await?
                    .success();
                if !standby || local.is_empty() {
                    // Not a standby of anything: no need to ask the primary (which, in
                    // check mode on bare hosts, does not run yet).
                    return Ok(Some(change(format!(
                        "seed from {primary} with pg_basebackup"
                    ))));
                }
                let remote = conn
                    .run(
                        shell::psql_tcp(v, primary, user, "postgres", true),
                        Some(b"IDENTIFY_SYSTEM;"),
                    )
                    .await?;
                let remote = ok(remote, "IDENTIFY_SYSTEM on the primary")?;
                let primary_id = remote
                    .stdout
                    .split('|')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let seeded = standby && !local.is_empty() && local == primary_id;
                Ok((!seeded).then(|| change(format!("seed from {primary} with pg_basebackup"))))
            }
            Action::DataVolume(v) => v.query(conn).await,
            Action::TlsFiles(t) => t.query(conn).await,
            Action::StandbyTls(t) => t.query(conn).await,
            Action::Daemon(d) => d.query(conn).await,
            Action::PatroniConfig(c) => c.query(conn).await,
            Action::PatroniTakeover(t) => t.query(conn).await,
        }
    }

    /// Makes the change that [`Action::query`] found.
    pub async fn act(&self, cx: &Cx<'_>) -> Result<(), ActionError> {
        let conn = cx.conn;
        match self {
            Action::Package { names } => {
                ok(
                    conn.run(shell::apt_install(names), None).await?,
                    "apt-get install",
                )?;
            }
            Action::Template { src, dest, meta } => {
                let content = (cx.render)(src)?;
                write(conn, dest, &content, meta).await?;
            }
            Action::PgConf {
                src,
                dest,
                version,
                meta,
            } => {
                let v = version_number(version)?;
                let content = (cx.render)(src)?;
                // Nothing PostgreSQL's parser rejects lands; the file it replaces is kept
                // until the server runs the new one.
                let current = read(conn, dest).await?;
                let old = current
                    .as_ref()
                    .map(|(_, text)| text.clone())
                    .unwrap_or_default();
                let mut changed = Vec::new();
                if compare_file(dest, current, &content, meta).is_some() {
                    pg_conf::check(conn, v, dest, &content).await?;
                    pg_conf::write(conn, v, dest, &content, meta).await?;
                    changed = changed_settings(&old, &content);
                }
                if cluster_online(conn, v).await? {
                    pg_conf::settle(conn, v, dest, &changed).await?;
                }
            }
            Action::Copy {
                content,
                dest,
                meta,
            } => write(conn, dest, content, meta).await?,
            Action::Block {
                path,
                block,
                marker,
            } => {
                let (meta, text) = read(conn, path)
                    .await?
                    .ok_or_else(|| ActionError::Invalid(format!("{path} does not exist")))?;
                write(conn, path, &with_block(&text, marker, block), &meta).await?;
            }
            Action::File { path, state, meta } => {
                let cmd = match state {
                    FileState::Absent => shell::remove_file(path),
                    FileState::Directory => {
                        shell::make_dir(path, &meta.owner, &meta.group, &meta.mode)
                    }
                };
                ok(conn.run(cmd, None).await?, "file")?;
            }
            Action::Command { argv, .. } => {
                ok(conn.run(Sh::argv(argv), None).await?, &argv.join(" "))?;
            }
            Action::Service {
                version,
                state: ServiceState::Started,
            } => {
                // A start may be the first with new settings (pg_conf keeps the previous
                // ones until then): it confirms them, or puts the previous ones back.
                let v = version_number(version)?;
                let out = conn.run(shell::pg_ctlcluster(v, "start"), None).await?;
                pg_conf::confirm_start(conn, v, out).await?;
            }
            Action::Service { version, state } => {
                let v = version_number(version)?;
                let verb = match state {
                    ServiceState::Started => "start",
                    ServiceState::Restarted => "restart",
                    ServiceState::Reloaded => "reload",
                };
                ok(
                    conn.run(shell::pg_ctlcluster(v, verb), None).await?,
                    &format!("pg_ctlcluster {verb}"),
                )?;
            }
            Action::ApplySettings { version } => {
                let v = version_number(version)?;
                ok(
                    conn.run(shell::pg_ctlcluster(v, "reload"), None).await?,
                    "pg_ctlcluster reload",
                )?;
                let pending = sql(
                    conn,
                    v,
                    "SELECT count(*) FROM pg_settings WHERE pending_restart;",
                )
                .await?;
                if pending.trim() != "0" {
                    ok(
                        conn.run(shell::pg_ctlcluster(v, "restart"), None).await?,
                        "pg_ctlcluster restart",
                    )?;
                }
            }
            Action::PgRole {
                version,
                name,
                password,
                replication,
            } => {
                let v = version_number(version)?;
                let exists = sql(
                    conn,
                    v,
                    &format!("SELECT 1 FROM pg_roles WHERE rolname = {};", literal(name)),
                )
                .await?;
                let verb = if exists.trim() == "1" {
                    "ALTER"
                } else {
                    "CREATE"
                };
                let statement = format!(
                    // synchronous_commit = local: with synchronous replication on and no
                    // standby seeded yet (they need this role first), the commit would
                    // wait for a synchronous standby forever.
                    "SET log_statement = 'none'; SET synchronous_commit = 'local'; \
                     {verb} ROLE {} WITH LOGIN {} PASSWORD {};",
                    ident(name),
                    if *replication {
                        "REPLICATION"
                    } else {
                        "NOREPLICATION"
                    },
                    // The verifier, not the password, when it can be computed here.
                    literal(
                        &super::scram::verifier(password, &super::scram::salt())
                            .unwrap_or_else(|| password.clone())
                    )
                );
                sql(conn, v, &statement).await?;
            }
            Action::PgAccess {
                version,
                access,
                passwords,
            } => {
                let v = version_number(version)?;
                let (desired, passwords) = access_args(access, passwords)?;
                let work = super::pg_access::query(conn, v, &desired, &passwords).await?;
                super::pg_access::act(conn, v, &work).await?;
            }
            Action::PgSlots {
                version,
                names,
                prefix,
            } => {
                let v = version_number(version)?;
                let (missing, extra) = slot_changes(conn, v, names, prefix).await?;
                let mut statements = String::new();
                // Reserve WAL at once: an unreserved slot holds nothing until a standby
                // uses it, and a base backup running meanwhile loses its WAL.
                for s in missing {
                    statements.push_str(&format!(
                        "SELECT pg_create_physical_replication_slot({}, true);\n",
                        literal(&s)
                    ));
                }
                // A removed replica may still stream from its slot, and an active slot
                // cannot be dropped: end its walsender first and wait (up to 10 s) for
                // the slot to be released. (pg_hba.conf no longer lets it back in.)
                for s in extra {
                    let l = literal(&s);
                    statements.push_str(&format!(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = {l} AND active_pid IS NOT NULL;\n\
                         DO $pgform$ BEGIN FOR i IN 1..100 LOOP \
                         EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {l} AND active); \
                         PERFORM pg_sleep(0.1); END LOOP; END $pgform$;\n\
                         SELECT pg_drop_replication_slot({l});\n"
                    ));
                }
                sql(conn, v, &statements).await?;
            }
            Action::BaseBackup {
                version,
                data_dir,
                primary,
                user,
                slot,
                sslrootcert,
            } => {
                let v = version_number(version)?;
                let tls = (!sslrootcert.is_empty()).then_some(sslrootcert.as_str());
                ok(
                    conn.run(
                        shell::base_backup(v, data_dir, primary, user, slot, tls),
                        None,
                    )
                    .await?,
                    "pg_basebackup",
                )?;
            }
            Action::DataVolume(v) => v.act(conn).await?,
            Action::TlsFiles(t) => t.act(conn).await?,
            Action::StandbyTls(t) => t.act(conn).await?,
            Action::Daemon(d) => d.act(conn).await?,
            Action::PatroniConfig(c) => c.act(conn).await?,
            Action::PatroniTakeover(t) => t.act(conn).await?,
        }
        Ok(())
    }
}

/// `name = value` lines of a postgresql.conf file.
fn conf_values(text: &str) -> std::collections::BTreeMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// The parameters whose lines differ between two postgresql.conf files, sorted.
fn changed_settings(old: &str, new: &str) -> Vec<String> {
    let (a, b) = (conf_values(old), conf_values(new));
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Which changed parameters take a restart and which a reload, e.g.
/// `restart for shared_buffers; reload for work_mem`.
pub fn settings_effect(version: u32, old: &str, new: &str) -> Option<String> {
    let names = changed_settings(old, new);
    if names.is_empty() || conf_values(old).is_empty() {
        return None;
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (restart, reload): (Vec<&str>, Vec<&str>) = names
        .into_iter()
        .partition(|n| crate::spec::params::needs_restart(version, n));
    let mut parts = Vec::new();
    if !restart.is_empty() {
        parts.push(format!("restart for {}", restart.join(", ")));
    }
    if !reload.is_empty() {
        parts.push(format!("reload for {}", reload.join(", ")));
    }
    Some(parts.join("; "))
}

fn change(summary: String) -> Change {
    Change {
        summary,
        diff: None,
        note_only: false,
    }
}

pub(crate) fn ok(out: Output, what: &str) -> Result<Output, ActionError> {
    if out.success() {
        Ok(out)
    } else {
        Err(ActionError::Command {
            what: what.to_string(),
            status: out
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "signal".into()),
            detail: out.tail(),
        })
    }
}

/// The `pg_access` action's arguments. The passwords' parse error never quotes them.
fn access_args(
    access: &str,
    passwords: &str,
) -> Result<
    (
        super::pg_access::Desired,
        std::collections::BTreeMap<String, String>,
    ),
    ActionError,
> {
    let desired = serde_json::from_str(access)
        .map_err(|e| ActionError::Invalid(format!("pg_access: access: {e}")))?;
    let passwords = serde_json::from_str(passwords).map_err(|_| {
        ActionError::Invalid("pg_access: passwords is not a JSON map of names".into())
    })?;
    Ok((desired, passwords))
}

impl Action {
    /// The action's summaries are built from names only, never from its secret
    /// arguments: shown even when the task is `secret`.
    pub fn summary_names_no_secret(&self) -> bool {
        matches!(
            self,
            Action::PgRole { .. }
                | Action::PgAccess { .. }
                | Action::PatroniConfig(_)
                | Action::PatroniTakeover(_)
        )
    }
}

pub(crate) fn version_number(v: &str) -> Result<u32, ActionError> {
    v.trim()
        .parse()
        .map_err(|_| ActionError::Invalid(format!("`{v}` is not a PostgreSQL major version")))
}

/// Runs SQL as the postgres superuser over the local socket of PostgreSQL `version`;
/// returns the rows.
/// Read-only SQL: asked together with the host's other reads of the moment
/// ([`Connection::psql_read`]). Never for statements that change anything.
pub async fn sql_read(conn: &Connection, version: u32, query: &str) -> Result<String, ActionError> {
    Ok(ok(conn.psql_read(version, query).await?, "psql")?.stdout)
}

pub async fn sql(conn: &Connection, version: u32, statements: &str) -> Result<String, ActionError> {
    Ok(ok(
        conn.run(
            shell::psql(version, "postgres"),
            Some(statements.as_bytes()),
        )
        .await?,
        "psql",
    )?
    .stdout)
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Whether the cluster's postmaster runs (accepting connections, or starting or
/// stopping); false when PostgreSQL `version` is not installed. pg_isready asks the
/// socket, so a stale pid file left by a stopped container does not count.
pub(crate) async fn cluster_online(conn: &Connection, version: u32) -> Result<bool, ActionError> {
    let out = conn.run_read(shell::pg_isready(version)).await?;
    Ok(matches!(out.status, Some(0 | 1)))
}

async fn slot_changes(
    conn: &Connection,
    version: u32,
    names: &str,
    prefix: &str,
) -> Result<(Vec<String>, Vec<String>), ActionError> {
    let want: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let rows = sql_read(
        conn,
        version,
        "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical';",
    )
    .await?;
    let have: Vec<String> = rows
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let missing = want.iter().filter(|w| !have.contains(w)).cloned().collect();
    let extra = have
        .iter()
        .filter(|h| h.starts_with(prefix) && !want.contains(h))
        .cloned()
        .collect();
    Ok((missing, extra))
}

/// The file's owner/group/mode and content, or `None` when it does not exist.
pub(crate) async fn read(
    conn: &Connection,
    path: &str,
) -> Result<Option<(Meta, String)>, ActionError> {
    let out = ok(conn.read_file(path).await?, &format!("reading {path}"))?;
    let (first, rest) = out
        .stdout
        .split_once('\n')
        .unwrap_or((out.stdout.as_str(), ""));
    if first == "absent" {
        return Ok(None);
    }
    let f: Vec<&str> = first.split_whitespace().collect();
    if f.len() != 3 {
        return Err(ActionError::Invalid(format!(
            "unexpected stat output for {path}: {first}"
        )));
    }
    Ok(Some((
        Meta {
            owner: f[0].into(),
            group: f[1].into(),
            mode: f[2].into(),
        },
        rest.to_string(),
    )))
}

pub(crate) async fn write(
    conn: &Connection,
    path: &str,
    content: &str,
    meta: &Meta,
) -> Result<(), ActionError> {
    let cmd = shell::write_file(path, &meta.owner, &meta.group, &meta.mode);
    ok(
        conn.run(cmd, Some(content.as_bytes())).await?,
        &format!("writing {path}"),
    )?;
    Ok(())
}

async fn file_change(
    conn: &Connection,
    path: &str,
    content: &str,
    meta: &Meta,
) -> Result<Option<Change>, ActionError> {
    Ok(compare_file(path, read(conn, path).await?, content, meta))
}

/// What writing `content` over `current` (as [`read`] returns it) would change.
fn compare_file(
    path: &str,
    current: Option<(Meta, String)>,
    content: &str,
    meta: &Meta,
) -> Option<Change> {
    let (old_meta, old) = match current {
        None => {
            return Some(Change {
                note_only: false,
                summary: format!("create {path}"),
                diff: Some(unified(path, "", content)),
            });
        }
        Some(c) => c,
    };
    let mode_now = old_meta.mode.trim_start_matches('0');
    let mode_want = meta.mode.trim_start_matches('0');
    if old == content
        && old_meta.owner == meta.owner
        && old_meta.group == meta.group
        && mode_now == mode_want
    {
        return None;
    }
    Some(Change {
        note_only: false,
        summary: format!("update {path}"),
        diff: (old != content).then(|| unified(path, &old, content)),
    })
}

/// `text` with the lines between `# BEGIN marker` and `# END marker` replaced by
/// `block` (appended at the end when the markers are missing).
pub fn with_block(text: &str, marker: &str, block: &str) -> String {
    let begin = format!("# BEGIN {marker}");
    let end = format!("# END {marker}");
    let mut body = block.to_string();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    let managed = format!("{begin}\n{body}{end}\n");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim() == begin);
    let stop = lines.iter().position(|l| l.trim() == end);
    match (start, stop) {
        (Some(a), Some(b)) if a < b => {
            let mut out = String::new();
            for l in &lines[..a] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str(&managed);
            for l in &lines[b + 1..] {
                out.push_str(l);
                out.push('\n');
            }
            out
        }
        _ => {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&managed);
            out
        }
    }
}

pub fn unified(path: &str, old: &str, new: &str) -> String {
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(&format!("{path} (host)"), &format!("{path} (pgform)"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_appended_then_replaced_in_place() {
        let base = "local all postgres peer\n";
        let once = with_block(
            base,
            "pgform",
            "host replication r 10.0.0.1/32 scram-sha-256",
        );
        assert!(once.starts_with(base));
        assert!(once.ends_with("# END pgform\n"));
        assert_eq!(
            with_block(
                &once,
                "pgform",
                "host replication r 10.0.0.1/32 scram-sha-256"
            ),
            once
        );
        let changed = with_block(
            &once,
            "pgform",
            "host replication r 10.0.0.2/32 scram-sha-256",
        );
        assert!(changed.contains("10.0.0.2") && !changed.contains("10.0.0.1"));
        assert_eq!(changed.matches("# BEGIN pgform").count(), 1);
    }

    #[test]
    fn settings_changes_say_restart_or_reload() {
        let old = "# x\nshared_buffers = '128MB'\nwork_mem = '4MB'\n";
        let new = "# x\nshared_buffers = '256MB'\nwork_mem = '8MB'\n";
        assert_eq!(
            settings_effect(15, old, new).as_deref(),
            Some("restart for shared_buffers; reload for work_mem")
        );
        assert_eq!(settings_effect(15, old, old), None);
        assert_eq!(
            settings_effect(15, "", new),
            None,
            "a new file is no change of settings"
        );
    }

    #[test]
    fn command_guards_parse() {
        let v: serde_norway::Value =
            serde_norway::from_str("command: {argv: [touch, /x], unless: [test, -e, /x]}").unwrap();
        match Action::parse(&v).unwrap() {
            Action::Command {
                unless, creates, ..
            } => {
                assert_eq!(unless.unwrap(), ["test", "-e", "/x"]);
                assert!(creates.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a \"b\""), "\"a \"\"b\"\"\"");
    }

    #[test]
    fn actions_parse_from_yaml() {
        let v: serde_norway::Value = serde_norway::from_str(
            "template: {src: a.j2, dest: /etc/x, owner: postgres, group: postgres, mode: '640'}",
        )
        .unwrap();
        let a = Action::parse(&v).unwrap();
        assert_eq!(a.template_name(), Some("a.j2"));
        let two: serde_norway::Value =
            serde_norway::from_str("{package: {names: [a]}, copy: {content: x, dest: /y}}")
                .unwrap();
        assert!(
            Action::parse(&two)
                .unwrap_err()
                .contains("exactly one module")
        );
    }
}
