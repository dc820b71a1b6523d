//! The old API's endpoints on `pgform serve`: the flat payload with `projectId`, the old
//! job states and fields. The Terraform-style family plans, approves and applies the
//! infrastructure on moto; the `/api/deploy` family runs against an endpoint where
//! nothing answers (its deploy also configures hosts, which moto's machines are not).

mod common;

use std::time::Duration;

use aws_sdk_ec2::primitives::Blob;
use common::Moto;
use common::serve::{Api, Server};
use serde_json::{Value, json};

fn payload(project: &str, subnet: &str) -> Value {
    json!({
        "projectId": project,
        "instance_type": "t3a.medium",
        "num_replicas": 1,
        "aws_region": "us-east-1",
        "ssh_key_name": "old-api-key",
        "subnet_id": subnet,
        "postgres_version": "15",
        "max_connections": 100,
    })
}

/// Polls an old-style job until `completed` or `failed`.
async fn wait_job(api: &Api, job: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let a = api.get(&format!("/api/deploy/status/{job}")).await;
        assert_eq!(a.status, 200, "{a:?}");
        let status = a.body["status"].as_str().unwrap().to_string();
        assert!(
            ["pending", "processing", "completed", "failed"].contains(&status.as_str()),
            "{a:?}"
        );
        if status == "completed" || status == "failed" {
            return a.body;
        }
        assert!(std::time::Instant::now() < deadline, "{a:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn deploy_family_answers_in_the_old_words() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback where nothing listens: the runs fail fast, no traffic leaves the machine.
    let env = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_MAX_ATTEMPTS", "1"),
    ];
    let server = Server::start_with(dir.path(), &env);
    let api = server.client(None);

    // The old payload carried the password inline: refused, naming the fix.
    let mut inline = payload("p1", "subnet-0abc");
    inline["replication_password"] = "Old-Api-Secret-9".into();
    let a = api.post("/api/deploy", inline).await;
    assert_eq!(a.status, 422, "{a:?}");
    assert!(a.text.contains("replication_password_env"), "{a:?}");
    assert!(!a.text.contains("Old-Api-Secret-9"));

    let a = api.post("/api/deploy", payload("p1", "subnet-0abc")).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["status"], "accepted");
    let job = a.body["jobId"].as_str().unwrap().to_string();
    let done = wait_job(&api, &job).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["projectId"], "p1");
    assert!(
        done["startTime"].is_string() && done["endTime"].is_string(),
        "{done}"
    );
    assert!(done["progress"].is_u64(), "{done}");
    assert!(
        !done["result"]["logs"].as_array().unwrap().is_empty(),
        "{done}"
    );
    assert!(
        done["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{done}"
    );
    // The same run in the new API.
    let run = api.get(&format!("/v1/runs/{job}")).await;
    assert_eq!(run.body["state"], "errored", "{run:?}");
    assert_eq!(run.body["kind"], "apply");

    let infra = api.get("/api/deploy/infrastructure/p1").await;
    assert_eq!(infra.body["deploymentStatus"], "failed", "{infra:?}");
    let v = api.get("/api/deploy/validate/p1").await;
    assert_eq!(v.body["valid"], true, "{v:?}");
    let c = api.get("/api/deploy/costs/p1").await;
    assert_eq!(c.body["billed"], true, "{c:?}");
    assert!(c.text.contains("t3a.medium"), "{c:?}");
    let o = api.get("/api/deploy/outputs/p1").await;
    assert_eq!(o.status, 404, "{o:?}");
    let s = api.get("/api/deploy/state/p1").await;
    assert_eq!(s.body["state"], Value::Null, "{s:?}");
    assert_eq!(api.get("/api/deploy/infrastructure/nope").await.status, 404);
    assert_eq!(api.get("/api/deploy/status/run-nope").await.status, 404);
    let d = api
        .post("/api/deploy/destroy", json!({"projectId": "p1"}))
        .await;
    assert_eq!(d.status, 202, "{d:?}");
    let bad = api
        .post("/api/deploy/destroy", json!({"project": "p1"}))
        .await;
    assert_eq!(bad.status, 422, "{bad:?}");
    let code = api
        .post("/generate-code", payload("p2", "subnet-0abc"))
        .await;
    assert_eq!(code.status, 200, "{code:?}");
    assert!(code.body["files"]["main.tf"].is_string(), "{code:?}");
}

#[tokio::test]
async fn terraform_family_plans_approves_and_applies_on_moto() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let (_vpc, subnet) = moto.make_subnet("10.78.0.0/16", "10.78.3.0/24").await;
    let key = common::hosts::SshKey::generate();
    ec2.import_key_pair()
        .key_name("old-api-key")
        .public_key_material(Blob::new(key.public.as_bytes()))
        .send()
        .await
        .expect("import the key pair");
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with(dir.path(), &env);
    let api = server.client(None);

    let a = api
        .post("/terraform-approve", json!({"approved": true}))
        .await;
    assert_eq!(a.status, 409, "nothing to approve yet: {a:?}");
    let a = api.post("/terraform-plan", payload("tf1", &subnet)).await;
    assert_eq!(a.status, 202, "{a:?}");
    let job = a.body["jobId"].as_str().unwrap().to_string();
    let run = api
        .wait_state(&job, "planned", Duration::from_secs(300))
        .await;
    assert_eq!(run["only"], "infra");
    let status = api.get("/terraform-apply-status").await;
    assert_eq!(
        status.body["status"], "processing",
        "waiting for approval: {status:?}"
    );
    let a = api
        .post("/terraform-approve", json!({"approved": true}))
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    let done = wait_job(&api, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["result"]["outputs"]["primary"].is_object(), "{done}");
    assert_eq!(moto.instances_tagged("tf1").await.len(), 2);
    let status = api.get("/terraform-apply-status").await;
    assert_eq!(status.body["status"], "completed", "{status:?}");
    let infra = api.get("/api/deploy/infrastructure/tf1").await;
    assert_eq!(infra.body["deploymentStatus"], "deployed", "{infra:?}");
    let o = api.get("/api/deploy/outputs/tf1").await;
    assert!(o.body["outputs"]["primary_connection"].is_string(), "{o:?}");

    // A plan denied is discarded; then the old destroy.
    let a = api.post("/terraform-plan", payload("tf1", &subnet)).await;
    let second = a.body["jobId"].as_str().unwrap().to_string();
    api.wait_run(&second, Duration::from_secs(300), |r| {
        r["final"] == true || r["state"] == "planned"
    })
    .await;
    let d = api.post("/terraform-destroy-nothing", json!({})).await;
    assert_eq!(d.status, 404);
    let a = api
        .post("/terraform-approve", json!({"approved": false}))
        .await;
    let state = api.get(&format!("/v1/runs/{second}")).await.body["state"].clone();
    assert!(
        (a.status == 200 && state == "discarded") || (a.status == 409 && state == "no_changes"),
        "{a:?} {state}"
    );
    let d = api
        .post("/api/deploy/destroy", json!({"projectId": "tf1"}))
        .await;
    let job = d.body["jobId"].as_str().unwrap().to_string();
    let done = wait_job(&api, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(moto.instances_tagged("tf1").await.is_empty());
    let infra = api.get("/api/deploy/infrastructure/tf1").await;
    assert_eq!(infra.body["deploymentStatus"], "destroyed", "{infra:?}");
}
