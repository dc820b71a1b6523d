//! What the `pg_conf` module does beyond writing a file: PostgreSQL must *run* with the
//! settings, and nothing it rejects may stay on disk.
//!
//! - Before a new file lands, PostgreSQL's own parser reads it (`postgres -C` on a copy
//!   of the configuration directory, [`check`]): a value it rejects fails the task and
//!   nothing changes.
//! - The file is then written keeping the one it replaces (`shell::PREVIOUS_SUFFIX`),
//!   and the running server reloads it ([`settle`]). Whatever the parser could not know
//!   (a value refused at reload, a library that is not installed, connections refused)
//!   puts the previous file back, reloads or starts PostgreSQL with it, and fails naming
//!   the parameter and PostgreSQL's message. The copy is dropped once the new file runs,
//!   so a host that reboots after a failed run starts with the last good settings.
//! - Whether the server runs the file is read from the server itself ([`Running`]):
//!   every line of the file in `pg_file_settings`, and in `pg_settings` where the
//!   running value came from. No value is parsed here: a value runs as written when the
//!   server loaded the file after it last changed, took the value from that very line,
//!   and has no restart pending.

use std::time::{Duration, Instant};

use super::modules::{ActionError, literal, ok, sql, sql_read};
use crate::remote::{Connection, Output, shell};

/// How long a reload may take to reach a new session.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// One line of the settings file as the running server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The parameter's name (PostgreSQL's spelling when it knows it).
    pub name: String,
    /// The value as written in the file (unquoted, as PostgreSQL read it).
    pub file_value: String,
    /// The value the server runs with, as `SHOW` prints it.
    pub running: String,
    /// PostgreSQL can apply the line and no later one overrides it.
    pub applied: bool,
    /// PostgreSQL's complaint about the line (also "setting could not be applied" for a
    /// changed parameter that needs a restart).
    pub error: Option<String>,
    pub pending_restart: bool,
    /// The running value came from this line.
    pub from_line: bool,
    /// Where the running value came from (`file:line`, or the source's kind).
    pub source: String,
}

impl Line {
    /// Runs as written: loaded from this line, nothing pending, nothing wrong.
    pub fn runs(&self) -> bool {
        self.applied && self.error.is_none() && !self.pending_restart && self.from_line
    }

    fn rejected(&self) -> bool {
        self.error.is_some() && !self.pending_restart
    }

    fn overridden(&self) -> bool {
        self.error.is_none() && !self.pending_restart && (!self.applied || !self.from_line)
    }
}

/// The settings file as the running server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// The server read its configuration after the file last changed.
    pub loaded: bool,
    /// A previous copy is kept: the file was written but not yet confirmed running.
    pub unconfirmed: bool,
    pub lines: Vec<Line>,
}

impl Running {
    /// Asks the server (one psql call). Fails when it does not run or refuses the
    /// connection.
    pub async fn read(conn: &Connection, version: u32, dest: &str) -> Result<Running, ActionError> {
        let rows = sql_read(conn, version, &running_query(dest)).await?;
        Running::parse(&rows)
            .ok_or_else(|| ActionError::Invalid(format!("unexpected answer about {dest}: {rows}")))
    }

    fn parse(rows: &str) -> Option<Running> {
        let mut lines = rows.lines().filter(|l| !l.trim().is_empty());
        let head: Vec<&str> = lines.next()?.split('|').collect();
        let [loaded, unconfirmed] = head[..] else {
            return None;
        };
        let mut out = Running {
            loaded: loaded == "t",
            unconfirmed: unconfirmed == "t",
            lines: Vec::new(),
        };
        for row in lines {
            let f: Vec<&str> = row.split('|').collect();
            let [
                name,
                file_value,
                applied,
                error,
                pending,
                from_line,
                source,
                running,
            ] = f[..]
            else {
                return None;
            };
            let error = unhex(error)?;
            out.lines.push(Line {
                name: name.to_string(),
                file_value: unhex(file_value)?,
                running: unhex(running)?,
                applied: applied == "t",
                error: (!error.is_empty()).then_some(error),
                pending_restart: pending == "t",
                from_line: from_line == "t",
                source: unhex(source)?,
            });
        }
        Some(out)
    }

    /// What the server still has to do to run the file, in words for a plan; `None`
    /// when it runs it.
    pub fn pending(&self) -> Option<String> {
        let names = |pick: fn(&Line) -> bool| -> Vec<&str> {
            self.lines
                .iter()
                .filter(|l| pick(l))
                .map(|l| l.name.as_str())
                .collect()
        };
        if !self.loaded {
            // What the file's lines would do is only known once the server reads it.
            return Some("reload: the server has not read the file since it changed".into());
        }
        let mut parts = Vec::new();
        let restart = names(|l| l.pending_restart);
        if !restart.is_empty() {
            parts.push(format!("restart for {} (pending)", restart.join(", ")));
        }
        for l in self.lines.iter().filter(|l| l.rejected()) {
            parts.push(format!(
                "{} = '{}' is not applied: {}",
                l.name,
                l.file_value,
                l.error.as_deref().unwrap_or_default()
            ));
        }
        for l in self.lines.iter().filter(|l| l.overridden()) {
            parts.push(format!(
                "{} runs as {} (from {}), not as written",
                l.name, l.running, l.source
            ));
        }
        if self.unconfirmed && parts.is_empty() {
            parts.push("confirm that PostgreSQL runs it (an earlier run stopped first)".into());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The settings file's lines as the server sees them. A value this very session's
/// client set (psql's `application_name`) says nothing of the file: the line counts as
/// running when the server applied it. Free text (values, messages,
/// sources) comes hex-encoded, so that no character in it can break the rows apart.
fn running_query(dest: &str) -> String {
    let hex = |e: &str| format!("encode(convert_to(coalesce({e}, ''), 'UTF8'), 'hex')");
    format!(
        "SELECT coalesce(pg_conf_load_time() >= (pg_stat_file({d}, true)).modification, true), \
         (pg_stat_file({p}, true)).size IS NOT NULL;\n\
         SELECT coalesce(s.name, f.name, 'line ' || f.sourceline), {value}, f.applied, {error}, \
         coalesce(s.pending_restart, false), \
         s.name IS NULL OR s.source = 'client' OR (s.sourcefile IS NOT DISTINCT FROM \
         f.sourcefile AND s.sourceline IS NOT DISTINCT FROM f.sourceline), {source}, {running} \
         FROM pg_file_settings f LEFT JOIN pg_settings s ON lower(s.name) = lower(f.name) \
         WHERE f.sourcefile = {d} ORDER BY f.seqno;",
        d = literal(dest),
        p = literal(&format!("{dest}{}", shell::PREVIOUS_SUFFIX)),
        value = hex("f.setting"),
        error = hex("f.error"),
        source = hex("s.sourcefile || ':' || s.sourceline, s.source"),
        running = hex("current_setting(f.name, true)"),
    )
}

fn unhex(s: &str) -> Option<String> {
    let s = s.trim();
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// `dest` relative to the cluster's configuration directory, where the kept copies and
/// the parser's check look for it.
fn relative(version: u32, dest: &str) -> Result<&str, ActionError> {
    let dir = format!("{}/conf.d/", shell::conf_dir(version));
    dest.strip_prefix(&dir)
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(|_| &dest[dir.len() - "conf.d/".len()..])
        .ok_or_else(|| {
            ActionError::Invalid(format!(
                "pg_conf writes only files in {dir}, not {dest} (a fault in pgform's task list)"
            ))
        })
}

/// Reads `content` with PostgreSQL's own parser in place of `dest`, changing nothing.
pub async fn check(
    conn: &Connection,
    version: u32,
    dest: &str,
    content: &str,
) -> Result<(), ActionError> {
    let rel = relative(version, dest)?;
    let out = conn
        .run(
            shell::check_settings(version, rel),
            Some(content.as_bytes()),
        )
        .await?;
    if out.success() {
        return Ok(());
    }
    let messages = pg_messages(&out.stdout);
    Err(ActionError::Invalid(format!(
        "PostgreSQL rejects the new settings: {}; {dest} is unchanged",
        if messages.is_empty() {
            out.tail()
        } else {
            messages.join("; ")
        }
    )))
}

/// Writes `dest`, keeping the file it replaces until [`settle`] confirms the new one.
pub async fn write(
    conn: &Connection,
    version: u32,
    dest: &str,
    content: &str,
    meta: &super::modules::Meta,
) -> Result<(), ActionError> {
    relative(version, dest)?;
    let cmd = shell::write_keeping_previous(dest, &meta.owner, &meta.group, &meta.mode);
    ok(
        conn.run(cmd, Some(content.as_bytes())).await?,
        &format!("writing {dest}"),
    )?;
    Ok(())
}

/// pg_controldata's names for the limits a standby must hold at least as high as its
/// primary, with the parameters they record.
const CONTROL_LIMITS: [(&str, &str); 5] = [
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
];

/// Before a standby restarts with a lower limit: waits (up to a minute) until it has
/// replayed its primary's record of the lowered value, which its control file then
/// holds. A standby restarted before that refuses to start ("recovery aborted because of
/// insufficient parameter settings"): it checks its settings against the primary's last
/// recorded ones, and the primary's restart (done first when a limit is lowered) writes
/// the new ones only to WAL that the standby may not have received yet.
async fn standby_ready_for(conn: &Connection, version: u32, running: &Running) {
    let lowered: Vec<(&str, i64)> = running
        .lines
        .iter()
        .filter(|l| l.pending_restart)
        .filter_map(|l| {
            let (control, _) = CONTROL_LIMITS.iter().find(|(_, p)| *p == l.name)?;
            Some((*control, l.file_value.trim().parse().ok()?))
        })
        .collect();
    if lowered.is_empty() {
        return;
    }
    let Ok(dir) = sql(
        conn,
        version,
        "SELECT current_setting('data_directory') WHERE pg_is_in_recovery();",
    )
    .await
    else {
        return;
    };
    let dir = dir.trim();
    if dir.is_empty() {
        return; // not a standby
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Ok(out) = conn.run(shell::control_data(version, dir), None).await else {
            return;
        };
        let recorded = |name: &str| {
            out.stdout.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse::<i64>().ok())?
            })
        };
        let waiting = lowered
            .iter()
            .any(|(name, new)| recorded(name).is_some_and(|old| old > *new));
        if !waiting || Instant::now() > deadline {
            return; // ready; or let the restart say what is wrong
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Makes the running server run `dest`: reload, then restart if a changed parameter
/// needs it, checking after each that PostgreSQL took every line. On any refusal the
/// previous file goes back and the server returns to it; the error names the parameter
/// and PostgreSQL's message. Once the file runs, the previous copy is dropped.
pub async fn settle(
    conn: &Connection,
    version: u32,
    dest: &str,
    changed: &[String],
) -> Result<(), ActionError> {
    let v = version;
    let new_values = if changed.is_empty() {
        "the settings".to_string()
    } else {
        format!("the new value of {}", changed.join(", "))
    };
    ok(
        conn.run(shell::pg_ctlcluster(v, "reload"), None).await?,
        "pg_ctlcluster reload",
    )?;
    let running = match loaded(conn, v, dest).await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("PostgreSQL refuses connections with {new_values}: {e}");
            return Err(roll_back(conn, v, Back::Reload, why).await);
        }
    };
    let rejected: Vec<&Line> = running.lines.iter().filter(|l| l.rejected()).collect();
    if !rejected.is_empty() {
        let log = log_lines(conn, v).await;
        let why = rejected
            .iter()
            .map(|l| {
                let quoted = format!("\"{}\"", l.name.to_lowercase());
                let said: Vec<&String> = log
                    .iter()
                    .filter(|m| m.to_lowercase().contains(&quoted))
                    .collect();
                format!(
                    "{} = '{}': {}",
                    l.name,
                    l.file_value,
                    said.last()
                        .map(|s| s.as_str())
                        .or(l.error.as_deref())
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let why = format!("PostgreSQL did not apply the new settings at reload: {why}");
        return Err(roll_back(conn, v, Back::Reload, why).await);
    }
    let restart: Vec<String> = running
        .lines
        .iter()
        .filter(|l| l.pending_restart)
        .map(|l| format!("{} = '{}'", l.name, l.file_value))
        .collect();
    let running = if restart.is_empty() {
        running
    } else {
        standby_ready_for(conn, v, &running).await;
        let out = conn.run(shell::pg_ctlcluster(v, "restart"), None).await?;
        let after = if out.success() {
            loaded(conn, v, dest).await.map_err(|e| e.to_string())
        } else {
            Err(start_failure(conn, v, &out).await)
        };
        match after {
            Ok(r) => r,
            Err(why) => {
                let why = format!(
                    "PostgreSQL did not start with {}: {why}",
                    restart.join(", ")
                );
                return Err(roll_back(conn, v, Back::Start, why).await);
            }
        }
    };
    // The file is good; what overrides it is not pgform's to change.
    ok(
        conn.run(shell::forget_previous(v), None).await?,
        "dropping the previous settings",
    )?;
    let overridden: Vec<String> = running
        .lines
        .iter()
        .filter(|l| l.overridden())
        .map(|l| format!("{} runs as {} (set in {})", l.name, l.running, l.source))
        .collect();
    if !overridden.is_empty() {
        return Err(ActionError::Invalid(format!(
            "{}, which overrides {dest}; remove that setting (for postgresql.auto.conf: \
             ALTER SYSTEM RESET name)",
            overridden.join("; ")
        )));
    }
    Ok(())
}

/// After a start of PostgreSQL with settings that are not confirmed yet (a new host, or
/// a replica seeded after its settings were written): drops the kept copies when the
/// server accepts connections, and otherwise puts them back and starts again.
pub async fn confirm_start(
    conn: &Connection,
    version: u32,
    started: Output,
) -> Result<(), ActionError> {
    let v = version;
    let why = if started.success() {
        match sql(conn, v, "SELECT 1;").await {
            Ok(_) => {
                ok(
                    conn.run(shell::forget_previous(v), None).await?,
                    "dropping the previous settings",
                )?;
                return Ok(());
            }
            Err(e) => format!("PostgreSQL refuses connections with the new settings: {e}"),
        }
    } else {
        format!(
            "PostgreSQL did not start: {}",
            start_failure(conn, v, &started).await
        )
    };
    Err(roll_back(conn, v, Back::Start, why).await)
}

/// How the server returns to the previous settings.
#[derive(Clone, Copy, PartialEq)]
enum Back {
    Reload,
    /// The server is down (or must restart): start it.
    Start,
}

/// Puts the previous settings files back and returns the server to them; the error
/// says what happened, and what was put back.
async fn roll_back(conn: &Connection, version: u32, back: Back, why: String) -> ActionError {
    let v = version;
    let restored = match conn.run(shell::restore_previous(v), None).await {
        Ok(out) if out.success() => out.stdout.trim().to_string(),
        Ok(out) => {
            return ActionError::Invalid(format!(
                "{why}; putting the previous settings back failed: {}",
                out.tail()
            ));
        }
        Err(e) => return ActionError::Invalid(format!("{why}; {e}")),
    };
    if restored.is_empty() {
        return ActionError::Invalid(format!(
            "{why}; there are no earlier settings to go back to"
        ));
    }
    let verb = match back {
        Back::Reload => "reload",
        Back::Start => "restart",
    };
    let outcome = match conn.run(shell::pg_ctlcluster(v, verb), None).await {
        Ok(out) if out.success() => "PostgreSQL runs with them".to_string(),
        Ok(out) => format!(
            "but PostgreSQL did not {verb} with them either: {}",
            start_failure(conn, v, &out).await
        ),
        Err(e) => format!("but {e}"),
    };
    ActionError::Invalid(format!(
        "{why}; the previous settings are back ({}) and {outcome}",
        restored.lines().collect::<Vec<_>>().join(", ")
    ))
}

/// The settings as the server runs them, once it has read the file (a reload reaches
/// new sessions a moment after `pg_ctl reload` returns).
async fn loaded(conn: &Connection, version: u32, dest: &str) -> Result<Running, ActionError> {
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let running = Running::read(conn, version, dest).await?;
        if running.loaded || Instant::now() > deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a start failed: PostgreSQL's last fatal messages from its log, or pg_ctl's words.
async fn start_failure(conn: &Connection, version: u32, out: &Output) -> String {
    let log = log_lines(conn, version).await;
    let fatal: Vec<&String> = log
        .iter()
        .filter(|m| m.starts_with("FATAL") || m.starts_with("PANIC"))
        .collect();
    match fatal.last() {
        Some(m) => m.to_string(),
        None => out.tail(),
    }
}

async fn log_lines(conn: &Connection, version: u32) -> Vec<String> {
    match conn.run(shell::server_log_tail(version, 40), None).await {
        Ok(out) => pg_messages(&out.stdout),
        Err(_) => Vec::new(),
    }
}

/// PostgreSQL's own messages in log or parser output, without the line prefix
/// (`2026-01-01 ... [123] LOG:  invalid value ...` -> `invalid value ...`; fatal ones
/// keep `FATAL: `); the closing "contains errors" and shutdown lines are left out.
pub fn pg_messages(text: &str) -> Vec<String> {
    const LEVELS: [&str; 6] = [
        "PANIC:  ",
        "FATAL:  ",
        "ERROR:  ",
        "LOG:  ",
        "DETAIL:  ",
        "HINT:  ",
    ];
    text.lines()
        .filter_map(|line| {
            LEVELS.iter().find_map(|level| {
                let (_, message) = line.split_once(level)?;
                if message.contains("contains errors")
                    || message.starts_with("database system is shut down")
                {
                    return None;
                }
                Some(match *level {
                    "PANIC:  " | "FATAL:  " => format!("{} {message}", level.trim_end()),
                    _ => message.to_string(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_their_prefix() {
        let parser = "2026-11-29 17:11:32.814 UTC [2111] LOG:  invalid value for parameter \"work_mem\": \"lots\"\n\
                      2026-11-29 17:11:32.814 UTC [2111] FATAL:  configuration file \"/tmp/x/conf.d/pgform.conf\" contains errors\n";
        assert_eq!(
            pg_messages(parser),
            ["invalid value for parameter \"work_mem\": \"lots\""]
        );
        let log = "2026-11-29 17:11:33.642 UTC [2132] FATAL:  could not access file \"no_such_lib\": No such file or directory\n\
                   2026-11-29 17:11:33.642 UTC [2132] LOG:  database system is shut down\n";
        assert_eq!(
            pg_messages(log),
            ["FATAL: could not access file \"no_such_lib\": No such file or directory"]
        );
    }

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn running_rows_parse_and_say_what_is_pending() {
        let row =
            |name: &str, value: &str, applied: &str, error: &str, pending: &str, from: &str| {
                format!(
                    "{name}|{}|{applied}|{}|{pending}|{from}|{}|{}",
                    hex(value),
                    hex(error),
                    hex("/etc/x.conf:3"),
                    hex("4MB")
                )
            };
        let converged = format!("t|f\n{}\n", row("work_mem", "4MB", "t", "", "f", "t"));
        let r = Running::parse(&converged).unwrap();
        assert!(r.lines[0].runs());
        assert_eq!(r.pending(), None);

        let stale = format!("f|f\n{}\n", row("work_mem", "64MB", "t", "", "f", "t"));
        assert!(
            Running::parse(&stale)
                .unwrap()
                .pending()
                .unwrap()
                .starts_with("reload")
        );

        let restart = format!(
            "t|f\n{}\n",
            row(
                "shared_buffers",
                "1GB",
                "f",
                "setting could not be applied",
                "t",
                "t"
            )
        );
        assert_eq!(
            Running::parse(&restart).unwrap().pending().unwrap(),
            "restart for shared_buffers (pending)"
        );

        let rejected = format!(
            "t|f\n{}\n",
            row(
                "work_mem",
                "lots",
                "f",
                "setting could not be applied",
                "f",
                "t"
            )
        );
        let p = Running::parse(&rejected).unwrap().pending().unwrap();
        assert!(p.contains("work_mem = 'lots' is not applied"), "{p}");

        let overridden = format!("t|f\n{}\n", row("work_mem", "64MB", "f", "", "f", "f"));
        let p = Running::parse(&overridden).unwrap().pending().unwrap();
        assert!(
            p.contains("work_mem runs as 4MB (from /etc/x.conf:3)"),
            "{p}"
        );

        let unconfirmed = format!("t|t\n{}\n", row("work_mem", "4MB", "t", "", "f", "t"));
        assert!(
            Running::parse(&unconfirmed)
                .unwrap()
                .pending()
                .unwrap()
                .starts_with("confirm")
        );
        assert_eq!(Running::parse("t|t|x\n"), None);
        // A value with the row separator in it survives.
        let piped = format!(
            "t|f\n{}\n",
            row("application_name", "a|b", "t", "", "f", "t")
        );
        assert_eq!(Running::parse(&piped).unwrap().lines[0].file_value, "a|b");
    }

    #[test]
    fn only_files_in_conf_d_are_settings_files() {
        assert_eq!(
            relative(15, "/etc/postgresql/15/main/conf.d/pgform.conf").unwrap(),
            "conf.d/pgform.conf"
        );
        assert!(relative(15, "/etc/postgresql/15/main/postgresql.conf").is_err());
        assert!(relative(15, "/etc/postgresql/15/main/conf.d/").is_err());
        assert!(relative(16, "/etc/postgresql/15/main/conf.d/x.conf").is_err());
    }
}
