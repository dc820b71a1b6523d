//! Two `pgform serve` processes (the real binary) on one PostgreSQL store (a throwaway
//! server, tests/common/pg.rs), each with a data folder of its own, on the Docker
//! provider: every run executes exactly once, runs of one cluster never overlap, a run
//! queued through one service is read and confirmed through the other, the state is
//! kept in the store (the CLI plans from it, its lock keeps a holder and the services
//! apart), and after a SIGKILL the survivor takes the dead one's queued runs while only
//! the dead one's applying run is interrupted.
//!
//! Needs the host testbed and postgresql-15 (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`); skipped without them, failed under `CI`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::cli::PGFORM;
use common::hosts::{self, SshKey};
use common::pg;
use common::serve::{self, Api, Server};
use pgform::serve::pgstore::PgStore;
use pgform::serve::store::Store;
use serde_json::{Value, json};

const PLAN_TIMEOUT: Duration = Duration::from_secs(300);
const APPLY_TIMEOUT: Duration = Duration::from_secs(900);

/// The run's `state` events from its plain log: (state, by, at).
async fn transitions(api: &Api, id: &str) -> Vec<(String, String, String)> {
    let log = api.get(&format!("/v1/runs/{id}/log")).await.text;
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let at = words.next()?.to_string();
            if words.next()? != "state" {
                return None;
            }
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                    .unwrap_or_default()
            };
            Some((field("state"), field("by"), at))
        })
        .collect()
}

/// Who executed the run (`pid@host` of the one `planning` or `applying` claim).
async fn executor(api: &Api, id: &str) -> String {
    let t = transitions(api, id).await;
    let claims: Vec<_> = t
        .iter()
        .filter(|(_, by, _)| !by.is_empty())
        .map(|(_, by, _)| by.clone())
        .collect();
    assert_eq!(claims.len(), 1, "one claim of {id}: {t:?}");
    claims[0].clone()
}

fn pid_of(owner: &str) -> u32 {
    owner.split('@').next().unwrap().parse().unwrap()
}

async fn post_run(api: &Api, body: Value) -> String {
    let a = api.post("/v1/runs", body).await;
    assert_eq!(a.status, 202, "{a:?}");
    a.body["id"].as_str().unwrap().to_string()
}

/// Confirms the planned run (its plan as `run` shows it).
async fn confirm(api: &Api, id: &str, run: &Value) {
    let r = api
        .post(
            &format!("/v1/runs/{id}/confirm"),
            json!({"plan_hash": run["plan_hash"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_share_one_store_and_execute_each_run_once() {
    if !hosts::require_testbed() {
        return;
    }
    let Some(db) = pg::database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let key = SshKey::generate();
    let env = [("PGPASSWORD", pg::PASSWORD)];
    // One run at a time in each: the two services then share the queue.
    let args = ["--store", db.url.as_str(), "--max-running", "1"];
    let a = Server::start_args(&data_a, &args, &env, "a.stderr");
    let b = Server::start_args(&data_b, &args, &env, "b.stderr");
    let (api_a, api_b) = (a.client(None), b.client(None));
    let apis = [&api_a, &api_b];

    let mut clusters = Vec::new();
    let mut cleanups = Vec::new();
    let mut specs = Vec::new();
    for i in 0..3 {
        let (name, third) = serve::unique_cluster("pgstore");
        cleanups.push(serve::Cleanup(name.clone()));
        specs.push(serve::docker_spec(&name, third, &key, 2));
        let r = apis[i % 2].put_spec(&name, &specs[i]).await;
        assert_eq!(r.status, 200, "{r:?}");
        clusters.push(name);
    }

    // Many plan runs, queued through both.
    let mut runs = Vec::new();
    for i in 0..18 {
        let c = &clusters[i % 3];
        let id = post_run(
            apis[i % 2],
            json!({"cluster": c, "kind": "plan", "only": "infra"}),
        )
        .await;
        runs.push((id, c.clone()));
    }
    // Read through the other service.
    let mut by_cluster: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    let mut executors = HashSet::new();
    for (i, (id, c)) in runs.iter().enumerate() {
        apis[(i + 1) % 2]
            .wait_state(id, "planned", PLAN_TIMEOUT)
            .await;
        let t = transitions(apis[(i + 1) % 2], id).await;
        let planning: Vec<_> = t.iter().filter(|(s, _, _)| s == "planning").collect();
        assert_eq!(planning.len(), 1, "planned once: {id} {t:?}");
        let planned = t.iter().find(|(s, _, _)| s == "planned").unwrap();
        let owner = executor(&api_a, id).await;
        assert!(
            [a.pid(), b.pid()].contains(&pid_of(&owner)),
            "{owner} is one of the services"
        );
        executors.insert(pid_of(&owner));
        by_cluster.entry(c.clone()).or_default().push((
            planning[0].2.clone(),
            planned.2.clone(),
            id.clone(),
        ));
    }
    assert_eq!(executors.len(), 2, "both services executed runs");
    // One run per cluster at a time: each run's planning starts after the previous
    // one's ended (the stamps come from one clock, milliseconds).
    for (c, mut spans) in by_cluster {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{c}: {:?} overlaps {:?}", w[0], w[1]);
        }
    }

    // A run queued through A, confirmed through B; both stream its events live.
    let (id, cluster) = runs[0].clone();
    let run = api_b.get(&format!("/v1/runs/{id}")).await.body;
    let streams: Vec<_> = [&a, &b]
        .iter()
        .map(|s| {
            let api = s.client(None);
            let id = id.clone();
            tokio::spawn(async move { api.events(&id, None).await })
        })
        .collect();
    confirm(&api_b, &id, &run).await;
    api_a.wait_state(&id, "applied", APPLY_TIMEOUT).await;
    let mut seen = Vec::new();
    for s in streams {
        seen.push(s.await.unwrap());
    }
    assert_eq!(seen[0], seen[1], "both services stream the same events");
    let states: Vec<&Value> = seen[0]
        .iter()
        .filter(|(_, e)| e["event"] == "state")
        .map(|(_, e)| &e["state"])
        .collect();
    assert_eq!(
        states.last().unwrap().as_str(),
        Some("applied"),
        "{states:?}"
    );
    assert_eq!(serve::cluster_containers(&cluster).len(), 3);

    // The state is in the store, in neither service's folder: both serve it, and the
    // CLI plans from it with nothing to change.
    for data in [&data_a, &data_b] {
        let file = data.join("states").join(format!("{cluster}.pgstate.json"));
        assert!(!file.exists(), "{}", file.display());
    }
    let serial = db.query(&format!(
        "SELECT serial FROM states WHERE cluster = '{cluster}'"
    ));
    let serial: u64 = serial[0][0].as_deref().unwrap().parse().unwrap();
    assert!(serial > 0);
    for api in apis {
        let s = api.get(&format!("/v1/clusters/{cluster}/state")).await;
        assert_eq!(s.status, 200, "{s:?}");
        assert_eq!(s.body["serial"], serial, "{s:?}");
    }
    let spec_file = dir.path().join("cli.toml");
    std::fs::write(&spec_file, &specs[0]).unwrap();
    let out = Command::new(PGFORM)
        .args([
            "plan",
            "--only",
            "infra",
            "--detailed-exitcode",
            "--state",
            &db.url,
        ])
        .arg("-f")
        .arg(&spec_file)
        .envs(db.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "no changes: {out:?}");

    // Kill A while both apply (one run each): B takes the runs queued meanwhile; A's
    // applying run is interrupted, B's goes on.
    let x = post_run(
        &api_a,
        json!({"cluster": clusters[1], "kind": "apply", "only": "infra"}),
    )
    .await;
    let y = post_run(
        &api_b,
        json!({"cluster": clusters[2], "kind": "apply", "only": "infra"}),
    )
    .await;
    for id in [&x, &y] {
        api_b
            .wait_run(id, APPLY_TIMEOUT, |r| {
                assert!(r["final"] == false, "ended too soon: {r}");
                r["state"] == "applying" && r["progress"]["done"].as_u64().unwrap_or(0) >= 1
            })
            .await;
    }
    let (on_a, on_b) = if pid_of(&executor(&api_b, &x).await) == a.pid() {
        (x, y)
    } else {
        (y, x)
    };
    assert_eq!(pid_of(&executor(&api_b, &on_b).await), b.pid());
    let queued: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(
                post_run(
                    &api_a,
                    json!({"cluster": cluster, "kind": "plan", "only": "infra"}),
                )
                .await,
            );
        }
        v
    };
    let mut a = a;
    a.signal("KILL", Duration::from_secs(30));
    for id in &queued {
        // (The cluster was applied above: nothing to change.)
        api_b.wait_state(id, "no_changes", PLAN_TIMEOUT).await;
        assert_eq!(pid_of(&executor(&api_b, id).await), b.pid(), "B took {id}");
    }
    let a2 = Server::start_args(&data_a, &args, &env, "a2.stderr");
    let api_a2 = a2.client(None);
    let dead = api_a2
        .wait_run(&on_a, Duration::from_secs(60), |r| r["final"] == true)
        .await;
    assert_eq!(dead["state"], "interrupted", "{dead}");
    let alive = api_a2.get(&format!("/v1/runs/{on_b}")).await.body;
    assert_ne!(alive["state"], "interrupted", "{alive}");
    let alive = api_a2
        .wait_run(&on_b, APPLY_TIMEOUT, |r| r["final"] == true)
        .await;
    assert_eq!(alive["state"], "applied", "B's run went on: {alive}");
    let dead_cluster = dead["cluster"].as_str().unwrap();
    let lock = api_b
        .get(&format!("/v1/clusters/{dead_cluster}/lock"))
        .await;
    assert_eq!(lock.body["locked"], false, "{lock:?}");

    // A lock held elsewhere (as by a CLI apply) keeps the services off the state: the
    // run that would change it fails naming the holder, and changes nothing. An admin's
    // force-unlock takes the lock away, and the holder can then save nothing.
    let store = PgStore::open(&db.url_with_password()).unwrap();
    let states = store.states(&cluster).unwrap();
    let mut held = states.lock("apply").unwrap();
    let mut state = held.load_or_new(&cluster).unwrap();
    let id = post_run(
        &api_b,
        json!({"cluster": cluster, "kind": "destroy", "only": "infra"}),
    )
    .await;
    let run = api_b.wait_state(&id, "planned", PLAN_TIMEOUT).await;
    confirm(&api_b, &id, &run).await;
    let failed = api_a2
        .wait_run(&id, APPLY_TIMEOUT, |r| r["final"] == true)
        .await;
    assert_eq!(failed["state"], "errored", "{failed}");
    let why = failed["error"].as_str().unwrap_or_default();
    assert!(why.contains("locked by `pgform apply`"), "{failed}");
    assert_eq!(
        serve::cluster_containers(&cluster).len(),
        3,
        "nothing destroyed"
    );
    let lock = api_a2.get(&format!("/v1/clusters/{cluster}/lock")).await;
    assert_eq!(lock.body["locked"], true, "{lock:?}");
    assert_eq!(lock.body["holder"]["operation"], "apply", "{lock:?}");
    let r = api_b
        .send(api_b.request(
            reqwest::Method::DELETE,
            &format!("/v1/clusters/{cluster}/lock"),
        ))
        .await;
    assert_eq!(r.body["removed"], true, "{r:?}");
    let lost = held.save(&mut state).expect_err("refused").to_string();
    assert!(lost.contains("force-unlock"), "{lost}");
    drop(held);

    for s in [&b, &a2] {
        assert!(!s.stderr().contains("panicked"), "{}", s.stderr());
        assert!(!s.stderr().contains(pg::PASSWORD));
    }
}
