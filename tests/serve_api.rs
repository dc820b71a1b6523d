//! `pgform serve` over HTTP with a real client: authentication and roles, idempotency,
//! bad requests, two runs on one cluster, a stale confirmation. The runs plan the
//! infrastructure layer on the Docker provider (nothing is created), or fail to reach a
//! Docker daemon that is not there, whichever the test needs.

mod common;

use std::time::Duration;

use common::hosts::{self, SshKey};
use common::serve::{self, Server};
use serde_json::{Value, json};

/// A `DOCKER_HOST` where nothing listens: plans fail at once, without a daemon.
const NO_DOCKER: &str = "unix:///nonexistent/pgform-test.sock";

fn spec(cluster: &str, key: &SshKey) -> String {
    serve::docker_spec(cluster, 250, key, 1)
}

#[track_caller]
fn assert_error(a: &serve::Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.body["error"]["code"], code, "{a:?}");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{a:?}"
    );
}

#[tokio::test]
async fn tokens_roles_and_clusters_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = SshKey::generate();
    let admin = serve::create_token(&data, "admin", None);
    let read = serve::create_token(&data, "read", None);
    let other = serve::create_token(&data, "apply", Some("other"));
    let apply = serve::create_token(&data, "apply", None);
    let revoked = serve::create_token(&data, "admin", None);
    // The token is printed once; `token list` shows ids and roles, never a token.
    let list = std::process::Command::new(common::cli::PGFORM)
        .args(["token", "list", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(!listed.contains(&admin[4..20]), "{listed}");
    let revoked_id = listed.lines().nth(4).unwrap().split('\t').next().unwrap();
    let out = std::process::Command::new(common::cli::PGFORM)
        .args(["token", "revoke", revoked_id, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let server = Server::start_with(&data, &[("DOCKER_HOST", NO_DOCKER)]);
    let anonymous = server.client(None);
    assert_error(&anonymous.get("/v1/runs").await, 401, "unauthorized");
    assert_error(
        &server.client(Some("pgf_0000")).get("/v1/runs").await,
        401,
        "unauthorized",
    );
    assert_error(
        &server.client(Some(&revoked)).get("/v1/runs").await,
        401,
        "unauthorized",
    );
    // Health needs no token.
    assert_eq!(anonymous.get("/v1/healthz").await.status, 200);

    let admin = server.client(Some(&admin));
    let read = server.client(Some(&read));
    let other = server.client(Some(&other));
    let apply = server.client(Some(&apply));
    let a = admin.put_spec("c1", &spec("c1", &key)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(read.get("/v1/clusters/c1").await.status, 200);
    assert_error(
        &read.put_spec("c1", &spec("c1", &key)).await,
        403,
        "forbidden",
    );
    let plan = json!({"cluster": "c1", "kind": "plan"});
    assert_error(&read.post("/v1/runs", plan.clone()).await, 403, "forbidden");
    // A token for another cluster neither sees nor changes this one.
    assert_error(&other.get("/v1/clusters/c1").await, 403, "forbidden");
    assert_error(
        &other.post("/v1/runs", plan.clone()).await,
        403,
        "forbidden",
    );
    assert_error(&other.get("/v1/runs?cluster=c1").await, 403, "forbidden");
    let listed = other.get("/v1/clusters").await;
    assert_eq!(listed.body, json!([]), "{listed:?}");
    // Force-unlock is the admin's.
    let unlock = |c: &serve::Api| c.request(reqwest::Method::DELETE, "/v1/clusters/c1/lock");
    assert_error(&apply.send(unlock(&apply)).await, 403, "forbidden");
    let a = admin.send(unlock(&admin)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = apply.post("/v1/runs", plan.clone()).await;
    assert_eq!(a.status, 202, "{a:?}");
    let run = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(read.get(&format!("/v1/runs/{run}")).await.status, 200);
    assert_error(
        &other.get(&format!("/v1/runs/{run}")).await,
        403,
        "forbidden",
    );

    // An audit row per mutating call, with the token's id; no token in the database.
    drop(server);
    let db = rusqlite::Connection::open(data.join("pgform.db")).unwrap();
    let rows: Vec<(Option<String>, String, String, i64)> = db
        .prepare("SELECT token, method, path, status FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        rows.iter()
            .any(|(t, m, p, s)| t.is_some() && m == "PUT" && p == "/v1/clusters/c1" && *s == 200),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|(_, m, _, s)| m == "POST" && *s == 403),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|(_, m, _, s)| m == "DELETE" && *s == 200),
        "{rows:?}"
    );
    let bytes = std::fs::read(data.join("pgform.db")).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains(&revoked));
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::cli::PGFORM)
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("pgform token create"), "{stderr}");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate();
    let server = Server::start_with(dir.path(), &[("DOCKER_HOST", NO_DOCKER)]);
    let api = server.client(None);
    assert_eq!(api.put_spec("c1", &spec("c1", &key)).await.status, 200);
    let post = |body: Value, key: &str| {
        api.request(reqwest::Method::POST, "/v1/runs")
            .header("Idempotency-Key", key)
            .json(&body)
    };
    let body = json!({"cluster": "c1", "kind": "plan", "only": "infra"});
    let first = api.send(post(body.clone(), "k1")).await;
    assert_eq!(first.status, 202, "{first:?}");
    let again = api.send(post(body.clone(), "k1")).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.text, first.text);
    let other = api
        .send(post(json!({"cluster": "c1", "kind": "destroy"}), "k1"))
        .await;
    assert_error(&other, 422, "idempotency_mismatch");
    // A new key is a new run.
    let second = api.send(post(body, "k2")).await;
    assert_ne!(second.body["id"], first.body["id"]);
    let runs = api.get("/v1/runs?cluster=c1").await;
    assert_eq!(runs.body["runs"].as_array().unwrap().len(), 2, "{runs:?}");
}

#[tokio::test]
async fn bad_requests_are_named_4xx_answers() {
    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate();
    let server = Server::start_with(dir.path(), &[("DOCKER_HOST", NO_DOCKER)]);
    let api = server.client(None);
    let raw = |body: &str| {
        api.request(reqwest::Method::POST, "/v1/runs")
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    assert_error(
        &api.send(raw("{\"cluster\": ")).await,
        400,
        "malformed_json",
    );
    let a = api
        .send(raw(r#"{"cluster": "c1", "kind": "plan", "force": true}"#))
        .await;
    assert_error(&a, 422, "invalid_body");
    assert!(a.text.contains("unknown field `force`"), "{a:?}");
    let a = api.send(raw(r#"{"cluster": 7, "kind": "plan"}"#)).await;
    assert_error(&a, 422, "invalid_body");
    let a = api
        .send(raw(r#"{"cluster": "c1", "kind": "deploy"}"#))
        .await;
    assert_error(&a, 422, "invalid_body");
    assert!(a.text.contains("deploy"), "{a:?}");
    // Over the 1 MiB limit, as JSON and as a spec.
    let big = format!(
        r#"{{"cluster": "{}", "kind": "plan"}}"#,
        "x".repeat(2 << 20)
    );
    assert_error(&api.send(raw(&big)).await, 413, "body_too_large");
    assert_error(
        &api.put_spec("c1", &"#".repeat(2 << 20)).await,
        413,
        "body_too_large",
    );
    // Unknown things.
    assert_error(
        &api.post("/v1/runs", json!({"cluster": "nope", "kind": "plan"}))
            .await,
        404,
        "not_found",
    );
    assert_error(&api.get("/v1/runs/run-nope").await, 404, "not_found");
    assert_error(&api.get("/v1/runs/run-nope/events").await, 404, "not_found");
    assert_error(
        &api.post("/v1/runs/run-nope/confirm", json!({"plan_hash": "x"}))
            .await,
        404,
        "not_found",
    );
    assert_error(&api.get("/v1/nothing").await, 404, "not_found");
    assert_error(&api.get("/v1/runs?state=done").await, 400, "invalid_query");
    assert_error(&api.get("/v1/runs?after=zz").await, 400, "invalid_query");
    assert_error(&api.get("/v1/runs?colour=red").await, 400, "invalid_query");
    // A spec with problems: each with its field, fix and place.
    let a = api
        .put_spec("c1", &format!("{}\nbogus = 1\n", spec("c1", &key)))
        .await;
    assert_error(&a, 422, "invalid_spec");
    assert_eq!(
        a.body["error"]["problems"][0]["field"], "postgres.bogus",
        "{a:?}"
    );
    assert!(
        a.body["error"]["problems"][0]["line"].as_u64().is_some(),
        "{a:?}"
    );
    assert!(a.body["error"]["problems"][0]["fix"].is_string(), "{a:?}");
    // An inline secret is refused: it would be stored.
    let inline = spec("c1", &key).replace(
        "shared_buffers",
        "replication_password = \"Sekret-Value-42\"\nshared_buffers",
    );
    let a = api.put_spec("c1", &inline).await;
    assert_error(&a, 422, "invalid_spec");
    assert_eq!(
        a.body["error"]["problems"][0]["field"],
        "postgres.replication_password"
    );
    assert!(a.text.contains("replication_password_env"), "{a:?}");
    assert!(!a.text.contains("Sekret-Value-42"), "{a:?}");
    assert_error(
        &api.put_spec("c2", &spec("c1", &key)).await,
        422,
        "invalid_spec",
    );
    assert_eq!(api.get("/v1/clusters/c1").await.status, 404);

    // A confirmation in the wrong state: the plan fails (no Docker daemon here).
    assert_eq!(api.put_spec("c1", &spec("c1", &key)).await.status, 200);
    let run = api
        .post("/v1/runs", json!({"cluster": "c1", "kind": "plan"}))
        .await;
    assert_eq!(run.status, 202, "{run:?}");
    let id = run.body["id"].as_str().unwrap();
    let run = api.wait_state(id, "errored", Duration::from_secs(60)).await;
    assert_eq!(run["allowed_actions"], json!(["retry"]), "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("nonexistent"),
        "{run}"
    );
    let a = api
        .post(&format!("/v1/runs/{id}/confirm"), json!({"plan_hash": "x"}))
        .await;
    assert_error(&a, 409, "wrong_state");
    assert!(a.text.contains("errored"), "{a:?}");
    assert_error(
        &api.post(&format!("/v1/runs/{id}/discard"), json!({})).await,
        409,
        "wrong_state",
    );
    assert_error(
        &api.post(&format!("/v1/runs/{id}/cancel"), json!({})).await,
        409,
        "wrong_state",
    );
    assert_error(
        &api.post(&format!("/v1/runs/{id}/confirm"), json!({"hash": "x"}))
            .await,
        422,
        "invalid_body",
    );
    assert_error(
        &api.get(&format!("/v1/runs/{id}/plan")).await,
        404,
        "not_found",
    );
    let bad_id = api
        .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
        .header("Last-Event-ID", "soon");
    assert_error(&api.send(bad_id).await, 400, "invalid_last_event_id");

    // The service still answers, and never answered 500.
    assert_eq!(api.get("/v1/readyz").await.status, 200);
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    let doc = api.get("/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    for path in [
        "/v1/runs/{id}/confirm",
        "/v1/clusters/{name}",
        "/v1/runs/{id}/events",
    ] {
        assert!(
            doc.body["paths"][path].is_object(),
            "{path} in {}",
            doc.text
        );
    }
    assert!(doc.body["components"]["schemas"]["RunView"].is_object());
}

/// Two runs on one cluster: the second plans only after the first is done planning.
/// Then the state moves (the CLI on the same state file) between plan and confirm: the
/// confirmation is refused with 409 and the reason; a retry plans again.
#[tokio::test]
async fn runs_on_one_cluster_queue_and_a_stale_confirmation_is_refused() {
    if !hosts::require_testbed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate();
    let (cluster, third) = serve::unique_cluster("serve-queue");
    let _cleanup = serve::Cleanup(cluster.clone());
    let server = Server::start(&dir.path().join("data"));
    let api = server.client(None);
    let text = serve::docker_spec(&cluster, third, &key, 1);
    assert_eq!(api.put_spec(&cluster, &text).await.status, 200);
    let body = json!({"cluster": cluster, "kind": "plan", "only": "infra"});
    let first = api.post("/v1/runs", body.clone()).await;
    let second = api.post("/v1/runs", body).await;
    let (first, second) = (
        first.body["id"].as_str().unwrap().to_string(),
        second.body["id"].as_str().unwrap().to_string(),
    );
    let limit = Duration::from_secs(120);
    let one = api.wait_state(&first, "planned", limit).await;
    let two = api.wait_state(&second, "planned", limit).await;
    assert!(
        one["progress"]["total"].as_u64().unwrap() > 2,
        "a step per change: {one}"
    );
    // Planning of the second started after the first was planned.
    let log1 = api.get(&format!("/v1/runs/{first}/log")).await.text;
    let log2 = api.get(&format!("/v1/runs/{second}/log")).await.text;
    let planned1 = log_at(&log1, "state=planned");
    let planning2 = log_at(&log2, "state=planning");
    assert!(
        planning2 >= planned1,
        "second planned at {planning2}, first was planned at {planned1}\n{log1}\n{log2}"
    );

    // The CLI moves the state (a rebuild saves it once) while the plans wait.
    let spec_file = dir.path().join("cluster.toml");
    std::fs::write(&spec_file, &text).unwrap();
    let state_file = server
        .data
        .join("states")
        .join(format!("{cluster}.pgstate.json"));
    let out = std::process::Command::new(common::cli::PGFORM)
        .arg("-f")
        .arg(&spec_file)
        .arg("--state")
        .arg(&state_file)
        .args(["state", "rebuild"])
        .env("DOCKER_HOST", hosts::docker_host())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let a = api
        .post(
            &format!("/v1/runs/{second}/confirm"),
            json!({"plan_hash": two["plan_hash"]}),
        )
        .await;
    assert_error(&a, 409, "stale_plan");
    assert!(a.text.contains("serial 0"), "{a:?}");
    let run = api.get(&format!("/v1/runs/{second}")).await.body;
    assert_eq!(run["state"], "errored", "{run}");
    assert_eq!(run["allowed_actions"], json!(["retry"]));
    // Nothing was made.
    assert!(serve::cluster_containers(&cluster).is_empty());
    // A retry plans again, from the moved state.
    let retry = api
        .post(&format!("/v1/runs/{second}/retry"), json!({}))
        .await;
    assert_eq!(retry.status, 202, "{retry:?}");
    assert_eq!(retry.body["retry_of"], second.as_str());
    let id = retry.body["id"].as_str().unwrap();
    api.wait_state(id, "planned", limit).await;
    let plan = api.get(&format!("/v1/runs/{id}/plan")).await;
    assert_eq!(plan.body["serial"], 1, "{}", plan.text);
    // Discard: nothing applies; the first run's plan is stale too.
    let a = api.post(&format!("/v1/runs/{id}/discard"), json!({})).await;
    assert_eq!(a.body["state"], "discarded", "{a:?}");
    let a = api
        .post(
            &format!("/v1/runs/{first}/confirm"),
            json!({"plan_hash": one["plan_hash"]}),
        )
        .await;
    assert_error(&a, 409, "stale_plan");
    // A cancel: the run ends canceled, and its stream ends with that state.
    let a = api
        .post(
            "/v1/runs",
            json!({"cluster": cluster, "kind": "plan", "only": "infra"}),
        )
        .await;
    let canceled = a.body["id"].as_str().unwrap().to_string();
    api.wait_state(&canceled, "planned", limit).await;
    let a = api
        .post(&format!("/v1/runs/{canceled}/cancel"), json!({}))
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["state"], "canceled", "{a:?}");
    let events = api.events(&canceled, None).await;
    let last = &events.last().unwrap().1;
    assert_eq!(
        (&last["event"], &last["state"]),
        (&json!("state"), &json!("canceled"))
    );
    assert_error(
        &api.post(&format!("/v1/runs/{canceled}/cancel"), json!({}))
            .await,
        409,
        "wrong_state",
    );
    let listed = api
        .get(&format!("/v1/runs?cluster={cluster}&state=errored"))
        .await;
    assert_eq!(
        listed.body["runs"].as_array().unwrap().len(),
        2,
        "{listed:?}"
    );
    let page = api
        .get(&format!("/v1/runs?cluster={cluster}&limit=3"))
        .await;
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let rest = api
        .get(&format!("/v1/runs?cluster={cluster}&after={cursor}"))
        .await;
    assert_eq!(rest.body["runs"].as_array().unwrap().len(), 1, "{rest:?}");
    assert!(rest.body["next_cursor"].is_null());
}

/// The time at the start of the log line holding `needle`.
fn log_at(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no {needle} in\n{log}"))
        .to_string()
}
