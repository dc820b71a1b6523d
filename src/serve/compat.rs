//! The old API's endpoints as adapters over runs, so that a client of the old service
//! switches by changing its base URL: `/api/deploy...` (jobs per `projectId`) and the
//! Terraform-style single-project family (`/terraform-plan`, `/terraform-approve`,
//! `/terraform-apply-status`, `/apply_ansible_configuration`, `/generate-code`).
//! The project is the cluster: `projectId` names it (else the payload's `cluster_name`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::api::{self, ApiError, read_body};
use super::auth::{Caller, Role};
use super::exec::{self, Layer};
use super::run::{Run, RunKind, RunState};

type ApiResult<T> = Result<T, ApiError>;

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/api/deploy", post(deploy))
        .route("/api/deploy/status/{job}", get(deploy_status))
        .route("/api/deploy/infrastructure/{project}", get(infrastructure))
        .route("/api/deploy/destroy", post(destroy))
        .route("/api/deploy/validate/{project}", get(validate))
        .route("/api/deploy/costs/{project}", get(costs))
        .route("/api/deploy/outputs/{project}", get(outputs))
        .route("/api/deploy/state/{project}", get(state))
        .route("/terraform-plan", post(terraform_plan))
        .route("/terraform-approve", post(terraform_approve))
        .route("/terraform-apply-status", get(terraform_apply_status))
        .route("/apply_ansible_configuration", post(apply_ansible))
        .route("/generate-code", post(generate_code))
}

/// The old API's job states.
fn job_status(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "pending",
        RunState::Planning | RunState::Planned | RunState::Applying => "processing",
        RunState::Applied | RunState::NoChanges => "completed",
        RunState::Discarded | RunState::Canceled | RunState::Errored | RunState::Interrupted => {
            "failed"
        }
    }
}

/// The flat payload (with `projectId` beside its fields): stored as the project's
/// spec. Returns the cluster's name.
async fn submit_payload(svc: &Service, caller: &Caller, body: Body) -> ApiResult<String> {
    let mut payload: serde_json::Map<String, Value> = api::json_body(body).await?;
    let project = match payload.remove("projectId") {
        Some(Value::String(p)) => Some(p),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("projectId must be a string, not {other}"),
            ));
        }
        None => None,
    };
    let name = match (&project, payload.get("cluster_name")) {
        (_, Some(Value::String(n))) => n.clone(),
        (Some(p), None) => {
            payload.insert("cluster_name".into(), p.clone().into());
            p.clone()
        }
        _ => "pgform".to_string(),
    };
    caller.require(Role::Apply, Some(&name))?;
    let text = serde_json::to_string_pretty(&payload).unwrap_or_default();
    api::submit_spec(svc, &name, text, "json")?;
    Ok(name)
}

fn accepted(run: &Run) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(
            json!({"jobId": run.id, "status": "accepted", "run": format!("/v1/runs/{}", run.id)}),
        ),
    )
        .into_response()
}

/// `POST /api/deploy`: the payload, then plan and apply without a question.
async fn deploy(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let name = submit_payload(&svc, &caller, body).await?;
    let run = api::start_run(&svc, Run::new(&name, RunKind::Apply, None))?;
    Ok(accepted(&run))
}

/// A job in the old API's words.
fn job(svc: &Service, run: &Run) -> ApiResult<Value> {
    let logs: Vec<String> = svc
        .store
        .events_after(&run.id, 0)?
        .iter()
        .map(|(_, data)| api::log_line(&serde_json::from_str(data).unwrap_or_default()))
        .collect();
    let outputs = run
        .result
        .as_ref()
        .and_then(|r| r.get("outputs").cloned())
        .unwrap_or(Value::Null);
    Ok(json!({
        "jobId": run.id,
        "projectId": run.cluster,
        "status": job_status(run.state),
        "progress": run.percent(),
        "result": {"logs": logs, "outputs": outputs},
        "error": run.error,
        "startTime": run.started_at,
        "endTime": run.finished_at,
    }))
}

async fn deploy_status(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = api::find_run(&svc, &caller, &id)?;
    Ok(axum::Json(job(&svc, &run)?).into_response())
}

async fn infrastructure(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&project))?;
    api::cluster_row(&svc, &project)?;
    let (status, run) = api::deployment_status(&svc, &project)?;
    Ok(axum::Json(json!({
        "projectId": project,
        "deploymentStatus": status,
        "jobId": run.map(|r| r.id),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Project {
    #[serde(rename = "projectId")]
    project_id: String,
}

/// `POST /api/deploy/destroy {"projectId"}`: destroy without a question, as the old API did.
async fn destroy(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let p: Project = api::json_body(body).await?;
    caller.require(Role::Apply, Some(&p.project_id))?;
    let mut run = Run::new(&p.project_id, RunKind::Destroy, None);
    run.approved = true;
    let run = api::start_run(&svc, run)?;
    Ok(accepted(&run))
}

async fn validate(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&project))?;
    let row = api::cluster_row(&svc, &project)?;
    // Validated again now: the service's environment (a password file) may have changed.
    let doc = match svc.load_cluster(&row) {
        Ok(_) => json!({"projectId": project, "valid": true, "errors": []}),
        Err(e) => json!({"projectId": project, "valid": false, "errors": [e.message]}),
    };
    Ok(axum::Json(doc).into_response())
}

async fn costs(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&project))?;
    let cluster = api::load(&svc, &project)?;
    let mut doc = api::cost_estimate(&cluster)?;
    doc["projectId"] = project.into();
    Ok(axum::Json(doc).into_response())
}

async fn outputs(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&project))?;
    let cluster = api::load(&svc, &project)?;
    let outputs = exec::outputs(&cluster)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_deployed", e.message))?;
    Ok(axum::Json(json!({"projectId": project, "outputs": outputs})).into_response())
}

async fn state(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&project))?;
    api::cluster_row(&svc, &project)?;
    let state = svc
        .states(&project)
        .read()
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "state", e.to_string()))?
        .map(|s| serde_json::from_str::<Value>(&crate::state::to_json(&s)).unwrap_or_default());
    Ok(axum::Json(json!({"projectId": project, "state": state})).into_response())
}

/// `POST /terraform-plan`: the payload, then a plan that waits for `/terraform-approve`.
async fn terraform_plan(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let name = submit_payload(&svc, &caller, body).await?;
    let run = api::start_run(&svc, Run::new(&name, RunKind::Plan, Some(Layer::Infra)))?;
    Ok(accepted(&run))
}

/// The newest run of the old single-project family (all clusters the caller may see).
fn latest(svc: &Service, caller: &Caller, states: &[RunState]) -> ApiResult<Option<Run>> {
    let mut newest: Option<Run> = None;
    for row in svc.store.clusters()? {
        if caller.cluster.as_ref().is_some_and(|c| *c != row.name) {
            continue;
        }
        if let Some(r) = svc.store.last_run_in(&row.name, states)?
            && newest.as_ref().is_none_or(|n| n.seq < r.seq)
        {
            newest = Some(r);
        }
    }
    Ok(newest)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    approved: bool,
}

/// `POST /terraform-approve {"approved": bool}`: confirms (or discards) the newest plan
/// waiting for approval, with the same checks as `/v1/runs/{id}/confirm`.
async fn terraform_approve(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let a: Approve = api::json_body(body).await?;
    let run = latest(&svc, &caller, &[RunState::Planned])?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            "no plan is waiting for approval; POST /terraform-plan first",
        )
    })?;
    let body = Body::from(json!({"plan_hash": run.plan_hash}).to_string());
    let id = Path(run.id.clone());
    if a.approved {
        api::confirm(State(svc), Extension(caller), id, body).await
    } else {
        let discarded = api::discard(State(svc), Extension(caller), id, Body::empty()).await?;
        Ok(discarded.into_response())
    }
}

/// `GET /terraform-apply-status`: the newest approved run as a job.
async fn terraform_apply_status(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    caller.require(Role::Read, None)?;
    let run = latest(
        &svc,
        &caller,
        &[
            RunState::Queued,
            RunState::Planning,
            RunState::Applying,
            RunState::Applied,
            RunState::Errored,
            RunState::Interrupted,
            RunState::Canceled,
            RunState::Discarded,
            RunState::NoChanges,
            RunState::Planned,
        ],
    )?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "nothing was planned or applied yet",
        )
    })?;
    Ok(axum::Json(job(&svc, &run)?).into_response())
}

/// `POST /apply_ansible_configuration`: the hosts layer of the newest cluster (or of
/// the payload's, when one is sent), without a question.
async fn apply_ansible(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body).await?;
    let name = if bytes.iter().all(u8::is_ascii_whitespace) {
        latest(&svc, &caller, &[RunState::Applied])?
            .map(|r| r.cluster)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "not_deployed",
                    "no cluster was applied yet: the hosts layer needs its machines",
                )
            })?
    } else {
        submit_payload(&svc, &caller, Body::from(bytes)).await?
    };
    caller.require(Role::Apply, Some(&name))?;
    let run = api::start_run(&svc, Run::new(&name, RunKind::Apply, Some(Layer::Hosts)))?;
    Ok(accepted(&run))
}

/// `POST /generate-code`: the payload's cluster as Terraform files (no secret in them).
async fn generate_code(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let name = submit_payload(&svc, &caller, body).await?;
    let cluster = api::load(&svc, &name)?;
    let files = crate::export::terraform::export(&cluster.spec)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "export", e.to_string()))?;
    let files: serde_json::Map<String, Value> = files
        .into_iter()
        .map(|(p, text)| (p.display().to_string(), Value::String(text)))
        .collect();
    Ok(axum::Json(json!({"projectId": name, "files": files})).into_response())
}
