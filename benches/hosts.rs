//! Wall time of configuring 1 primary + 2 replicas over SSH with the embedded task list,
//! on Debian containers of the host testbed: a first run from bare hosts, then converged
//! reruns; each task's share of the wall time on the critical path; SSH connection setup
//! apart; and, for context, the converged checks as plain commands.
//!
//! `cargo bench --bench hosts --profile dev` (5 reruns; `-- N` for another count). Needs
//! the testbed: `bash scripts/testbed.sh up` and `eval "$(bash scripts/testbed.sh env)"`.
//! Under `cargo test` (no `--bench` argument) it builds no cluster: it says so and exits.
//! Raw numbers go to `target/bench-hosts.json`.

#[allow(dead_code)] // the bench uses only part of the harness
#[path = "../tests/common/hosts.rs"]
mod testbed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgform::hosts as cluster;
use pgform::remote::{Connection, Sh, shell};
use pgform::spec::{ClusterSpec, Role, parse_str};
use pgform::state::State;
use pgform::tasks::{Order, Playbook, Recap, RunOptions, TaskEvent, TaskStatus};
use serde_json::{Value, json};
use testbed::{Host, Network, SshKey};

const PASSWORD: &str = "bench-password";
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// Tasks whose cost is the work itself rather than the tool's: fetching and unpacking
/// the packages (initdb runs inside the package install) and copying the primary.
const UNAVOIDABLE: &[&str] = &["install PostgreSQL", "seed from the primary"];

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

/// One configure run: the connect before it, the run, and every event with the moment
/// (seconds since the run started) it ended.
struct Run {
    connect_s: f64,
    configure_s: f64,
    recap: Recap,
    events: Vec<(TaskEvent, f64)>,
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

async fn configure(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    conns: &[Connection],
    connect_s: f64,
) -> Run {
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
    let recap = cluster::configure(spec, nodes, conns, PASSWORD, &opts)
        .await
        .unwrap_or_else(|e| panic!("configure: {e}"));
    let configure_s = started.elapsed().as_secs_f64();
    assert!(!recap.failed(), "the run failed: {:?}", recap.failures);
    let events = std::mem::take(&mut *seen.lock().unwrap());
    Run {
        connect_s,
        configure_s,
        recap,
        events,
    }
}

/// One task (or handler) of the task list, as a run spent it.
#[derive(Clone, serde::Serialize)]
struct Row {
    play: String,
    task: String,
    /// Per batch of the play (all hosts, or replicas then primary), the slowest host's
    /// time for this task; summed over batches: its cost on the critical path.
    critical_s: f64,
    /// Summed over hosts (what `Recap.task_seconds` adds up).
    sum_s: f64,
    /// e.g. `3 changed`, `2 ok 1 skipped`.
    statuses: String,
}

#[derive(Clone, serde::Serialize)]
struct PlaySpan {
    play: String,
    /// From the first task's start to the last one's end, over all hosts.
    span_s: f64,
    /// Sum over batches of the slowest host's total in that play.
    critical_s: f64,
}

/// Rows in task-list order and the plays' spans.
fn breakdown(
    book: &Playbook,
    roles: &BTreeMap<String, Role>,
    run: &Run,
) -> (Vec<Row>, Vec<PlaySpan>) {
    let mut rows = Vec::new();
    let mut spans = Vec::new();
    for play in &book.plays {
        let in_play: Vec<&(TaskEvent, f64)> = run
            .events
            .iter()
            .filter(|(e, _)| e.play == play.name)
            .collect();
        let batches: Vec<Vec<Role>> = match play.order {
            Order::Parallel => vec![vec![Role::Primary, Role::Replica]],
            Order::ReplicasFirst => vec![vec![Role::Replica], vec![Role::Primary]],
            Order::PrimaryFirst => vec![vec![Role::Primary], vec![Role::Replica]],
        };
        let in_batch =
            |e: &TaskEvent, batch: &[Role]| roles.get(&e.host).is_some_and(|r| batch.contains(r));
        for task in play.tasks.iter().chain(&play.handlers) {
            let of_task: Vec<&TaskEvent> = in_play
                .iter()
                .map(|(e, _)| e)
                .filter(|e| e.task == task.name)
                .collect();
            let critical_s = batches
                .iter()
                .map(|b| {
                    of_task
                        .iter()
                        .filter(|e| in_batch(e, b))
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
            rows.push(Row {
                play: play.name.clone(),
                task: task.name.clone(),
                critical_s,
                // fold from +0.0: an empty f64 sum is -0.0.
                sum_s: of_task.iter().map(|e| e.seconds).fold(0.0, |a, b| a + b),
                statuses: if counts.is_empty() {
                    "not run".into()
                } else {
                    counts
                        .iter()
                        .map(|(s, n)| format!("{n} {s}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            });
        }
        let start = in_play
            .iter()
            .map(|(e, end)| end - e.seconds)
            .fold(f64::INFINITY, f64::min);
        let end = in_play.iter().map(|(_, end)| *end).fold(0.0, f64::max);
        let critical_s = batches
            .iter()
            .map(|b| {
                let mut per_host: BTreeMap<&str, f64> = BTreeMap::new();
                for (e, _) in in_play.iter().filter(|(e, _)| in_batch(e, b)) {
                    *per_host.entry(e.host.as_str()).or_default() += e.seconds;
                }
                per_host.values().copied().fold(0.0, f64::max)
            })
            .sum();
        spans.push(PlaySpan {
            play: play.name.clone(),
            span_s: if in_play.is_empty() { 0.0 } else { end - start },
            critical_s,
        });
    }
    (rows, spans)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0.0, f64::max)
}

fn print_rows(title: &str, rows: &[Row], spans: &[PlaySpan], wall: f64) {
    println!("\n{title} (configure wall {wall:.2} s)");
    println!(
        "  {:<9} {:<36} {:>9} {:>6} {:>9}  statuses",
        "play", "task", "critical", "% wall", "sum hosts"
    );
    for r in rows {
        println!(
            "  {:<9} {:<36} {:>8.3}s {:>5.1}% {:>8.3}s  {}",
            r.play,
            r.task,
            r.critical_s,
            100.0 * r.critical_s / wall,
            r.sum_s,
            r.statuses
        );
    }
    let on_tasks: f64 = rows.iter().map(|r| r.critical_s).sum();
    let unavoidable: f64 = rows
        .iter()
        .filter(|r| UNAVOIDABLE.contains(&r.task.as_str()))
        .map(|r| r.critical_s)
        .sum();
    println!(
        "  per-task critical times add up to {on_tasks:.2} s ({:.1}% of wall); \
         install + base backup {unavoidable:.2} s ({:.1}%); the rest {:.2} s ({:.1}%)",
        100.0 * on_tasks / wall,
        100.0 * unavoidable / wall,
        wall - unavoidable,
        100.0 * (wall - unavoidable) / wall
    );
    print!("  plays (span / slowest host per batch):");
    for s in spans {
        print!(" {} {:.2}/{:.2} s;", s.play, s.span_s, s.critical_s);
    }
    println!();
}

/// The commands a converged run's checks send to one host, with their standard input:
/// what the task list's queries ask, as plain commands.
fn checks(spec: &ClusterSpec, node: &cluster::Node) -> Vec<(Sh, Option<String>)> {
    let v = spec.postgres.version;
    let conf_dir = format!("/etc/postgresql/{v}/main");
    let user = &spec.postgres.replication_user;
    let mut out = vec![
        (
            shell::read_file("/etc/apt/sources.list.d/pgform.list"),
            None,
        ),
        (shell::exists("/etc/apt/sources.list"), None),
        (
            shell::exists("/etc/apt/sources.list.d/debian.sources"),
            None,
        ),
        (
            shell::package_status(&[format!("postgresql-{v}"), format!("postgresql-client-{v}")]),
            None,
        ),
        (
            shell::read_file(&format!("{conf_dir}/conf.d/pgform.conf")),
            None,
        ),
        (shell::read_file(&format!("{conf_dir}/pg_hba.conf")), None),
        (shell::read_file("/var/lib/postgresql/.pgpass"), None),
    ];
    if node.role == Role::Primary {
        out.push((
            shell::psql(v, "postgres"),
            Some("SELECT name, setting FROM pg_settings WHERE name IN ('max_connections');".into()),
        ));
        out.push((shell::pg_isready(v), None));
        out.push((
            shell::psql(v, "postgres"),
            Some(format!(
                "SELECT rolcanlogin, rolreplication, coalesce(rolpassword, '') FROM pg_authid \
                 WHERE rolname = '{user}';"
            )),
        ));
        out.push((
            shell::psql(v, "postgres"),
            Some("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical';".into()),
        ));
    } else {
        out.push((
            shell::psql(v, "postgres"),
            Some("SELECT status, sender_host, slot_name FROM pg_stat_wal_receiver;".into()),
        ));
        out.push((shell::pg_isready(v), None));
    }
    out
}

/// The converged checks as plain commands on the same SSH masters, hosts in parallel:
/// one command per check (as many round trips as the runner), and all of one host's
/// checks in a single command. Returns (seconds, commands per host).
async fn plain_checks(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    conns: &[Connection],
) -> (f64, f64, Vec<usize>) {
    let lists: Vec<Vec<(Sh, Option<String>)>> = nodes.iter().map(|n| checks(spec, n)).collect();
    let t = Instant::now();
    futures::future::join_all(lists.iter().zip(conns).map(|(list, c)| async move {
        for (cmd, stdin) in list {
            let out = c
                .run(cmd.clone(), stdin.as_deref().map(str::as_bytes))
                .await
                .expect("ssh");
            assert!(out.status.is_some(), "{}: {}", cmd.text(), out.tail());
        }
    }))
    .await;
    let separate = t.elapsed().as_secs_f64();
    let scripts: Vec<Sh> = lists
        .iter()
        .map(|list| {
            let script = list
                .iter()
                .map(|(cmd, stdin)| match stdin {
                    Some(s) => format!("printf '%s\\n' {} | {}", shell::quote(s), cmd.text()),
                    None => cmd.text().to_string(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            Sh::argv(["sh", "-c", &script])
        })
        .collect();
    let t = Instant::now();
    futures::future::join_all(
        scripts
            .iter()
            .zip(conns)
            .map(|(s, c)| async move { c.run(s.clone(), None).await.expect("ssh") }),
    )
    .await;
    let one = t.elapsed().as_secs_f64();
    (separate, one, lists.iter().map(Vec::len).collect())
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
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        println!(
            "hosts bench: skipped (it builds a 3-host cluster in containers; \
             run `cargo bench --bench hosts --profile dev`)"
        );
        return;
    }
    let reruns: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    if let Err(why) = testbed::testbed_ready() {
        eprintln!("error: the host testbed is not ready: {why}");
        std::process::exit(2);
    }
    let load_before = load();
    println!("load average before: {load_before}");

    let key = SshKey::generate();
    let net = Network::create("bench");
    let t = Instant::now();
    let hs: Vec<Host> = Host::start_many(&net, 3, &key);
    let containers_s = t.elapsed().as_secs_f64();
    println!("3 containers started and answering ssh in {containers_s:.1} s");

    let spec = spec(&net, &hs, &key);
    let nodes = cluster::inventory(&spec, &State::new("bench")).expect("inventory");
    let roles: BTreeMap<String, Role> = nodes.iter().map(|n| (n.name.clone(), n.role)).collect();
    let known: PathBuf = key.dir().join("known_hosts");
    let book = Playbook::embedded().expect("embedded playbook");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(async {
        // 1. First run from bare hosts, then verify.
        let (conns, connect_s) = connect(&spec, &nodes, &known).await;
        let first = configure(&spec, &nodes, &conns, connect_s).await;
        assert!(first.recap.changed() > 0, "the first run changed nothing");
        let t = Instant::now();
        let verified = cluster::verify(&spec, &nodes, &conns, VERIFY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("verify: {e}"));
        let verify_s = t.elapsed().as_secs_f64();
        assert_eq!(verified.replicas.len(), 2, "{verified:?}");
        for c in conns {
            c.close().await;
        }

        // 2. Converged reruns, each on fresh connections, as one `pgform` call would.
        let mut reruns_done = Vec::new();
        for i in 0..reruns {
            let (conns, connect_s) = connect(&spec, &nodes, &known).await;
            let run = configure(&spec, &nodes, &conns, connect_s).await;
            assert_eq!(
                run.recap.changed(),
                0,
                "rerun {i} changed something: {:?}",
                run.events
                    .iter()
                    .filter(|(e, _)| e.status == TaskStatus::Changed)
                    .map(|(e, _)| format!("{} {}", e.host, e.task))
                    .collect::<Vec<_>>()
            );
            eprintln!(
                "  rerun {}: connect {connect_s:.2} s, configure {:.2} s",
                i + 1,
                run.configure_s
            );
            for c in conns {
                c.close().await;
            }
            reruns_done.push(run);
        }

        // 4. The same checks as plain commands (warm: once, then measured 3 times).
        let (conns, _) = connect(&spec, &nodes, &known).await;
        plain_checks(&spec, &nodes, &conns).await;
        let mut plain = Vec::new();
        for _ in 0..3 {
            plain.push(plain_checks(&spec, &nodes, &conns).await);
        }
        for c in conns {
            c.close().await;
        }
        (first, verify_s, verified, reruns_done, plain)
    });
    let (first, verify_s, verified, reruns_done, plain) = report;
    let load_after = load();

    // Tables.
    let (first_rows, first_spans) = breakdown(&book, &roles, &first);
    println!(
        "\nfirst run from bare hosts: connect {:.2} s + configure {:.2} s + verify {:.2} s \
         = {:.2} s ({} changed; row reached the replicas in {:.2} s)",
        first.connect_s,
        first.configure_s,
        verify_s,
        first.connect_s + first.configure_s + verify_s,
        first.recap.changed(),
        verified.row_seconds
    );
    print_rows("first run", &first_rows, &first_spans, first.configure_s);

    let walls: Vec<f64> = reruns_done.iter().map(|r| r.configure_s).collect();
    let connects: Vec<f64> = reruns_done.iter().map(|r| r.connect_s).collect();
    let per_rerun: Vec<(Vec<Row>, Vec<PlaySpan>)> = reruns_done
        .iter()
        .map(|r| breakdown(&book, &roles, r))
        .collect();
    // Per task, the median over reruns.
    let mut rerun_rows = per_rerun[0].0.clone();
    for (i, row) in rerun_rows.iter_mut().enumerate() {
        let c: Vec<f64> = per_rerun
            .iter()
            .map(|(rows, _)| rows[i].critical_s)
            .collect();
        let s: Vec<f64> = per_rerun.iter().map(|(rows, _)| rows[i].sum_s).collect();
        row.critical_s = median(&c);
        row.sum_s = median(&s);
    }
    let mut rerun_spans = per_rerun[0].1.clone();
    for (i, span) in rerun_spans.iter_mut().enumerate() {
        let a: Vec<f64> = per_rerun.iter().map(|(_, sp)| sp[i].span_s).collect();
        let b: Vec<f64> = per_rerun.iter().map(|(_, sp)| sp[i].critical_s).collect();
        span.span_s = median(&a);
        span.critical_s = median(&b);
    }
    println!(
        "\nconverged rerun x{}: configure median {:.3} s (min {:.3}, max {:.3}); \
         connect median {:.3} s (min {:.3}, max {:.3}); 0 changed each time",
        walls.len(),
        median(&walls),
        min(&walls),
        max(&walls),
        median(&connects),
        min(&connects),
        max(&connects)
    );
    print_rows(
        "converged rerun, per task: median over reruns; all queries are asked at once, so \
         these are overlapping query times, waits for a channel included",
        &rerun_rows,
        &rerun_spans,
        median(&walls),
    );

    let separate: Vec<f64> = plain.iter().map(|p| p.0).collect();
    let one: Vec<f64> = plain.iter().map(|p| p.1).collect();
    let commands = plain[0].2.clone();
    println!(
        "\nthe converged checks as plain commands on open connections (hosts in parallel, \
         {commands:?} commands per host), median of {}:\n  one command per check: {:.3} s\n  \
         one command per host:  {:.3} s",
        plain.len(),
        median(&separate),
        median(&one)
    );
    println!("\nload average before: {load_before}; after: {load_after}");

    let run_json = |r: &Run, rows: &[Row], spans: &[PlaySpan]| -> Value {
        json!({
            "connect_s": r.connect_s,
            "configure_s": r.configure_s,
            "changed": r.recap.changed(),
            "task_seconds_summed_over_hosts": r.recap.task_seconds,
            "rows": rows,
            "plays": spans,
            "events": r.events.iter().map(|(e, end)| json!({"event": e, "end_s": end})).collect::<Vec<_>>(),
        })
    };
    let out = json!({
        "hosts": 3,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "containers_start_s": containers_s,
        "first_run": {
            "verify_s": verify_s,
            "row_seconds": verified.row_seconds,
            "run": run_json(&first, &first_rows, &first_spans),
        },
        "reruns": {
            "configure_s": walls,
            "connect_s": connects,
            "configure_median_s": median(&walls),
            "configure_min_s": min(&walls),
            "configure_max_s": max(&walls),
            "median_rows": rerun_rows,
            "median_plays": rerun_spans,
            "runs": reruns_done.iter().zip(&per_rerun).map(|(r, (rows, spans))| run_json(r, rows, spans)).collect::<Vec<_>>(),
        },
        "plain_checks": {
            "commands_per_host": commands,
            "one_command_per_check_s": separate,
            "one_command_per_host_s": one,
        },
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-hosts.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")) {
        Ok(()) => println!("raw numbers: {}", path.display()),
        Err(e) => eprintln!("warning: cannot write {}: {e}", path.display()),
    }
    drop(hs);
    drop(net);
}
