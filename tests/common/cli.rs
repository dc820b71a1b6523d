//! Running the pgform binary in a scratch directory for end-to-end tests on hosts:
//! the replication password only in its environment, every run's output kept for the
//! leak check, exit codes and recap counters asserted with the whole output shown.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::hosts;

pub const PGFORM: &str = env!("CARGO_BIN_EXE_pgform");
/// Configuring three hosts takes about a minute on two cores, several with other tests
/// running at the same time. This only stops a hang.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The replication password: quotes, spaces, shell and pgpass metacharacters. It reaches
/// pgform only through its environment.
pub const PASSWORD: &str = r#"Wk4 'single' "double" $HOME `id` ;&|<>\ :*#%! Jm8"#;
/// Parts of the password that are unlikely anywhere else: a leak that escaped or quoted
/// the password differently still shows them.
pub const PASSWORD_MARKERS: [&str; 2] = ["Wk4 'single'", ":*#%! Jm8"];

// ---------------------------------------------------------------------------------
// Running pgform
// ---------------------------------------------------------------------------------

/// The outcome of one `pgform` run.
pub struct Run {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\n--- `pgform {}` exited {:?} after {:.1}s ---\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.args, self.code, self.seconds, self.stdout, self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "`pgform {}` should exit {code}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout of `pgform {}` should contain {needle:?}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr of `pgform {}` should contain {needle:?}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    pub fn stdout_lacks(&self, needle: &str) -> &Run {
        assert!(
            !self.stdout.contains(needle),
            "stdout of `pgform {}` should not contain {needle:?}{self}",
            self.args
        );
        self
    }

    /// The recap's counter `counter` (`changed`, `would_change`, ...) per host.
    #[track_caller]
    pub fn recap(&self, counter: &str) -> Vec<(String, u32)> {
        let Some((_, after)) = self.stdout.split_once("\nRecap:\n") else {
            panic!("`pgform {}` printed no recap{self}", self.args);
        };
        let prefix = format!("{counter}=");
        after
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| {
                let mut words = l.split_whitespace();
                let host = words.next().unwrap_or_default().to_string();
                let n = words
                    .find_map(|w| w.strip_prefix(prefix.as_str()))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("recap line {l:?} has no {prefix}N{self}"));
                (host, n)
            })
            .collect()
    }

    /// Asserts that the recap lists exactly the three hosts, each with `counter`=0.
    #[track_caller]
    pub fn recap_all_zero(&self, counter: &str) -> &Run {
        let recap = self.recap(counter);
        let hosts: Vec<&str> = recap.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            hosts,
            ["primary", "replica-0", "replica-1"],
            "recap hosts of `pgform {}`{self}",
            self.args
        );
        assert!(
            recap.iter().all(|(_, n)| *n == 0),
            "every host should have {counter}=0 after `pgform {}`: {recap:?}{self}",
            self.args
        );
        self
    }
}

/// A working directory for one test: spec, state, known hosts.
pub struct Work {
    pub dir: tempfile::TempDir,
    /// Added to the child's environment.
    env: Vec<(String, String)>,
    /// stdout and stderr of every run so far, for the leak check.
    output: std::sync::Mutex<String>,
}

impl Work {
    /// A scratch directory named after `prefix`; `env` is added to every run's
    /// environment (an emulator's endpoint, ...).
    pub fn new(prefix: &str, env: Vec<(String, String)>) -> Work {
        Work {
            env,
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("cannot create a temporary directory"),
            output: Default::default(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    pub fn read(&self, name: &str) -> String {
        let path = self.path(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Runs `pgform ARGS` in the directory; the password only in its environment; never
    /// reads stdin.
    pub fn pgform(&self, args: &[&str]) -> Run {
        let started = Instant::now();
        let mut child = Command::new(PGFORM)
            .args(args)
            .envs(self.env.iter().cloned())
            .env("DOCKER_HOST", hosts::docker_host())
            .env("PGFORM_REPLICATION_PASSWORD", PASSWORD)
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PGFORM}: {e}"));
        let drain = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
        let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = started + RUN_TIMEOUT;
        let status = loop {
            match child.try_wait().expect("cannot wait for pgform") {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(50)),
            }
        };
        let run = Run {
            args: args.join(" "),
            code: status.and_then(|s| s.code()),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        };
        // Shown with --nocapture, and with the output of a failed test.
        eprintln!("{run}");
        {
            let mut all = self.output.lock().unwrap();
            all.push_str(&run.stdout);
            all.push('\n');
            all.push_str(&run.stderr);
            all.push('\n');
        }
        assert!(
            status.is_some(),
            "`pgform {}` did not finish within {RUN_TIMEOUT:?}{run}",
            run.args
        );
        run
    }

    /// `pgform output --json`: the private addresses of primary, replica-0, replica-1.
    pub fn private_ips(&self) -> Vec<String> {
        let out = self.pgform(&["output", "--json"]);
        out.expect(0);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("output --json is not JSON: {e}{out}"));
        let ip = |n: &Value| {
            n["private_ip"]
                .as_str()
                .unwrap_or_else(|| panic!("no private_ip in {n}{out}"))
                .to_string()
        };
        let mut ips = vec![ip(&v["primary"])];
        let replicas = v["replicas"]
            .as_array()
            .unwrap_or_else(|| panic!("no replicas list{out}"));
        ips.extend(replicas.iter().map(ip));
        ips
    }

    /// Asserts that the password appears in no output so far and in no file of the
    /// directory (spec, state, known hosts, lock, anything else).
    #[track_caller]
    pub fn assert_no_password_anywhere(&self) {
        let output = self.output.lock().unwrap();
        for needle in std::iter::once(PASSWORD).chain(PASSWORD_MARKERS) {
            assert!(
                !output.contains(needle),
                "pgform's output holds the password (found {needle:?})"
            );
        }
        for file in files_under(self.dir.path()) {
            let bytes = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let text = String::from_utf8_lossy(&bytes);
            for needle in std::iter::once(PASSWORD).chain(PASSWORD_MARKERS) {
                assert!(
                    !text.contains(needle),
                    "{} holds the password (found {needle:?})",
                    file.display()
                );
            }
        }
    }
}

impl Work {
    /// Asserts that none of `secrets` (e.g. application users' passwords) appears in
    /// any output so far or in any file of the directory other than `except` (the
    /// files that hold them on purpose).
    #[track_caller]
    pub fn assert_absent_everywhere(&self, secrets: &[&str], except: &[&str]) {
        let output = self.output.lock().unwrap();
        for s in secrets {
            assert!(
                !output.contains(s),
                "pgform's output holds a secret ({s:?})"
            );
        }
        for file in files_under(self.dir.path()) {
            if except.iter().any(|e| file.ends_with(e)) {
                continue;
            }
            let text =
                String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
            for s in secrets {
                assert!(
                    !text.contains(s),
                    "{} holds a secret ({s:?})",
                    file.display()
                );
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The `[ha]` table of a Patroni spec, with its three passwords in files of `work`.
pub fn ha_table(work: &Work) -> String {
    for (file, pw) in [
        ("rest.pw", "rest pw 1"),
        ("su.pw", "superuser pw 1"),
        ("rewind.pw", "rewind pw 12"),
    ] {
        work.write(file, &format!("{pw}\n"));
    }
    "[ha]\nmode = \"patroni\"\nrest_password_file = \"rest.pw\"\n\
     superuser_password_file = \"su.pw\"\nrewind_password_file = \"rewind.pw\"\n"
        .to_string()
}

/// `[[hosts]]` entries for hosts at `addresses`, the first as primary; `extra(i)` adds
/// lines to the i-th.
pub fn hosts_list(
    addresses: impl IntoIterator<Item = std::net::Ipv4Addr>,
    extra: impl Fn(usize) -> String,
) -> String {
    let mut text = String::new();
    for (i, address) in addresses.into_iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{address}\"\nrole = \"{role}\"\n{}",
            extra(i)
        ));
    }
    text
}
