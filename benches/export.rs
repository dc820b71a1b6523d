//! pgform's native host configuration against `ansible-playbook` running the Ansible
//! export of the same cluster (`pgform::export::ansible`), in one process: two sets of 3
//! fresh containers of the testbed (same image, same apt repository), one per tool; the
//! first run of each from bare hosts, with its time per task; then converged reruns of
//! each, interleaved (native includes its SSH connect, since ansible-playbook connects
//! too); the ratio; and each tool once on the other's converged hosts.
//!
//! `cargo bench --bench export --profile dev` (3 reruns each; `-- N` for another count).
//! Needs the testbed (`bash scripts/testbed.sh up`, `eval "$(bash scripts/testbed.sh env)"`)
//! and `ansible-playbook` (pip `ansible`, with ansible.posix for the `profile_tasks`
//! callback). Under `cargo test` (no `--bench` argument) it builds nothing: it says so and
//! exits. Raw numbers go to `target/bench-export.json`.

#[allow(dead_code)] // the bench uses only part of the harness
#[path = "../tests/common/hosts.rs"]
mod testbed;
#[allow(dead_code)]
#[path = "../tests/common/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgform::export::{ansible, write_files};
use pgform::hosts as cluster;
use pgform::remote::{Connection, Sh};
use pgform::spec::{ClusterSpec, Role, parse_str};
use pgform::state::State;
use pgform::tasks::{Order, Playbook, Recap, RunOptions, TaskEvent, TaskStatus};
use serde_json::{Value, json};
use testbed::{Host, Network, SshKey};

const PASSWORD: &str = "bench-password";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

fn spec(net: &Network, hosts: &[Host], key: &SshKey) -> ClusterSpec {
    let mut text = format!(
        "name = \"bench\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [tls]\ndir = {:?}\n",
        key.private,
        net.apt_mirror(),
        key.dir().join(format!("{}.tls", net.name)),
    );
    for (i, h) in hosts.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[hosts]]\naddress = \"{}\"\nrole = \"{role}\"\n",
            h.ip()
        ));
    }
    parse_str(&text, Path::new("bench.toml"))
        .expect("valid spec")
        .spec
}

/// 3 fresh hosts on their own network, started in parallel.
fn start_hosts(prefix: &str, key: &SshKey) -> (Network, Vec<Host>) {
    let net = Network::create(prefix);
    let hs = Host::start_many(&net, 3, key);
    (net, hs)
}

// ---------------------------------------------------------------------------------------
// Native

/// One native run: connect, configure, and every task event with its end (seconds since
/// configure started).
struct Native {
    connect_s: f64,
    configure_s: f64,
    recap: Option<Recap>,
    error: Option<String>,
    events: Vec<(TaskEvent, f64)>,
}

impl Native {
    fn total_s(&self) -> f64 {
        self.connect_s + self.configure_s
    }
    fn changed(&self) -> Option<u32> {
        self.recap.as_ref().map(Recap::changed)
    }
}

async fn connect(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    known: &Path,
) -> (Vec<Connection>, f64) {
    let t = Instant::now();
    let conns = cluster::connect(spec, nodes, known)
        .await
        .unwrap_or_else(|e| panic!("ssh: {e}"));
    (conns, t.elapsed().as_secs_f64())
}

/// Connect + configure on fresh connections; the connections are returned open.
async fn native_run(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    known: &Path,
) -> (Native, Vec<Connection>) {
    let (conns, connect_s) = connect(spec, nodes, known).await;
    let seen: Arc<Mutex<Vec<(TaskEvent, f64)>>> = Arc::default();
    let sink_seen = seen.clone();
    let started = Instant::now();
    let events: pgform::tasks::Sink = Arc::new(move |e: &TaskEvent| {
        let end = started.elapsed().as_secs_f64();
        sink_seen.lock().unwrap().push((e.clone(), end));
    });
    let opts = RunOptions {
        check: false,
        events: Some(events),
        ..Default::default()
    };
    let result = cluster::configure(spec, nodes, &conns, PASSWORD, &opts).await;
    let configure_s = started.elapsed().as_secs_f64();
    let events = std::mem::take(&mut *seen.lock().unwrap());
    let (recap, error) = match result {
        Ok(r) if r.failed() => {
            let e = format!("{:?}", r.failures);
            (Some(r), Some(e))
        }
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let run = Native {
        connect_s,
        configure_s,
        recap,
        error,
        events,
    };
    (run, conns)
}

async fn close(conns: Vec<Connection>) {
    for c in conns {
        c.close().await;
    }
}

/// Per task of the task list, its time on the critical path: per batch of its play (all
/// hosts, or replicas then primary), the slowest host's time; summed over batches.
fn native_rows(
    book: &Playbook,
    roles: &BTreeMap<String, Role>,
    run: &Native,
) -> Vec<(String, String, f64, String)> {
    let mut rows = Vec::new();
    for play in &book.plays {
        let batches: Vec<Vec<Role>> = match play.order {
            Order::Parallel => vec![vec![Role::Primary, Role::Replica]],
            Order::ReplicasFirst => vec![vec![Role::Replica], vec![Role::Primary]],
            Order::PrimaryFirst => vec![vec![Role::Primary], vec![Role::Replica]],
        };
        for task in play.tasks.iter().chain(&play.handlers) {
            let of_task: Vec<&TaskEvent> = run
                .events
                .iter()
                .map(|(e, _)| e)
                .filter(|e| e.play == play.name && e.task == task.name)
                .collect();
            let critical: f64 = batches
                .iter()
                .map(|b| {
                    of_task
                        .iter()
                        .filter(|e| roles.get(&e.host).is_some_and(|r| b.contains(r)))
                        .map(|e| e.seconds)
                        .fold(0.0, f64::max)
                })
                .fold(0.0, |a, b| a + b);
            let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
            for e in &of_task {
                let s = match e.status {
                    TaskStatus::Ok => "ok",
                    TaskStatus::Changed | TaskStatus::WouldChange => "changed",
                    TaskStatus::Skipped => "skipped",
                    TaskStatus::Failed => "failed",
                };
                *counts.entry(s).or_default() += 1;
            }
            let statuses = if counts.is_empty() {
                "not run".to_string()
            } else {
                counts
                    .iter()
                    .map(|(s, n)| format!("{n} {s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            rows.push((play.name.clone(), task.name.clone(), critical, statuses));
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------
// Ansible

/// One `ansible-playbook` run: wall time, changed per host from the PLAY RECAP, and
/// `profile_tasks`' time per task (task start to the next task's start, all hosts).
struct Ansible {
    wall_s: f64,
    ok: bool,
    changed: Vec<(String, u32)>,
    failed: u32,
    tasks: Vec<(String, f64)>,
    tail: String,
}

impl Ansible {
    fn changed_total(&self) -> u32 {
        self.changed.iter().map(|(_, c)| c).sum()
    }
}

/// A command of the ansible suite in the export directory, on fresh SSH connections:
/// a new ControlPath directory per call, so no master of an earlier run is reused.
fn ansible_cmd(bin: &Path, dir: &Path, cp_dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", cp_dir)
        .env("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
        .env("PROFILE_TASKS_SORT_ORDER", "none")
        .env("PROFILE_TASKS_TASK_OUTPUT_LIMIT", "all")
        .env("COLUMNS", "160")
        .env(ansible::PASSWORD_ENV, PASSWORD)
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// (`host -> changed`, failed + unreachable) from the PLAY RECAP.
fn recap(output: &str) -> (Vec<(String, u32)>, u32) {
    let Some(start) = output.find("PLAY RECAP") else {
        return (Vec::new(), 1);
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in output[start..].lines().skip(1) {
        let Some((host, counts)) = line.split_once(" : ") else {
            continue;
        };
        let get = |k: &str| -> u32 {
            counts
                .split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        bad += get("failed") + get("unreachable");
        out.push((host.trim().to_string(), get("changed")));
    }
    (out, bad)
}

/// `profile_tasks`' summary (in run order): `name ----- 1.23s` lines after TASKS RECAP.
fn profile(output: &str) -> Vec<(String, f64)> {
    let Some(start) = output.find("TASKS RECAP") else {
        return Vec::new();
    };
    output[start..]
        .lines()
        .filter_map(|l| {
            let (head, time) = l.trim_end().rsplit_once(' ')?;
            let s: f64 = time.strip_suffix('s')?.parse().ok()?;
            let name = head.trim_end_matches('-').trim_end();
            (!name.is_empty() && head.ends_with('-')).then(|| (name.to_string(), s))
        })
        .collect()
}

fn ansible_run(bin: &Path, dir: &Path, key: &Path) -> Ansible {
    let cp = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let out = ansible_cmd(bin, dir, cp.path())
        .args(["-i", "inventory.ini", "site.yml", "--private-key"])
        .arg(key)
        .output()
        .expect("run ansible-playbook");
    let wall_s = t.elapsed().as_secs_f64();
    let all = text(&out);
    let (changed, failed) = recap(&all);
    let tail = all[all.find("PLAY RECAP").unwrap_or(0)..].to_string();
    Ansible {
        wall_s,
        ok: out.status.success() && failed == 0,
        changed,
        failed,
        tasks: profile(&all),
        tail: if out.status.success() {
            tail
        } else {
            all.chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        },
    }
}

/// Wall time of an ansible command that must succeed (controller-side references).
fn timed(mut cmd: Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run ansible");
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    s
}

// ---------------------------------------------------------------------------------------

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Native rows and Ansible's task times side by side: Ansible's tasks are matched in order
/// to the task list's rows of the same name (a native task that became several Ansible
/// tasks, `name` and `name: step`, gets their sum); either side may have rows the other
/// has not.
fn side_by_side(
    native: &[(String, String, f64, String)],
    ans: &[(String, f64)],
) -> Vec<(String, String, Option<f64>, Option<f64>)> {
    let mut out = Vec::new();
    let mut j = 0;
    for (play, task, s, statuses) in native {
        let step = format!("{task}: ");
        let of = |n: &str| n == task || n.starts_with(&step);
        match ans[j..].iter().position(|(n, _)| of(n)) {
            Some(k) => {
                for (n, a) in &ans[j..j + k] {
                    out.push((String::new(), n.clone(), None, Some(*a)));
                }
                let mut end = j + k;
                while end < ans.len() && of(&ans[end].0) {
                    end += 1;
                }
                let a: f64 = ans[j + k..end].iter().map(|t| t.1).sum();
                let name = match end - (j + k) {
                    1 => task.clone(),
                    n => format!("{task} ({n} ansible tasks)"),
                };
                out.push((play.clone(), name, Some(*s), Some(a)));
                j = end;
            }
            None if statuses == "not run" => {}
            None => out.push((play.clone(), task.clone(), Some(*s), None)),
        }
    }
    for (n, a) in &ans[j..] {
        out.push((String::new(), n.clone(), None, Some(*a)));
    }
    out
}

fn print_side_by_side(
    title: &str,
    rows: &[(String, String, Option<f64>, Option<f64>)],
    native_wall: f64,
    ansible_wall: f64,
) {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}s"));
    println!("\n{title}");
    println!(
        "  {:<9} {:<52} {:>9} {:>9} {:>9}",
        "play", "task", "native", "ansible", "diff"
    );
    for (play, task, n, a) in rows {
        let d = match (n, a) {
            (Some(n), Some(a)) => format!("{:+.2}s", a - n),
            (None, Some(a)) => format!("{a:+.2}s"),
            _ => "-".into(),
        };
        println!(
            "  {:<9} {:<52} {:>9} {:>9} {:>9}",
            play,
            task,
            f(*n),
            f(*a),
            d
        );
    }
    let n_sum: f64 = rows.iter().filter_map(|r| r.2).sum();
    let a_sum: f64 = rows.iter().filter_map(|r| r.3).sum();
    println!(
        "  {:<9} {:<52} {:>8.2}s {:>8.2}s {:>+8.2}s",
        "",
        "sum of tasks",
        n_sum,
        a_sum,
        a_sum - n_sum
    );
    println!(
        "  {:<9} {:<52} {:>8.2}s {:>8.2}s {:>+8.2}s",
        "",
        "wall (native: connect + configure)",
        native_wall,
        ansible_wall,
        ansible_wall - native_wall
    );
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        println!(
            "export bench: skipped (it builds two 3-host clusters in containers and runs \
             ansible-playbook; run `cargo bench --bench export --profile dev`)"
        );
        return;
    }
    let reruns: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    if let Err(why) = testbed::testbed_ready() {
        eprintln!("error: the host testbed is not ready: {why}");
        std::process::exit(2);
    }
    let Some(bin) = tools::find("ansible-playbook") else {
        eprintln!("error: ansible-playbook is not installed (pip install ansible)");
        std::process::exit(2);
    };
    let ansible_version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    let load_before = load();
    println!("load average before: {load_before}; {ansible_version}");

    let key = SshKey::generate();
    let t = Instant::now();
    let (net_n, hs_n) = start_hosts("bench-native", &key);
    let (net_a, hs_a) = start_hosts("bench-ansible", &key);
    println!(
        "2 x 3 containers started and answering ssh in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let spec_n = spec(&net_n, &hs_n, &key);
    let spec_a = spec(&net_a, &hs_a, &key);
    let nodes_n = cluster::inventory(&spec_n, &State::new("bench")).expect("inventory");
    let nodes_a = cluster::inventory(&spec_a, &State::new("bench")).expect("inventory");
    // The exported playbooks copy the certificates from the TLS folders.
    cluster::prepare_tls(&spec_n, &nodes_n).expect("certificates");
    cluster::prepare_tls(&spec_a, &nodes_a).expect("certificates");
    let roles: BTreeMap<String, Role> = nodes_n.iter().map(|n| (n.name.clone(), n.role)).collect();
    let book = Playbook::embedded().expect("embedded playbook");
    let known_n = key.dir().join("known_hosts_native");
    let known_a = key.dir().join("known_hosts_ansible");
    // The Ansible project of each cluster (the one of the native cluster for the cross run).
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_n = tempfile::tempdir().expect("tempdir");
    write_files(
        dir_a.path(),
        &ansible::export(&spec_a, &ansible::Inventory::Hosts(nodes_a.clone())).expect("export"),
    )
    .expect("write");
    write_files(
        dir_n.path(),
        &ansible::export(&spec_n, &ansible::Inventory::Hosts(nodes_n.clone())).expect("export"),
    )
    .expect("write");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // 1. First runs from bare hosts: native, then Ansible; each verified afterwards.
    let (native_first, native_verify_s) = rt.block_on(async {
        let (run, conns) = native_run(&spec_n, &nodes_n, &known_n).await;
        assert!(run.error.is_none(), "native first run: {:?}", run.error);
        let t = Instant::now();
        let v = cluster::verify(&spec_n, &nodes_n, &conns, VERIFY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("verify: {e}"));
        assert_eq!(v.replicas.len(), 2, "{v:?}");
        let s = t.elapsed().as_secs_f64();
        close(conns).await;
        (run, s)
    });
    println!(
        "native first run: connect {:.2} s + configure {:.2} s ({} changed); verify {:.2} s",
        native_first.connect_s,
        native_first.configure_s,
        native_first.changed().unwrap_or(0),
        native_verify_s
    );
    let ansible_first = ansible_run(&bin, dir_a.path(), &key.private);
    assert!(
        ansible_first.ok,
        "ansible first run:\n{}",
        ansible_first.tail
    );
    println!(
        "ansible first run: {:.2} s ({} changed)",
        ansible_first.wall_s,
        ansible_first.changed_total()
    );
    rt.block_on(async {
        let (conns, _) = connect(&spec_a, &nodes_a, &known_a).await;
        let v = cluster::verify(&spec_a, &nodes_a, &conns, VERIFY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("verify after ansible: {e}"));
        assert_eq!(v.replicas.len(), 2, "{v:?}");
        close(conns).await;
    });

    // 2. Converged reruns, interleaved, each on fresh connections.
    let mut native_reruns = Vec::new();
    let mut ansible_reruns = Vec::new();
    for i in 0..reruns {
        let run = rt.block_on(async {
            let (run, conns) = native_run(&spec_n, &nodes_n, &known_n).await;
            close(conns).await;
            run
        });
        assert!(run.error.is_none(), "native rerun: {:?}", run.error);
        assert_eq!(run.changed(), Some(0), "native rerun {i} changed something");
        let a = ansible_run(&bin, dir_a.path(), &key.private);
        assert!(a.ok, "ansible rerun:\n{}", a.tail);
        assert_eq!(
            a.changed_total(),
            0,
            "ansible rerun {i} changed: {:?}",
            a.changed
        );
        eprintln!(
            "  rerun {}: native {:.3} s (connect {:.3} + configure {:.3}); ansible {:.3} s",
            i + 1,
            run.total_s(),
            run.connect_s,
            run.configure_s,
            a.wall_s
        );
        native_reruns.push(run);
        ansible_reruns.push(a);
    }

    // 3. Where Ansible's fixed costs go: the controller alone (start, parse the project,
    //    no host), and one module per host on fresh connections; on the hosts, Python's
    //    start against a bare command.
    let list_tasks: Vec<f64> = (0..3)
        .map(|_| {
            let cp = tempfile::tempdir().expect("tempdir");
            let mut c = ansible_cmd(&bin, dir_a.path(), cp.path());
            c.args(["-i", "inventory.ini", "site.yml", "--list-tasks"]);
            timed(c)
        })
        .collect();
    let adhoc = bin.with_file_name("ansible");
    let ping: Vec<f64> = (0..3)
        .map(|_| {
            let cp = tempfile::tempdir().expect("tempdir");
            let mut c = ansible_cmd(&adhoc, dir_a.path(), cp.path());
            c.args(["all", "-i", "inventory.ini", "-m", "ansible.builtin.ping"])
                .arg("--private-key")
                .arg(&key.private);
            timed(c)
        })
        .collect();
    let (bare_cmd, python_cmd) = rt.block_on(async {
        let (conns, _) = connect(&spec_a, &nodes_a, &known_a).await;
        let mut bare = Vec::new();
        let mut py = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            conns[0].run(Sh::argv(["true"]), None).await.expect("ssh");
            bare.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let o = conns[0]
                .run(Sh::argv(["python3", "-c", "pass"]), None)
                .await
                .expect("ssh");
            assert!(o.success(), "{}", o.stderr);
            py.push(t.elapsed().as_secs_f64());
        }
        close(conns).await;
        (median(&bare), median(&py))
    });

    // 4. Each tool once on the other's converged hosts (after the measurements: it may
    //    change them).
    let native_on_ansible = rt.block_on(async {
        let (run, conns) = native_run(&spec_a, &nodes_a, &known_a).await;
        close(conns).await;
        run
    });
    let ansible_on_native = ansible_run(&bin, dir_n.path(), &key.private);
    let load_after = load();

    // Tables.
    let native_first_rows = native_rows(&book, &roles, &native_first);
    let first_rows = side_by_side(&native_first_rows, &ansible_first.tasks);
    print_side_by_side(
        "first run from bare hosts, per task (critical path; ansible: profile_tasks)",
        &first_rows,
        native_first.total_s(),
        ansible_first.wall_s,
    );
    let last_n = native_reruns.last().expect("a rerun");
    let last_a = ansible_reruns.last().expect("a rerun");
    let rerun_rows = side_by_side(&native_rows(&book, &roles, last_n), &last_a.tasks);
    print_side_by_side(
        "converged rerun, per task (the last rerun; native: overlapping query times, all \
         asked at once)",
        &rerun_rows,
        last_n.total_s(),
        last_a.wall_s,
    );

    let n_tot: Vec<f64> = native_reruns.iter().map(Native::total_s).collect();
    let n_conn: Vec<f64> = native_reruns.iter().map(|r| r.connect_s).collect();
    let n_conf: Vec<f64> = native_reruns.iter().map(|r| r.configure_s).collect();
    let a_wall: Vec<f64> = ansible_reruns.iter().map(|r| r.wall_s).collect();
    let ratio_rerun = median(&a_wall) / median(&n_tot);
    let ratio_first = ansible_first.wall_s / native_first.total_s();
    let a_tasks_first: f64 = ansible_first.tasks.iter().map(|t| t.1).sum();
    let a_tasks_rerun: Vec<f64> = ansible_reruns
        .iter()
        .map(|r| r.tasks.iter().map(|t| t.1).sum())
        .collect();
    println!("\n| measurement | native | ansible | ratio |\n| --- | --- | --- | --- |");
    println!(
        "| first run from bare hosts | {:.2} s | {:.2} s | {ratio_first:.2}x |",
        native_first.total_s(),
        ansible_first.wall_s
    );
    println!(
        "| converged rerun, median of {reruns} | {:.3} s | {:.3} s | **{ratio_rerun:.1}x** |",
        median(&n_tot),
        median(&a_wall)
    );
    println!(
        "native reruns: connect {n_conn:.3?}, configure {n_conf:.3?}; ansible reruns {a_wall:.3?}"
    );
    println!(
        "ansible: tasks add up to {a_tasks_first:.2} s of the first run's {:.2} s; \
         converged {:.2} s of {:.2} s (median)",
        ansible_first.wall_s,
        median(&a_tasks_rerun),
        median(&a_wall)
    );
    println!(
        "ansible fixed costs: --list-tasks (controller start + parse, no host) median {:.2} s; \
         ad-hoc ping of 3 hosts on fresh connections median {:.2} s; on a host over an open \
         SSH connection `true` {:.3} s, `python3 -c pass` {:.3} s",
        median(&list_tasks),
        median(&ping),
        bare_cmd,
        python_cmd
    );
    println!(
        "cross runs: native on ansible's converged hosts {:.2} s, {} changed{}; \
         ansible on native's converged hosts {:.2} s, {} changed{}",
        native_on_ansible.total_s(),
        native_on_ansible
            .changed()
            .map_or("?".into(), |c| c.to_string()),
        native_on_ansible
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(" (error: {e})")),
        ansible_on_native.wall_s,
        ansible_on_native.changed_total(),
        if ansible_on_native.ok {
            String::new()
        } else {
            format!(" (failed: {} failed/unreachable)", ansible_on_native.failed)
        }
    );
    let changed_tasks = |r: &Native| -> Vec<String> {
        r.events
            .iter()
            .filter(|(e, _)| e.status == TaskStatus::Changed)
            .map(|(e, _)| format!("{} {}", e.host, e.task))
            .collect()
    };
    if native_on_ansible.changed().unwrap_or(0) > 0 {
        println!("  native changed: {:?}", changed_tasks(&native_on_ansible));
    }
    println!("\nload average before: {load_before}; after: {load_after}");

    let rows_json = |rows: &[(String, String, Option<f64>, Option<f64>)]| -> Value {
        rows.iter()
            .map(|(p, t, n, a)| json!({"play": p, "task": t, "native_s": n, "ansible_s": a}))
            .collect()
    };
    let native_json = |r: &Native| -> Value {
        json!({
            "connect_s": r.connect_s,
            "configure_s": r.configure_s,
            "changed": r.changed(),
            "error": r.error,
        })
    };
    let ansible_json = |r: &Ansible| -> Value {
        json!({
            "wall_s": r.wall_s,
            "ok": r.ok,
            "changed": r.changed,
            "tasks": r.tasks,
        })
    };
    let out = json!({
        "hosts_per_tool": 3,
        "ansible": ansible_version,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "first_run": {
            "native": native_json(&native_first),
            "native_verify_s": native_verify_s,
            "ansible": ansible_json(&ansible_first),
            "per_task": rows_json(&first_rows),
            "ratio": ratio_first,
        },
        "reruns": {
            "native": native_reruns.iter().map(native_json).collect::<Vec<_>>(),
            "ansible": ansible_reruns.iter().map(ansible_json).collect::<Vec<_>>(),
            "native_median_s": median(&n_tot),
            "ansible_median_s": median(&a_wall),
            "ratio": ratio_rerun,
            "per_task_last": rows_json(&rerun_rows),
        },
        "ansible_fixed_costs": {
            "list_tasks_s": list_tasks,
            "adhoc_ping_s": ping,
            "host_true_s": bare_cmd,
            "host_python3_pass_s": python_cmd,
        },
        "cross": {
            "native_on_ansible_hosts": native_json(&native_on_ansible),
            "native_on_ansible_hosts_changed": changed_tasks(&native_on_ansible),
            "ansible_on_native_hosts": ansible_json(&ansible_on_native),
        },
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-export.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")) {
        Ok(()) => println!("raw numbers: {}", path.display()),
        Err(e) => eprintln!("warning: cannot write {}: {e}", path.display()),
    }
    drop((hs_n, hs_a));
    drop((net_n, net_a));
}
