//! End to end across both layers with the AWS provider: the real `pgform` binary makes
//! the instances in a private moto EC2 emulator (`apply --only infra`), the test starts
//! Debian containers at exactly the private addresses moto gave them, and
//! `apply --only hosts` configures those as the cluster's hosts over SSH
//! (`ssh.connect_via = "private"`, user root) and verifies streaming replication.
//!
//! The trick that joins the two: the spec's subnet is the /24 of a Docker network the
//! harness made (`Network::create`), so moto hands out addresses in it, and the harness
//! can start a container at each (`Host::start(&net, name, last_octet, &key)`).
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`) and moto_server on PATH.

mod common;

use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::Moto;
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

const PGFORM: &str = env!("CARGO_BIN_EXE_pgform");
/// Configuring three hosts takes about a minute on two cores, several with other tests
/// running at the same time. This only stops a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The replication password: quotes, spaces, shell and pgpass metacharacters. It reaches
/// pgform only through its environment.
const PASSWORD: &str = r#"Wk4 'single' "double" $HOME `id` ;&|<>\ :*#%! Jm8"#;
/// Parts of the password that are unlikely anywhere else: a leak that escaped or quoted
/// the password differently still shows them.
const PASSWORD_MARKERS: [&str; 2] = ["Wk4 'single'", ":*#%! Jm8"];

// ---------------------------------------------------------------------------------
// Running pgform
// ---------------------------------------------------------------------------------

/// The outcome of one `pgform` run.
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
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
    fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "`pgform {}` should exit {code}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout of `pgform {}` should contain {needle:?}{self}",
            self.args
        );
        self
    }

    #[track_caller]
    fn stdout_lacks(&self, needle: &str) -> &Run {
        assert!(
            !self.stdout.contains(needle),
            "stdout of `pgform {}` should not contain {needle:?}{self}",
            self.args
        );
        self
    }

    /// The recap's counter `counter` (`changed`, `would_change`, ...) per host.
    #[track_caller]
    fn recap(&self, counter: &str) -> Vec<(String, u32)> {
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
    fn recap_all_zero(&self, counter: &str) -> &Run {
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
struct Work {
    dir: tempfile::TempDir,
    /// moto's environment for the child.
    env: Vec<(String, String)>,
    /// stdout and stderr of every run so far, for the leak check.
    output: std::sync::Mutex<String>,
}

impl Work {
    fn new(moto: &Moto) -> Work {
        Work {
            env: moto.env(),
            dir: tempfile::Builder::new()
                .prefix("pgform-cli-aws-hosts")
                .tempdir()
                .expect("cannot create a temporary directory"),
            output: Default::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn read(&self, name: &str) -> String {
        let path = self.path(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Runs `pgform ARGS` in the directory; the password only in its environment; never
    /// reads stdin.
    fn pgform(&self, args: &[&str]) -> Run {
        let started = Instant::now();
        let mut child = Command::new(PGFORM)
            .args(args)
            .envs(self.env.iter().cloned())
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

    /// Asserts that the password appears in no output so far and in no file of the
    /// directory (spec, state, known hosts, lock, anything else).
    #[track_caller]
    fn assert_no_password_anywhere(&self) {
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

// ---------------------------------------------------------------------------------
// The spec
// ---------------------------------------------------------------------------------

/// A cluster name unique to this test process and call.
fn unique_cluster() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("cli-aws-hosts-{}-{n}", std::process::id())
}

/// Provider aws, a created network whose subnet is the Docker network's /24 (in a /16
/// VPC holding it), SSH as root to the private addresses, the local apt repository.
fn spec(cluster: &str, net: &Network, key: &SshKey) -> String {
    let subnet = &net.subnet;
    let octets: Vec<&str> = subnet.split('.').collect();
    let vpc = format!("{}.{}.0.0/16", octets[0], octets[1]);
    let private = key.private.display();
    let public = key.private.with_extension("pub");
    let public = public.display();
    let mirror = net.apt_mirror();
    format!(
        r#"name = "{cluster}"
provider = "aws"
region = "{region}"

[network]
vpc_cidr = "{vpc}"
subnet_cidr = "{subnet}"
public = false

[instances]
type = "t3.medium"

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"
user = "root"
connect_via = "private"

[access]
admin_cidrs = ["{subnet}"]
client_cidrs = ["{subnet}"]

[packages]
apt_mirror = "deb [trusted=yes] {mirror} ./"

[postgres]
version = 15
replicas = 2
max_connections = 100
shared_buffers = "128MB"
replication_user = "replicator"
"#,
        region = common::REGION,
    )
}

/// `pgform status --json` shows one primary and two replicas streaming from it.
#[track_caller]
fn assert_streaming(work: &Work, ips: &[Ipv4Addr]) {
    let run = work.pgform(&["status", "--json"]);
    run.expect(0);
    let rows: Vec<Value> = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not a JSON list: {e}{run}"));
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
            (s("name"), s("address"), s("role"), s("state"))
        })
        .collect();
    let want = vec![
        (
            "primary".into(),
            ips[0].to_string(),
            "primary".into(),
            "-".into(),
        ),
        (
            "replica-0".into(),
            ips[1].to_string(),
            "replica".into(),
            "streaming".into(),
        ),
        (
            "replica-1".into(),
            ips[2].to_string(),
            "replica".into(),
            "streaming".into(),
        ),
    ];
    assert_eq!(got, want, "(name, address, role, state) per node{run}");
    for r in &rows {
        assert!(r["error"].is_null(), "{r}{run}");
    }
}

/// Prints the end of each host's PostgreSQL log (for a failed configuration).
fn show_postgres_logs(hosts: &[Host]) {
    for h in hosts {
        let out = h.ssh("tail -n 40 /var/log/postgresql/postgresql-15-main.log");
        eprintln!(
            "--- PostgreSQL log of {} ({}) ---\n{}{}",
            h.name,
            h.ip(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn aws_infra_then_hosts_at_moto_addresses_streams() {
    if !hosts::require_testbed() {
        return;
    }
    let started = Instant::now();
    let key = SshKey::generate();
    // Declared before the hosts: dropped (removed) after them.
    let net = Network::create("awsh");
    let moto = Moto::start();
    let work = Work::new(&moto);
    let cluster = unique_cluster();
    work.write("cluster.toml", &spec(&cluster, &net, &key));

    // The infrastructure alone: moto's instances, no host contacted.
    work.pgform(&["apply", "--only", "infra", "--auto-approve"])
        .expect(0)
        .stdout_has("Apply complete!")
        .stdout_lacks("Recap:")
        .stdout_lacks("Verified");
    let live = moto.instances_tagged(&cluster).await;
    assert_eq!(
        live.len(),
        3,
        "live instances in moto: {:?}",
        moto.tagged(&cluster).await
    );

    // Their private addresses, as pgform reports them: all in the Docker network's /24.
    let out = work.pgform(&["output", "--json"]);
    out.expect(0);
    let outputs: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("output --json is not JSON: {e}{out}"));
    let ip = |n: &Value| -> Ipv4Addr {
        n["private_ip"]
            .as_str()
            .unwrap_or_else(|| panic!("no private_ip in {n}{out}"))
            .parse()
            .unwrap_or_else(|e| panic!("private_ip of {n} is not an IPv4 address: {e}{out}"))
    };
    let mut ips = vec![ip(&outputs["primary"])];
    let replicas = outputs["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no replicas list{out}"));
    ips.extend(replicas.iter().map(ip));
    assert_eq!(ips.len(), 3, "{ips:?}{out}");
    let mut moto_ips: Vec<String> = live
        .iter()
        .filter_map(|i| i.private_ip_address().map(str::to_string))
        .collect();
    moto_ips.sort();
    let mut reported: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    reported.sort();
    assert_eq!(reported, moto_ips, "pgform's outputs are moto's addresses");
    eprintln!(
        "moto's private addresses: {ips:?} (Docker network {})",
        net.subnet
    );

    // A container at each address, reachable as root with the spec's key.
    let names = ["pg-primary", "pg-replica-0", "pg-replica-1"];
    let mut containers = Vec::new();
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(
            Some(ip.octets()[..3].to_vec()),
            Some(net.gateway().octets()[..3].to_vec()),
            "{ip} is not in the Docker network {}",
            net.subnet
        );
        let last = ip.octets()[3];
        let host = Host::start(&net, name, last, &key);
        assert_eq!(host.ip(), *ip);
        containers.push(host);
    }

    // The hosts alone: the task list over SSH, then the replication check.
    let configure = work.pgform(&["apply", "--only", "hosts", "--auto-approve"]);
    if configure.code != Some(0) {
        show_postgres_logs(&containers);
    }
    configure
        .expect(0)
        .stdout_lacks("Refreshing")
        .stdout_has("Verified")
        .recap_all_zero("failed");
    assert_streaming(&work, &ips);

    // The replicas really replay from the primary at moto's address.
    for h in &containers[1..] {
        let conninfo = h.ssh_ok(
            "cd /tmp && sudo -u postgres psql -tAc \
             'SELECT sender_host, status FROM pg_stat_wal_receiver'",
        );
        assert_eq!(
            conninfo.trim(),
            format!("{}|streaming", ips[0]),
            "WAL receiver on {}",
            h.name
        );
    }

    // Converged: both layers again (moto refreshed, the hosts checked) change nothing.
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes")
        .stdout_has("Verified")
        .recap_all_zero("changed");
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);

    // The password went to the hosts only.
    work.assert_no_password_anywhere();
    let state = work.read("cluster.pgstate.json");
    assert!(!state.contains(PASSWORD), "the state holds the password");

    drop(containers);
    eprintln!(
        "aws_infra_then_hosts_at_moto_addresses_streams: {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
