//! `pgform serve` under load: the real binary (SQLite store, or with `-- postgres` the
//! PostgreSQL store on a throwaway local server; default `--max-running 4`) on loopback,
//! driven by a real HTTP client.
//!
//! 1. 1,000 plan runs (`only: infra`) queued at once (20 clients) over 10 clusters of
//!    listed hosts, whose infrastructure layer is the in-memory provider: POST latency, then the time
//!    until every run is final (the queue's throughput: claim, plan, events, state).
//! 2. 100 SSE subscribers on one run that makes a cluster's containers (the Docker
//!    provider, `only: infra`), attached while it waits for confirmation: the delivery
//!    lag of each event stored after they came (received minus the `at` the service
//!    stored it with, milliseconds). Needs the testbed (`bash scripts/testbed.sh up`).
//! 3. `GET /v1/runs/{id}` latency (p50, p99) under 1, 10 and 50 concurrent clients.
//!
//! `cargo bench --bench serve --profile dev` measures; under `cargo test` it runs once,
//! small, as a check (which also asserts every run ended and every subscriber got every
//! event).

#[allow(unused_imports)] // the bench uses only part of the harness
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::hosts::SshKey;
use common::serve::{Api, Server, parse_sse};
use serde_json::json;

struct Size {
    clusters: usize,
    runs: usize,
    subscribers: usize,
    gets: usize,
    concurrency: &'static [usize],
}

const MEASURE: Size = Size {
    clusters: 10,
    runs: 1000,
    subscribers: 100,
    gets: 2000,
    concurrency: &[1, 10, 50],
};

const CHECK: Size = Size {
    clusters: 2,
    runs: 20,
    subscribers: 5,
    gets: 50,
    concurrency: &[1, 5],
};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Clients queueing runs at once.
const POSTERS: usize = 20;

/// A cluster of two listed hosts: nothing to reach for an `only: infra` plan.
fn spec(name: &str, key: &SshKey) -> String {
    format!(
        "name = \"{name}\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [[hosts]]\naddress = \"192.0.2.10\"\nrole = \"primary\"\n\
         [[hosts]]\naddress = \"192.0.2.11\"\nrole = \"replica\"\n",
        key.private
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    )
}

/// Milliseconds since the epoch of the service's RFC 3339 `at`.
fn at_ms(at: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e6)
}

fn now_ms() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e6
}

/// Reads the run's event stream as it arrives; returns each event's delivery lag (ms)
/// and how many events came.
async fn subscribe(api: &Api, run: &str) -> (Vec<f64>, usize) {
    let connected = now_ms();
    let mut resp = api
        .request(reqwest::Method::GET, &format!("/v1/runs/{run}/events"))
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .expect("the event stream");
    assert_eq!(resp.status().as_u16(), 200);
    let (mut buf, mut lags, mut count) = (String::new(), Vec::new(), 0);
    while let Some(chunk) = resp.chunk().await.expect("the stream goes on") {
        let received = now_ms();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        // Whole events only; a partial one waits for the next chunk.
        if let Some(end) = buf.rfind("\n\n") {
            for (_, event) in parse_sse(&buf[..end + 2]) {
                count += 1;
                // Events stored before the subscriber came are replayed, not delivered.
                match event["at"].as_str().and_then(at_ms) {
                    Some(at) if at >= connected => lags.push(received - at),
                    _ => {}
                }
            }
            buf.drain(..end + 2);
        }
    }
    (lags, count)
}

async fn get_latencies(api: &Api, runs: &[String], clients: usize, total: usize) -> Vec<f64> {
    let per_client = total.div_ceil(clients);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let api = Api {
            url: api.url.clone(),
            token: None,
            http: api.http.clone(),
        };
        let runs = runs.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let id = &runs[(c * per_client + i) % runs.len()];
                let started = Instant::now();
                let a = api.get(&format!("/v1/runs/{id}")).await;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
                assert_eq!(a.status, 200, "{a:?}");
            }
            ms
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Part 2: subscribers on a run that creates a cluster's containers (`only: infra`, on
/// the Docker provider), attached while it waits for its confirmation; then it is
/// confirmed, applied and destroyed.
async fn fan_out(server: &Server, key: &SshKey, subscribers: usize) {
    if !common::hosts::require_testbed() {
        println!("SSE fan-out: skipped (no testbed: bash scripts/testbed.sh up)");
        return;
    }
    let api = server.client(None);
    let (cluster, third) = common::serve::unique_cluster("serve-bench");
    let _cleanup = common::serve::Cleanup(cluster.clone());
    let spec = common::serve::docker_spec(&cluster, third, key, 1);
    assert_eq!(api.put_spec(&cluster, &spec).await.status, 200);
    let body = json!({"cluster": cluster, "kind": "plan", "only": "infra"});
    let id = api.post("/v1/runs", body).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = api.wait_state(&id, "planned", TIMEOUT).await;
    let streams: Vec<_> = (0..subscribers)
        .map(|_| {
            let api = server.client(None);
            let run = id.clone();
            tokio::spawn(async move { subscribe(&api, &run).await })
        })
        .collect();
    // Every subscriber is connected and has its replay before the run goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let confirm = json!({"plan_hash": run["plan_hash"]});
    let a = api.post(&format!("/v1/runs/{id}/confirm"), confirm).await;
    assert_eq!(a.status, 202, "{a:?}");
    api.wait_state(&id, "applied", TIMEOUT).await;
    let stored = api.events(&id, None).await.len();
    let mut lags = Vec::new();
    for s in streams {
        let (l, count) = s.await.unwrap();
        assert_eq!(count, stored, "a subscriber got every stored event");
        lags.extend(l);
    }
    println!(
        "{subscribers} SSE subscribers on an apply run ({stored} events, {} after they came): \
         delivery lag {}",
        lags.len() / subscribers.max(1),
        summary(lags)
    );
    let body = json!({"cluster": cluster, "kind": "destroy", "only": "infra"});
    let id = api.post("/v1/runs", body).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = api.wait_state(&id, "planned", TIMEOUT).await;
    let confirm = json!({"plan_hash": run["plan_hash"]});
    api.post(&format!("/v1/runs/{id}/confirm"), confirm).await;
    api.wait_state(&id, "applied", TIMEOUT).await;
}

#[tokio::main]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let size = if measuring { MEASURE } else { CHECK };
    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate();
    let db = std::env::args()
        .any(|a| a == "postgres")
        .then(|| common::pg::database().expect("postgresql-15 (scripts/testbed.sh up)"));
    let server = match &db {
        Some(db) => Server::start_args(
            &dir.path().join("data"),
            &["--store", &db.url],
            &[("PGPASSWORD", common::pg::PASSWORD)],
            "serve.stderr",
        ),
        None => Server::start(&dir.path().join("data")),
    };
    let api = server.client(None);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pgform serve ({} store): {} plan runs over {} clusters, {} subscribers (load {})",
        if db.is_some() { "PostgreSQL" } else { "SQLite" },
        size.runs,
        size.clusters,
        size.subscribers,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    for c in 0..size.clusters {
        let name = format!("bench-{c}");
        let a = api.put_spec(&name, &spec(&name, &key)).await;
        assert_eq!(a.status, 200, "{a:?}");
    }

    // 1. Queue every run at once: from concurrent clients, faster than runs execute.
    let queued = Instant::now();
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let api = server.client(None);
            let (runs, clusters) = (size.runs, size.clusters);
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (p..runs).step_by(POSTERS) {
                    let body = json!({"cluster": format!("bench-{}", i % clusters),
                                      "kind": "plan", "only": "infra"});
                    let started = Instant::now();
                    let a = api.post("/v1/runs", body).await;
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(a.status, 202, "{a:?}");
                    out.push((i, ms, a.body["id"].as_str().unwrap().to_string()));
                }
                out
            })
        })
        .collect();
    let mut posted = Vec::new();
    for p in posters {
        posted.extend(p.await.unwrap());
    }
    let enqueue_s = queued.elapsed().as_secs_f64();
    posted.sort_by_key(|(i, _, _)| *i);
    let post_ms: Vec<f64> = posted.iter().map(|(_, ms, _)| *ms).collect();
    let runs: Vec<String> = posted.into_iter().map(|(_, _, id)| id).collect();

    let mut pending = runs.clone();
    while !pending.is_empty() {
        // Look only up to the first run still going, so this loop adds little load.
        while let Some(id) = pending.first() {
            let a = api.get(&format!("/v1/runs/{id}")).await;
            if a.body["final"] != true {
                break;
            }
            pending.remove(0);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let drained_s = queued.elapsed().as_secs_f64();
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for id in &runs {
        let a = api.get(&format!("/v1/runs/{id}")).await;
        *states
            .entry(a.body["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        states.get("no_changes"),
        Some(&size.runs),
        "every plan ends with no changes: {states:?}"
    );

    println!(
        "queue {} runs: POST {}; queued in {enqueue_s:.2} s, all final after {drained_s:.2} s \
         ({:.0} runs/s)",
        size.runs,
        summary(post_ms),
        size.runs as f64 / drained_s
    );
    fan_out(&server, &key, size.subscribers).await;
    for &clients in size.concurrency {
        let started = Instant::now();
        let ms = get_latencies(&api, &runs, clients, size.gets).await;
        let rate = ms.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "GET /v1/runs/{{id}}, {clients} concurrent clients: {} ({rate:.0} requests/s)",
            summary(ms)
        );
    }
}
