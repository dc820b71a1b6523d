//! A throwaway PostgreSQL server for a test binary (Debian's `postgresql-15`, installed
//! by scripts/testbed.sh), and a fresh database per test:
//!
//! ```ignore
//! let Some(db) = pg::database() else { return };   // skips locally, fails under CI=…
//! PgStore::open(&db.url_with_password());          // in the test process
//! cmd.args(["--store", &db.url]).envs(db.env());   // a pgform process: PGPASSWORD
//! ```
//!
//! The server runs as the `postgres` OS user (root cannot run initdb), in a temp folder,
//! on 127.0.0.1 and a free port, with scram-sha-256 authentication for every role. A
//! watchdog process stops it (`pg_ctl stop -m immediate`) and removes its folder once
//! the test binary has exited, however it exited.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The role the tests (and the services they start) connect as.
pub const ROLE: &str = "pgform_test";
pub const PASSWORD: &str = "pgform-test-store-password";
const SUPERUSER_PASSWORD: &str = "pgform-test-superuser";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

/// One database of the test binary's server.
pub struct Database {
    /// `postgres://ROLE@127.0.0.1:PORT/NAME`: no password (it is in [`Database::env`]).
    pub url: String,
    pub name: String,
    pub port: u16,
}

impl Database {
    /// For a store opened in the test process itself.
    pub fn url_with_password(&self) -> String {
        format!(
            "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/{}",
            self.port, self.name
        )
    }

    /// The environment a pgform process needs beside `--store URL`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("PGPASSWORD", PASSWORD.to_string())]
    }

    /// Runs SQL as the test role (on a thread of its own: the `postgres` client must not
    /// run inside the tests' async runtime).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let url = self.url_with_password();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            c.simple_query(&sql)
                .expect("query")
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
        .join()
        .expect("query thread")
    }
}

/// A fresh database on the test binary's server; `None` (after saying why) when no
/// server can run here, which fails the test under `CI`.
pub fn database() -> Option<Database> {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = match SERVER.get_or_init(PgServer::start) {
        Ok(s) => s,
        Err(why) if std::env::var_os("CI").is_some() => panic!("no PostgreSQL server: {why}"),
        Err(why) => {
            eprintln!(
                "skipped: no PostgreSQL server ({why}); run `bash scripts/testbed.sh install`"
            );
            return None;
        }
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    server.superuser(&format!("CREATE DATABASE {name} OWNER {ROLE}"));
    Some(Database {
        url: format!("postgres://{ROLE}@127.0.0.1:{}/{name}", server.port),
        name,
        port: server.port,
    })
}

/// Debian's server binaries, newest version first.
fn bindir() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin (postgresql-15)".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` OS user when this is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("pgform-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let data = dir.join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).map_err(|e| e.to_string())?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            )?;
        }
        // The watchdog first: whatever happens next, the server and folder go away
        // once this process has.
        let pg_ctl = bin.join("pg_ctl");
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser}'{pg_ctl}' -D '{data}' \
             stop -m immediate; rm -rf '{dir}'",
            pid = std::process::id(),
            runuser = if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = pg_ctl.display(),
            data = data.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("the watchdog: {e}"))?;

        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut start = as_server_user(&pg_ctl);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' \
                 -c fsync=off -c max_connections=200"
            ))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        run(start, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            format!("{e}\n{log}")
        })?;
        let server = PgServer { port, dir };
        server.superuser(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"));
        Ok(server)
    }

    fn superuser(&self, sql: &str) {
        let url = format!(
            "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        );
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            c.batch_execute(&sql).expect("superuser SQL");
        })
        .join()
        .expect("superuser thread");
    }
}
