//! pgform against its peers on the same kind of hosts in the same run: a lean
//! hand-written Ansible playbook (`benches/peers/ansible/site.yml`) and the same deploy
//! for pyinfra (`benches/peers/pyinfra/deploy.py`), each on fresh containers of the host
//! testbed (made before its clock starts), whole commands timed: the first run from bare
//! hosts to replicas streaming, then the median of 3 converged reruns. Sizes: 3 nodes and
//! 10 nodes (Ansible with its default 5 forks); `-- 3` for one size.
//!
//! `cargo bench --bench peers --profile dev`. Needs the testbed (`bash scripts/testbed.sh
//! up`, `eval "$(bash scripts/testbed.sh env)"`), ansible-playbook and pyinfra 3.10
//! (`python3 -m pip install pyinfra==3.10.0`). Under `cargo test` (no `--bench`) it
//! builds nothing: it says so and exits.

#[allow(dead_code)] // the bench uses only part of the harness
#[path = "../tests/common/hosts.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use testbed::{Host, Network, SshKey};

const PASSWORD: &str = "peers-bench-password";
const RERUNS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Pgform,
    Ansible,
    Pyinfra,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Pgform => "pgform",
            Tool::Ansible => "Ansible",
            Tool::Pyinfra => "pyinfra",
        }
    }
}

/// One tool's cluster: its hosts and the command that deploys to them.
struct Setup {
    _net: Network,
    _hosts: Vec<Host>,
    _key: SshKey,
    command: Command,
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

fn start_hosts(nodes: u8) -> (Network, SshKey, Vec<Host>) {
    let key = SshKey::generate();
    let net = Network::create("peers");
    let hosts = Host::start_many(&net, nodes, &key);
    (net, key, hosts)
}

/// `primary`, `replica-0`, ...: the names pgform gives the nodes, used by the peers too.
fn node_name(i: usize) -> String {
    if i == 0 {
        "primary".into()
    } else {
        format!("replica-{}", i - 1)
    }
}

fn setup(tool: Tool, nodes: u8) -> Setup {
    let (net, key, hosts) = start_hosts(nodes);
    let dir = key.dir().to_path_buf();
    let cidr = net.subnet.clone();
    let mirror = net.apt_mirror();
    let apt_line = format!("deb [trusted=yes] {mirror} ./");
    let command = match tool {
        Tool::Pgform => {
            // The peers have no TLS, users or databases: neither has pgform here.
            let mut text = format!(
                "name = \"peers\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
                 [packages]\napt_mirror = {apt_line:?}\n[tls]\nenabled = false\n",
                key.private,
            );
            for (i, h) in hosts.iter().enumerate() {
                let role = if i == 0 { "primary" } else { "replica" };
                text.push_str(&format!(
                    "[[hosts]]\naddress = \"{}\"\nrole = \"{role}\"\n",
                    h.ip()
                ));
            }
            let spec = dir.join("peers.toml");
            std::fs::write(&spec, text).expect("write the spec");
            // `PGFORM_BENCH_BIN`: another build of pgform (an A/B at the same load).
            let bin = std::env::var_os("PGFORM_BENCH_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_pgform").into());
            let mut c = Command::new(bin);
            c.arg("-f")
                .arg(&spec)
                .args(["apply", "--auto-approve"])
                .env("PGFORM_REPLICATION_PASSWORD", PASSWORD);
            c
        }
        Tool::Ansible => {
            let mut inv = String::from("[primary]\n");
            for (i, h) in hosts.iter().enumerate() {
                if i == 1 {
                    inv.push_str("[replicas]\n");
                }
                inv.push_str(&format!("{} ansible_host={}\n", node_name(i), h.ip()));
            }
            inv.push_str(&format!(
                "[all:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
                 ansible_python_interpreter=/usr/bin/python3\n\
                 ansible_ssh_common_args='-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={}'\n",
                key.private.display(),
                dir.join("known_hosts_ansible").display()
            ));
            std::fs::write(dir.join("inventory.ini"), inv).expect("write the inventory");
            let vars = dir.join("vars.yml");
            std::fs::write(
                &vars,
                format!(
                    "apt_mirror: {apt_line:?}\nmembers_cidr: {cidr:?}\nreplication_password: {PASSWORD:?}\n"
                ),
            )
            .expect("write the variables");
            let mut c = Command::new("ansible-playbook");
            c.arg("-i")
                .arg(dir.join("inventory.ini"))
                .arg("-e")
                .arg(format!("@{}", vars.display()))
                .arg(peers_dir().join("ansible/site.yml"))
                // Its own masters (ControlPersist 60 s, Ansible's default), fresh per run.
                .env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.join("cp"))
                .env("ANSIBLE_NOCOLOR", "1");
            c
        }
        Tool::Pyinfra => {
            let mut inv = String::new();
            for (group, range) in [("primary", 0..1), ("replicas", 1..hosts.len())] {
                inv.push_str(&format!("{group} = [\n"));
                for i in range {
                    inv.push_str(&format!(
                        "    ({:?}, {{\"ssh_hostname\": {:?}}}),\n",
                        node_name(i),
                        hosts[i].ip().to_string()
                    ));
                }
                inv.push_str("]\n");
            }
            std::fs::write(dir.join("inventory.py"), inv).expect("write the inventory");
            let mut c = Command::new("python3");
            c.args(["-m", "pyinfra", "-y"])
                .arg("--data")
                .arg("ssh_user=root")
                .arg("--data")
                .arg(format!("ssh_key={}", key.private.display()))
                .arg("--data")
                .arg(format!(
                    "ssh_known_hosts_file={}",
                    dir.join("known_hosts_pyinfra").display()
                ))
                .arg("--data")
                .arg(format!("apt_mirror={apt_line}"))
                .arg("--data")
                .arg(format!("members_cidr={cidr}"))
                .arg(dir.join("inventory.py"))
                .args(
                    ["deploy.py", "primary.py", "replicas.py", "verify.py"]
                        .map(|f| peers_dir().join("pyinfra").join(f)),
                )
                .env("PEER_REPLICATION_PASSWORD", PASSWORD);
            c
        }
    };
    Setup {
        _net: net,
        _hosts: hosts,
        _key: key,
        command,
    }
}

/// Runs the command, fails the bench (with its output) if it fails; its wall time.
fn timed(tool: Tool, what: &str, command: &mut Command) -> f64 {
    let t = Instant::now();
    let out = command.output().expect("start the tool");
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "{} {what} failed ({}):\n{}\n{}",
            tool.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    println!("  {:<8} {what}: {secs:.2} s", tool.name());
    secs
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "peers bench: skipped (it builds clusters with pgform, Ansible and pyinfra in \
             containers; run `cargo bench --bench peers --profile dev`)"
        );
        return;
    }
    let mut sizes: Vec<u8> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![3, 10];
    }
    if let Err(why) = testbed::testbed_ready() {
        eprintln!("error: the host testbed is not ready: {why}");
        std::process::exit(2);
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("commit {commit}, load average before: {}", load());
    // Tool names among the arguments pick some (`-- 3 pyinfra`); all by default.
    let all = [Tool::Pgform, Tool::Ansible, Tool::Pyinfra];
    let picked: Vec<Tool> = all
        .into_iter()
        .filter(|t| std::env::args().any(|a| a.eq_ignore_ascii_case(t.name())))
        .collect();
    let tools = if picked.is_empty() {
        all.to_vec()
    } else {
        picked
    };
    let mut table = Vec::new();
    for &nodes in &sizes {
        println!("{nodes} nodes (1 primary + {} replicas):", nodes - 1);
        let mut row = Vec::new();
        for &tool in &tools {
            let mut s = setup(tool, nodes);
            let first = timed(tool, "first run", &mut s.command);
            let reruns = (0..RERUNS)
                .map(|i| timed(tool, &format!("converged rerun {}", i + 1), &mut s.command))
                .collect();
            row.push((first, median(reruns)));
        }
        table.push((nodes, row));
    }
    println!("\nload average after: {}", load());
    println!("\n| nodes | run | pgform | Ansible | pyinfra |\n| --- | --- | --- | --- | --- |");
    for (nodes, row) in &table {
        // Ratios against pgform when it ran; "-" for a tool not run.
        let get = |tool: Tool| tools.iter().position(|&t| t == tool).map(|i| row[i]);
        let base = get(Tool::Pgform);
        for (label, pick) in [
            ("first run", (|r: (f64, f64)| r.0) as fn((f64, f64)) -> f64),
            ("converged (median of 3)", |r| r.1),
        ] {
            let cell = |tool: Tool| match (get(tool), base) {
                (Some(r), Some(b)) if tool != Tool::Pgform => {
                    format!("{:.2} s ({:.1}x)", pick(r), pick(r) / pick(b))
                }
                (Some(r), _) => format!("{:.2} s", pick(r)),
                (None, _) => "-".into(),
            };
            println!(
                "| {nodes} | {label} | {} | {} | {} |",
                cell(Tool::Pgform),
                cell(Tool::Ansible),
                cell(Tool::Pyinfra)
            );
        }
    }
}
