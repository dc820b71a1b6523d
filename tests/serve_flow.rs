//! `pgform serve` end to end on the Docker provider (the testbed's daemon), driven over
//! HTTP as a client drives it: the whole flow (spec, plan, confirm, events, applied,
//! status, outputs, destroy), and restarts (SIGTERM and SIGKILL during an apply, then
//! retry converges without duplicates).
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`); skipped without it, failed under `CI`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::cli::PASSWORD_MARKERS;
use common::hosts::{self, SshKey};
use common::serve::{self, Server};
use serde_json::json;

const PLAN_TIMEOUT: Duration = Duration::from_secs(300);
/// Containers, then PostgreSQL on two hosts: minutes on two busy cores.
const APPLY_TIMEOUT: Duration = Duration::from_secs(900);

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for m in PASSWORD_MARKERS {
        assert!(!text.contains(m), "{what} holds the password: {text}");
    }
}

#[tokio::test]
async fn plan_confirm_apply_status_outputs_destroy() {
    if !hosts::require_testbed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate();
    let (cluster, third) = serve::unique_cluster("serve-flow");
    let _cleanup = serve::Cleanup(cluster.clone());
    let server = Server::start(&dir.path().join("data"));
    let api = server.client(None);

    let a = api
        .put_spec(&cluster, &serve::docker_spec(&cluster, third, &key, 1))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = api
        .post("/v1/runs", json!({"cluster": cluster, "kind": "plan"}))
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    let run = api.wait_state(&id, "planned", PLAN_TIMEOUT).await;
    assert_eq!(
        run["allowed_actions"],
        json!(["confirm", "discard", "cancel"])
    );
    let plan = api.get(&format!("/v1/runs/{id}/plan")).await;
    let changes = plan.body["changes"].as_array().expect("the plan's changes");
    assert!(
        changes.iter().all(|c| c["action"] == "create") && changes.len() > 2,
        "{}",
        plan.text
    );
    assert_eq!(
        api.get(&format!("/v1/clusters/{cluster}/deployment"))
            .await
            .body["deployment_status"],
        "not_deployed"
    );

    let a = api
        .post(
            &format!("/v1/runs/{id}/confirm"),
            json!({"plan_hash": run["plan_hash"]}),
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    // The stream runs until the run is final: every event, in order, numbered 1, 2, ...
    let events = api.events(&id, None).await;
    let log = api.get(&format!("/v1/runs/{id}/log")).await.text;
    let ids: Vec<u64> = events.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{log}");
    let states: Vec<&str> = events
        .iter()
        .filter(|(_, e)| e["event"] == "state")
        .map(|(_, e)| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "queued", "planning", "planned", "queued", "applying", "applied"
        ],
        "{log}"
    );
    // Each resource starts before it finishes; the hosts layer follows the containers.
    let mut started = HashMap::new();
    for (i, e) in &events {
        match e["event"].as_str() {
            Some("started") => {
                started.insert(e["address"].to_string(), *i);
            }
            Some("finished") => {
                assert!(
                    started
                        .get(&e["address"].to_string())
                        .is_some_and(|s| s < i),
                    "{log}"
                )
            }
            _ => {}
        }
    }
    let position = |name: &str| {
        events
            .iter()
            .position(|(_, e)| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event:\n{log}"))
    };
    assert!(position("complete") < position("task"), "{log}");
    assert!(position("task") < position("recap"), "{log}");
    assert!(position("recap") < position("verified"), "{log}");
    let all: String = events.iter().map(|(_, e)| e.to_string()).collect();
    assert_no_secret("the events", &all);
    assert_no_secret("the log", &log);
    // Replay from Last-Event-ID: exactly the events after it.
    let n = ids.len() as u64;
    let replay = api.events(&id, Some(n - 3)).await;
    assert_eq!(replay, events[events.len() - 3..].to_vec());

    let run = api.get(&format!("/v1/runs/{id}")).await.body;
    assert_eq!(run["state"], "applied", "{run}");
    assert_eq!(run["final"], true);
    assert_eq!(run["progress"]["percent"], 100, "{run}");
    assert!(run["finished_at"].as_str().unwrap() >= run["started_at"].as_str().unwrap());
    let outputs = api.get(&format!("/v1/clusters/{cluster}/outputs")).await;
    assert!(
        outputs.body["primary_connection"]
            .as_str()
            .is_some_and(|c| c.starts_with("postgresql://")),
        "{}",
        outputs.text
    );
    assert_no_secret("the outputs", &outputs.text);
    let status = api.get(&format!("/v1/clusters/{cluster}/status")).await;
    let rows = status
        .body
        .as_array()
        .unwrap_or_else(|| panic!("{}", status.text));
    assert_eq!(rows.len(), 2, "{}", status.text);
    assert!(
        rows.iter().any(|r| r["role"] == "primary"),
        "{}",
        status.text
    );
    assert!(
        rows.iter()
            .any(|r| r["role"] == "replica" && r["state"] == "streaming"),
        "{}",
        status.text
    );
    let state = api.get(&format!("/v1/clusters/{cluster}/state")).await;
    assert_eq!(state.status, 200);
    assert_no_secret("the state", &state.text);
    let d = api.get(&format!("/v1/clusters/{cluster}/deployment")).await;
    assert_eq!(d.body["deployment_status"], "deployed", "{d:?}");
    let lock = api.get(&format!("/v1/clusters/{cluster}/lock")).await;
    assert_eq!(lock.body["locked"], false, "{lock:?}");

    // Destroy: planned, confirmed, carried out.
    let a = api
        .post("/v1/runs", json!({"cluster": cluster, "kind": "destroy"}))
        .await;
    let id = a.body["id"].as_str().unwrap().to_string();
    let run = api.wait_state(&id, "planned", PLAN_TIMEOUT).await;
    let plan = api.get(&format!("/v1/runs/{id}/plan")).await;
    assert_eq!(plan.body["destroy"], true, "{}", plan.text);
    api.post(
        &format!("/v1/runs/{id}/confirm"),
        json!({"plan_hash": run["plan_hash"]}),
    )
    .await;
    api.wait_state(&id, "applied", APPLY_TIMEOUT).await;
    assert!(serve::cluster_containers(&cluster).is_empty());
    let d = api.get(&format!("/v1/clusters/{cluster}/deployment")).await;
    assert_eq!(d.body["deployment_status"], "destroyed", "{d:?}");
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Waits until the run applies and at least one resource is made.
async fn wait_applying_something(api: &serve::Api, id: &str) {
    api.wait_run(id, APPLY_TIMEOUT, |r| {
        assert!(
            r["final"] == false,
            "the run ended before it could be stopped: {r}"
        );
        r["state"] == "applying" && r["progress"]["done"].as_u64().unwrap_or(0) >= 1
    })
    .await;
}

#[tokio::test]
async fn restarts_interrupt_applies_and_retry_converges() {
    if !hosts::require_testbed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = SshKey::generate();
    let (cluster, third) = serve::unique_cluster("serve-restart");
    let _cleanup = serve::Cleanup(cluster.clone());
    let mut server = Server::start(&data);
    let api = server.client(None);
    let a = api
        .put_spec(&cluster, &serve::docker_spec(&cluster, third, &key, 2))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let apply = json!({"cluster": cluster, "kind": "apply", "only": "infra"});
    let id = api.post("/v1/runs", apply).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    // SIGKILL while containers are being made: on restart the run is interrupted and
    // the lock is free.
    wait_applying_something(&api, &id).await;
    server.signal("KILL", Duration::from_secs(30));
    let mut server = Server::start(&data);
    let api = server.client(None);
    let run = api.get(&format!("/v1/runs/{id}")).await.body;
    assert_eq!(run["state"], "interrupted", "{run}");
    assert_eq!(run["allowed_actions"], json!(["retry"]));
    assert!(
        run["error"].as_str().unwrap().contains("service stopped"),
        "{run}"
    );
    let lock = api.get(&format!("/v1/clusters/{cluster}/lock")).await;
    assert_eq!(lock.body["locked"], false, "{lock:?}");

    // SIGTERM during the retry's apply: running steps finish and are recorded; the run
    // is interrupted when steps were left (applied when none was), and the service
    // exits cleanly.
    let a = api.post(&format!("/v1/runs/{id}/retry"), json!({})).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["retry_of"], id.as_str());
    let id = a.body["id"].as_str().unwrap().to_string();
    api.wait_run(&id, APPLY_TIMEOUT, |r| {
        r["state"] == "applying" || r["final"] == true
    })
    .await;
    let status = server.signal("TERM", Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.stderr()
    );
    let server = Server::start(&data);
    let api = server.client(None);
    let run = api.get(&format!("/v1/runs/{id}")).await.body;
    let id = match run["state"].as_str() {
        Some("interrupted") => {
            assert!(
                run["error"].as_str().unwrap().contains("interrupted"),
                "{run}"
            );
            let a = api.post(&format!("/v1/runs/{id}/retry"), json!({})).await;
            a.body["id"].as_str().unwrap().to_string()
        }
        // (The killed apply's creates may all have landed: then the retry finds
        // nothing left to do.)
        Some("applied" | "no_changes") => id,
        _ => panic!("after SIGTERM the run is interrupted, applied or has no changes: {run}"),
    };

    // Retry plans again from what was recorded and converges: three containers, not more.
    let run = api
        .wait_run(&id, APPLY_TIMEOUT, |r| r["final"] == true)
        .await;
    assert!(
        run["state"] == "applied" || run["state"] == "no_changes",
        "{run}"
    );
    assert_eq!(
        serve::cluster_containers(&cluster).len(),
        3,
        "a primary and two replicas, no duplicate"
    );
    let again = api
        .post(
            "/v1/runs",
            json!({"cluster": cluster, "kind": "apply", "only": "infra"}),
        )
        .await;
    let again = again.body["id"].as_str().unwrap();
    api.wait_state(again, "no_changes", PLAN_TIMEOUT).await;

    let a = api
        .post("/v1/runs", json!({"cluster": cluster, "kind": "destroy"}))
        .await;
    let id = a.body["id"].as_str().unwrap().to_string();
    let run = api.wait_state(&id, "planned", PLAN_TIMEOUT).await;
    api.post(
        &format!("/v1/runs/{id}/confirm"),
        json!({"plan_hash": run["plan_hash"]}),
    )
    .await;
    api.wait_state(&id, "applied", APPLY_TIMEOUT).await;
    assert!(serve::cluster_containers(&cluster).is_empty());
}
