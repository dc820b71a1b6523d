//! The HTTP API under `/v1`. Every client mistake is a 4xx JSON error
//! `{"error": {"code", "message"}}` that names the problem.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::Service;
use super::auth::{self, BODY_LIMIT, Caller, Role};
use super::exec::{self, Layer};
use super::run::{Action, Run, RunKind, RunState};
use super::store::{ClusterRow, RunFilter, StoreError, now};
use crate::spec::SecretSource;

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable name for the kind of problem, e.g. `invalid_spec`, `not_found`.
    pub code: String,
    pub message: String,
    /// For `invalid_spec`: each problem with its field, fix and location.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<SpecProblem>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpecProblem {
    pub field: String,
    pub message: String,
    pub fix: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<SpecProblem>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: vec![],
        }
    }
    pub fn store(e: StoreError) -> ApiError {
        tracing::error!("{e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
    }
    pub fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over the limit of {BODY_LIMIT} bytes"),
        )
    }
    fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist"),
        )
    }
    fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
    fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                problems: self.problems,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::store(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body: an empty body reads as `{}`; a syntax error is 400, a wrong field or
/// type 422, naming it.
pub async fn json_body<T: DeserializeOwned>(body: Body) -> ApiResult<T> {
    let bytes = read_body(body).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::unprocessable("invalid_body", format!("the request body: {e}"))
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not JSON: {e}"),
            )
        }
    })
}

/// The body, up to [`BODY_LIMIT`]. A longer one is read on (up to a bound) before the
/// 413, so that the client, still sending, sees the answer rather than a closed
/// connection.
pub async fn read_body(body: Body) -> ApiResult<Bytes> {
    use futures::StreamExt;
    const DRAIN_LIMIT: usize = 64 * BODY_LIMIT;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("the request body could not be read: {e}"),
            )
        })?;
        seen += chunk.len();
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > BODY_LIMIT {
        return Err(ApiError::too_large());
    }
    Ok(Bytes::from(buf))
}

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub percent: u8,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub cluster: String,
    pub kind: RunKind,
    /// `infra` or `hosts`: one layer only.
    #[schema(value_type = Option<String>)]
    pub only: Option<Layer>,
    pub state: RunState,
    /// Nothing more happens to the run.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub allowed_actions: Vec<Action>,
    pub progress: Progress,
    /// Name it in the confirmation.
    pub plan_hash: Option<String>,
    pub error: Option<String>,
    /// An applied run's report and outputs.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub retry_of: Option<String>,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        RunView {
            id: r.id.clone(),
            cluster: r.cluster.clone(),
            kind: r.kind,
            only: r.only,
            state: r.state,
            is_final: r.state.is_final(),
            allowed_actions: r.allowed_actions(),
            progress: Progress {
                done: r.done.min(r.total.max(r.done)),
                total: r.total,
                percent: r.percent(),
            },
            plan_hash: r.plan_hash.clone(),
            error: r.error.clone(),
            result: r.result.clone(),
            created_at: r.created_at.clone(),
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            retry_of: r.retry_of.clone(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    pub cluster: String,
    pub kind: RunKind,
    /// `infra` or `hosts`: one layer only.
    #[schema(value_type = Option<String>)]
    pub only: Option<Layer>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// The `plan_hash` of the plan that was reviewed.
    pub plan_hash: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    pub cluster: Option<String>,
    pub state: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub format: String,
    pub updated_at: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

// ---------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pgform serve",
        description = "PostgreSQL clusters as runs: plan, confirm, apply, destroy."
    ),
    paths(
        put_cluster,
        list_clusters,
        get_cluster,
        outputs,
        state,
        status,
        deployment,
        lock,
        force_unlock,
        create_run,
        list_runs,
        get_run,
        confirm,
        discard,
        cancel,
        retry,
        get_plan,
        events,
        log,
        healthz,
        readyz
    ),
    components(schemas(
        ErrorBody,
        RunView,
        RunList,
        NewRun,
        Confirm,
        ClusterView,
        Health,
        Role
    ))
)]
pub struct ApiDoc;

pub fn router(svc: Arc<Service>) -> Router {
    let v1 = Router::new()
        .route("/clusters", get(list_clusters))
        .route("/clusters/{name}", put(put_cluster).get(get_cluster))
        .route("/clusters/{name}/outputs", get(outputs))
        .route("/clusters/{name}/state", get(state))
        .route("/clusters/{name}/status", get(status))
        .route("/clusters/{name}/deployment", get(deployment))
        .route("/clusters/{name}/lock", get(lock).delete(force_unlock))
        .route("/clusters/{name}/cost", get(cost))
        .route("/clusters/{name}/export", get(export))
        .route("/runs", post(create_run).get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/confirm", post(confirm))
        .route("/runs/{id}/discard", post(discard))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/retry", post(retry))
        .route("/runs/{id}/plan", get(get_plan))
        .route("/runs/{id}/events", get(events))
        .route("/runs/{id}/log", get(log))
        .route_layer(axum::middleware::from_fn_with_state(
            svc.clone(),
            auth::layer,
        ))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi));
    let compat = super::compat::router().route_layer(axum::middleware::from_fn_with_state(
        svc.clone(),
        auth::layer,
    ));
    Router::new()
        .nest("/v1", v1)
        .merge(compat)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; the API is under /v1 (see /v1/openapi.json)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method (see /v1/openapi.json)",
            )
        })
        // Bodies are read by `read_body`, with its limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(svc)
}

async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

#[utoipa::path(get, path = "/v1/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Ready when the database answers and the service is not stopping.
#[utoipa::path(get, path = "/v1/readyz", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn readyz(State(svc): State<Arc<Service>>) -> ApiResult<axum::Json<Health>> {
    if svc.is_stopping() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the service is stopping",
        ));
    }
    svc.store.cluster("")?;
    Ok(axum::Json(Health {
        status: "ready".into(),
    }))
}

// ---------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------

pub fn cluster_row(svc: &Service, name: &str) -> ApiResult<ClusterRow> {
    svc.store
        .cluster(name)?
        .ok_or_else(|| ApiError::not_found(&format!("the cluster `{name}`")))
}

pub fn load(svc: &Service, name: &str) -> ApiResult<exec::Cluster> {
    let row = cluster_row(svc, name)?;
    svc.load_cluster(&row)
        .map_err(|e| ApiError::unprocessable("invalid_spec", e.message))
}

/// Submit a cluster's spec (TOML, JSON or the old API's flat JSON; JSON when the
/// content type says so or the body starts with `{`). Validated; an inline secret is
/// refused.
#[utoipa::path(put, path = "/v1/clusters/{name}", request_body(content = String, content_type = "application/toml"),
    responses((status = 200, body = ClusterView), (status = 422, body = ErrorBody)))]
async fn put_cluster(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<ClusterView>> {
    caller.require(Role::Plan, Some(&name))?;
    let bytes = read_body(body).await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_utf8",
            "the spec is not UTF-8 text",
        )
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
        || text.trim_start().starts_with('{');
    let format = if json { "json" } else { "toml" };
    Ok(axum::Json(submit_spec(&svc, &name, text, format)?))
}

/// Validates a spec document and stores it as the cluster's (refused: another name, an
/// inline secret).
pub fn submit_spec(
    svc: &Service,
    name: &str,
    text: String,
    format: &str,
) -> ApiResult<ClusterView> {
    let (spec, warnings) = check_spec(svc, name, &text, format)?;
    if spec.name != name {
        return Err(spec_problem(
            "name",
            format!(
                "the spec is for cluster `{}`, but it was sent to /v1/clusters/{name}",
                spec.name
            ),
            format!("send it to /v1/clusters/{} or change its name", spec.name),
        ));
    }
    if let SecretSource::Inline(_) = spec.postgres.password_source() {
        return Err(spec_problem(
            "postgres.replication_password",
            "the service does not take a secret in the spec: it would be stored in its database"
                .into(),
            "remove it and set postgres.replication_password_env (a variable in the service's \
             environment) or postgres.replication_password_file (a file on the service's machine)"
                .into(),
        ));
    }
    let row = ClusterRow {
        name: name.to_string(),
        spec_text: text,
        format: format.into(),
        updated_at: now(),
    };
    svc.store.put_cluster(&row)?;
    Ok(ClusterView {
        name: name.to_string(),
        format: row.format,
        updated_at: row.updated_at,
        warnings,
    })
}

fn spec_problem(field: &str, message: String, fix: String) -> ApiError {
    let mut e = ApiError::unprocessable("invalid_spec", format!("{field}: {message}"));
    e.problems = vec![SpecProblem {
        field: field.into(),
        message,
        fix: Some(fix),
        line: None,
        column: None,
    }];
    e
}

/// Validates the document with the spec loader, as a file in the service's spec folder
/// (where relative paths in it start).
fn check_spec(
    svc: &Service,
    name: &str,
    text: &str,
    format: &str,
) -> ApiResult<(crate::spec::ClusterSpec, Vec<String>)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("`{name}` is not a cluster name: use letters, digits, `-` and `_`"),
        ));
    }
    let path = svc
        .data
        .join("specs")
        .join(format!(".check-{}.{format}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io",
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    let loaded = crate::spec::load_file(&path);
    let _ = std::fs::remove_file(&path);
    match loaded {
        Ok(l) => Ok((l.spec, l.warnings)),
        Err(e) => {
            let problems: Vec<SpecProblem> = e
                .problems()
                .iter()
                .map(|p| SpecProblem {
                    field: p.field.clone(),
                    message: p.message.clone(),
                    fix: p.fix.clone(),
                    line: p.location.map(|l| l.line),
                    column: p.location.map(|l| l.column),
                })
                .collect();
            let message = match problems.as_slice() {
                [] => e.to_string(),
                [p] => format!("{}: {}", p.field, p.message),
                ps => format!("the spec has {} problems", ps.len()),
            };
            let mut err = ApiError::unprocessable("invalid_spec", message);
            err.problems = problems;
            Err(err)
        }
    }
}

#[utoipa::path(get, path = "/v1/clusters", responses((status = 200, body = Vec<ClusterView>)))]
async fn list_clusters(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Vec<ClusterView>>> {
    caller.require(Role::Read, None)?;
    let rows = svc.store.clusters()?;
    Ok(axum::Json(
        rows.into_iter()
            .filter(|r| caller.cluster.as_ref().is_none_or(|c| *c == r.name))
            .map(|r| ClusterView {
                name: r.name,
                format: r.format,
                updated_at: r.updated_at,
                warnings: vec![],
            })
            .collect(),
    ))
}

/// The cluster and its submitted spec (which holds no secret).
#[utoipa::path(get, path = "/v1/clusters/{name}", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_cluster(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    let row = cluster_row(&svc, &name)?;
    Ok(axum::Json(serde_json::json!({
        "name": row.name, "format": row.format, "updated_at": row.updated_at, "spec": row.spec_text,
    }))
    .into_response())
}

/// The cluster's outputs: addresses and connection strings (no password).
#[utoipa::path(get, path = "/v1/clusters/{name}/outputs", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn outputs(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    let c = load(&svc, &name)?;
    let outputs = exec::outputs(&c).map_err(|e| ApiError::conflict("state", e.message))?;
    Ok(axum::Json(outputs).into_response())
}

/// The state file as recorded (it holds no secret).
#[utoipa::path(get, path = "/v1/clusters/{name}/state", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn state(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    cluster_row(&svc, &name)?;
    match svc.states(&name).read() {
        Ok(Some(s)) => {
            let text = crate::state::to_json(&s);
            Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
        }
        Ok(None) => Err(ApiError::not_found(&format!(
            "a state for `{name}` (nothing was applied yet)"
        ))),
        Err(e) => Err(ApiError::conflict("state", e.to_string())),
    }
}

/// Each node's role and replication (asks the hosts).
#[utoipa::path(get, path = "/v1/clusters/{name}/status", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn status(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    let c = load(&svc, &name)?;
    let status = exec::status(&c)
        .await
        .map_err(|e| ApiError::conflict("status", e.message))?;
    Ok(axum::Json(status).into_response())
}

/// Where the cluster stands, in the old API's words: not_deployed, pending, deployed,
/// failed or destroyed, with the run that says so.
#[utoipa::path(get, path = "/v1/clusters/{name}/deployment", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn deployment(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    cluster_row(&svc, &name)?;
    let (status, run) = deployment_status(&svc, &name)?;
    Ok(axum::Json(serde_json::json!({
        "cluster": name, "deployment_status": status, "run": run.as_ref().map(RunView::from),
    }))
    .into_response())
}

pub fn deployment_status(svc: &Service, cluster: &str) -> ApiResult<(&'static str, Option<Run>)> {
    use RunState::*;
    if let Some(r) = svc
        .store
        .last_run_in(cluster, &[Queued, Planning, Applying])?
        && (r.approved || r.state == Applying)
    {
        return Ok(("pending", Some(r)));
    }
    let last = svc
        .store
        .last_run_in(cluster, &[Applied, Errored, Interrupted])?;
    Ok(match last {
        None => ("not_deployed", None),
        Some(r) if r.state == Applied && r.kind == RunKind::Destroy => ("destroyed", Some(r)),
        Some(r) if r.state == Applied => ("deployed", Some(r)),
        Some(r) => ("failed", Some(r)),
    })
}

/// Who holds the cluster's state lock, if anyone.
#[utoipa::path(get, path = "/v1/clusters/{name}/lock", responses((status = 200, body = Object)))]
async fn lock(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    cluster_row(&svc, &name)?;
    let holder = svc
        .states(&name)
        .holder()
        .map_err(|e| ApiError::conflict("state", e.to_string()))?;
    Ok(
        axum::Json(serde_json::json!({"locked": holder.is_some(), "holder": holder}))
            .into_response(),
    )
}

/// Removes a lock left by a process that is gone (admin).
#[utoipa::path(delete, path = "/v1/clusters/{name}/lock", responses((status = 200, body = Object), (status = 403, body = ErrorBody)))]
async fn force_unlock(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Admin, Some(&name))?;
    cluster_row(&svc, &name)?;
    let holder = svc
        .states(&name)
        .force_unlock()
        .map_err(|e| ApiError::conflict("state", e.to_string()))?;
    Ok(
        axum::Json(serde_json::json!({"removed": holder.is_some(), "holder": holder}))
            .into_response(),
    )
}

/// The monthly cost of the cluster the spec describes (`pgform cost --json`).
#[utoipa::path(get, path = "/v1/clusters/{name}/cost", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn cost(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Read, Some(&name))?;
    let cluster = load(&svc, &name)?;
    Ok(axum::Json(cost_estimate(&cluster)?).into_response())
}

pub fn cost_estimate(cluster: &exec::Cluster) -> ApiResult<serde_json::Value> {
    let spec = &cluster.spec;
    if let Some(why) = crate::cost::not_billed(spec) {
        return Ok(serde_json::json!({
            "provider": spec.provider.name(), "billed": false, "reason": why,
            "currency": crate::cost::CURRENCY, "lines": [],
        }));
    }
    let conflict = |m: String| ApiError::conflict("cost", m);
    let prices = cluster.prices(None).map_err(|e| conflict(e.to_string()))?;
    // The cluster as the spec describes it: looked-up images or subnets change no price.
    let graph = crate::graph::build(spec, &crate::graph::Lookups::default())
        .map_err(|e| conflict(e.to_string()))?;
    let estimate = crate::cost::estimate(&crate::cost::from_graph(&graph), &spec.region, &prices);
    let mut doc = serde_json::to_value(&estimate).unwrap_or_default();
    doc["provider"] = spec.provider.name().into();
    doc["billed"] = true.into();
    Ok(doc)
}

/// The cluster as Terraform and Ansible (`pgform export all`), as a tar.gz with
/// `terraform/` and `ansible/`. No secret is in it.
#[utoipa::path(get, path = "/v1/clusters/{name}/export", responses((status = 200, content_type = "application/gzip", body = Vec<u8>), (status = 422, body = ErrorBody)))]
async fn export(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    use crate::export::ansible;
    caller.require(Role::Read, Some(&name))?;
    let cluster = load(&svc, &name)?;
    let spec = &cluster.spec;
    let invalid = |m: String| ApiError::unprocessable("export", m);
    let terraform = crate::export::terraform::export(spec).map_err(|e| invalid(e.to_string()))?;
    let state = cluster
        .read_state()
        .map_err(|e| ApiError::conflict("state", e.to_string()))?;
    let inventory = ansible::choose_inventory(spec, &state, "../terraform")
        .map_err(|e| invalid(e.to_string()))?;
    // The playbook copies the certificates from the TLS folder: make them for the
    // machines known (keys stay there, never in the export).
    if let ansible::Inventory::Hosts(nodes) = &inventory {
        crate::hosts::prepare_tls(spec, nodes).map_err(|e| invalid(e.to_string()))?;
    }
    let ansible = ansible::export(spec, &inventory).map_err(|e| invalid(e.to_string()))?;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let io =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string());
    for (dir, files) in [("terraform", &terraform), ("ansible", &ansible)] {
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(if text.starts_with("#!") { 0o755 } else { 0o644 });
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(
                &mut header,
                std::path::Path::new(dir).join(path),
                text.as_bytes(),
            )
            .map_err(io)?;
        }
    }
    let bytes = tar.into_inner().and_then(|gz| gz.finish()).map_err(io)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}-export.tar.gz\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------

pub fn find_run(svc: &Service, caller: &Caller, id: &str) -> ApiResult<Run> {
    let run = svc
        .store
        .run(id)?
        .ok_or_else(|| ApiError::not_found(&format!("the run `{id}`")))?;
    caller.require(Role::Read, Some(&run.cluster))?;
    Ok(run)
}

fn accepted(run: &Run) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/runs/{}", run.id))],
        axum::Json(RunView::from(run)),
    )
        .into_response()
}

/// Starts a run: `plan` (confirm applies it), `apply` (no confirmation) or `destroy`
/// (confirm destroys). Answered 202 with the run.
#[utoipa::path(post, path = "/v1/runs", request_body = NewRun,
    responses((status = 202, body = RunView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_run(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let new: NewRun = json_body(body).await?;
    let role = if new.kind == RunKind::Apply {
        Role::Apply
    } else {
        Role::Plan
    };
    caller.require(role, Some(&new.cluster))?;
    let run = start_run(&svc, Run::new(&new.cluster, new.kind, new.only))?;
    Ok(accepted(&run))
}

/// Queues a new run for a cluster that has a spec.
pub fn start_run(svc: &Service, mut run: Run) -> ApiResult<Run> {
    cluster_row(svc, &run.cluster)?;
    if svc.is_stopping() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the service is stopping; send the run again after it restarts",
        ));
    }
    svc.store.create_run(&mut run)?;
    svc.event(
        &run.id,
        serde_json::json!({"event": "state", "state": run.state}),
    );
    svc.wake_worker();
    Ok(run)
}

#[utoipa::path(get, path = "/v1/runs", params(RunQuery), responses((status = 200, body = RunList)))]
async fn list_runs(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<RunList>> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    caller.require(Role::Read, q.cluster.as_deref())?;
    let state = match &q.state {
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("state `{s}` is not a run state (queued, planning, planned, no_changes, applying, applied, discarded, canceled, errored, interrupted)"))
        })?),
        None => None,
    };
    let after = match &q.after {
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("after `{a}` is not a cursor from next_cursor"),
            )
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let runs = svc.store.runs(&RunFilter {
        cluster: q.cluster.clone().or(caller.cluster.clone()),
        state,
        after,
        limit: limit + 1,
    })?;
    let more = runs.len() > limit;
    let runs: Vec<&Run> = runs.iter().take(limit).collect();
    Ok(axum::Json(RunList {
        next_cursor: more
            .then(|| runs.last().map(|r| r.seq.to_string()))
            .flatten(),
        runs: runs.into_iter().map(RunView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/runs/{id}", responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RunView>> {
    Ok(axum::Json(RunView::from(&find_run(&svc, &caller, &id)?)))
}

fn wrong_state(run: &Run, action: &str) -> ApiError {
    let allowed: Vec<&str> = run
        .allowed_actions()
        .iter()
        .map(|a| match a {
            Action::Confirm => "confirm",
            Action::Discard => "discard",
            Action::Cancel => "cancel",
            Action::Retry => "retry",
        })
        .collect();
    ApiError::conflict(
        "wrong_state",
        format!(
            "the run is {}: it cannot be {action}ed now (allowed: {})",
            run.state.as_str(),
            if allowed.is_empty() {
                "nothing".to_string()
            } else {
                allowed.join(", ")
            }
        ),
    )
}

/// Applies the planned run, naming the plan reviewed. 409 when the run is not waiting
/// for confirmation, or when the state moved since the plan (the run is then errored:
/// retry plans again).
#[utoipa::path(post, path = "/v1/runs/{id}/confirm", request_body = Confirm,
    responses((status = 202, body = RunView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn confirm(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let mut run = find_run(&svc, &caller, &id)?;
    caller.require(Role::Apply, Some(&run.cluster))?;
    let c: Confirm = json_body(body).await?;
    if run.state != RunState::Planned {
        return Err(wrong_state(&run, "confirm"));
    }
    if run.plan_hash.as_deref() != Some(c.plan_hash.as_str()) {
        return Err(ApiError::unprocessable(
            "plan_hash_mismatch",
            format!(
                "plan_hash `{}` is not the hash of this run's plan; GET the run and review its plan",
                c.plan_hash
            ),
        ));
    }
    // The saved-plan rule: the state must be the one the plan was made from.
    let cluster = load(&svc, &run.cluster)?;
    let stale = match run.plan.as_deref().and_then(exec::infra_plan) {
        Some(p) => {
            exec::plan_is_stale(&cluster, &p).map_err(|e| ApiError::conflict("state", e.message))?
        }
        None => None,
    };
    if let Some(reason) = stale {
        run.error = Some(reason.clone());
        run.finish(RunState::Errored);
        svc.save_run(&run)?;
        return Err(ApiError::conflict("stale_plan", reason));
    }
    run.approved = true;
    run.state = RunState::Queued;
    svc.save_run(&run)?;
    svc.wake_worker();
    Ok(accepted(&run))
}

#[utoipa::path(post, path = "/v1/runs/{id}/discard", request_body(content = Option<NoBody>, description = "empty, or {}"), responses((status = 200, body = RunView), (status = 409, body = ErrorBody)))]
pub(super) async fn discard(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<axum::Json<RunView>> {
    let mut run = find_run(&svc, &caller, &id)?;
    caller.require(Role::Plan, Some(&run.cluster))?;
    let _: NoBody = json_body(body).await?;
    if run.state != RunState::Planned {
        return Err(wrong_state(&run, "discard"));
    }
    run.finish(RunState::Discarded);
    svc.save_run(&run)?;
    Ok(axum::Json(RunView::from(&run)))
}

/// Cancels a run: a queued or planned one at once; a planning one when its plan is
/// made; an applying one after its running steps finish (nothing new starts).
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", request_body(content = Option<NoBody>, description = "empty, or {}"), responses((status = 202, body = RunView), (status = 409, body = ErrorBody)))]
async fn cancel(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let mut run = find_run(&svc, &caller, &id)?;
    caller.require(Role::Plan, Some(&run.cluster))?;
    let _: NoBody = json_body(body).await?;
    if !run.allowed_actions().contains(&Action::Cancel) {
        return Err(wrong_state(&run, "cancel"));
    }
    // One update in the store: the worker may be taking the run at the same moment.
    if !svc.store.request_cancel(&run.id, &now())? {
        run = find_run(&svc, &caller, &id)?;
        return Err(wrong_state(&run, "cancel"));
    }
    svc.interrupt(&run.id);
    run = find_run(&svc, &caller, &id)?;
    if run.state == RunState::Canceled {
        svc.event(
            &run.id,
            serde_json::json!({"event": "state", "state": run.state}),
        );
    }
    svc.wake_worker();
    Ok((StatusCode::ACCEPTED, axum::Json(RunView::from(&run))).into_response())
}

/// A new run for the same cluster and kind: it plans again (after an error, an
/// interruption or a cancel).
#[utoipa::path(post, path = "/v1/runs/{id}/retry", request_body(content = Option<NoBody>, description = "empty, or {}"), responses((status = 202, body = RunView), (status = 409, body = ErrorBody)))]
async fn retry(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let old = find_run(&svc, &caller, &id)?;
    let role = if old.kind == RunKind::Apply {
        Role::Apply
    } else {
        Role::Plan
    };
    caller.require(role, Some(&old.cluster))?;
    let _: NoBody = json_body(body).await?;
    if !old.allowed_actions().contains(&Action::Retry) {
        return Err(wrong_state(&old, "retri"));
    }
    let mut run = Run::new(&old.cluster, old.kind, old.only);
    run.retry_of = Some(old.id.clone());
    svc.store.create_run(&mut run)?;
    svc.event(
        &run.id,
        serde_json::json!({"event": "state", "state": run.state}),
    );
    svc.wake_worker();
    Ok(accepted(&run))
}

/// The run's plan as JSON (`infra`: the infrastructure plan).
#[utoipa::path(get, path = "/v1/runs/{id}/plan", responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_plan(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = find_run(&svc, &caller, &id)?;
    let plan = run.plan.ok_or_else(|| {
        ApiError::not_found(&format!(
            "a plan for the run `{id}` (it is {})",
            run.state.as_str()
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], plan).into_response())
}

/// The run's events as server-sent events: those stored after `Last-Event-ID` first,
/// then each as it is stored; the stream ends when the run is final.
#[utoipa::path(get, path = "/v1/runs/{id}/events", responses((status = 200, content_type = "text/event-stream", body = String)))]
async fn events(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    find_run(&svc, &caller, &id)?;
    let after = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::parse::<i64>))
    {
        None => 0,
        Some(Ok(Ok(n))) => n,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "Last-Event-ID must be an event number from this stream",
            ));
        }
    };
    let stream = futures::stream::unfold(EventStream::new(svc, id, after), |mut s| async move {
        let (seq, data) = s.next().await?;
        let ev = SseEvent::default().id(seq.to_string()).data::<String>(data);
        Some((Ok::<_, Infallible>(ev), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One subscriber's view of a run's events: what the store holds after `last`, then each
/// event as it is stored, until the run is final.
struct EventStream {
    svc: Arc<Service>,
    id: String,
    last: i64,
    news: tokio::sync::broadcast::Receiver<super::News>,
    pending: std::collections::VecDeque<(i64, String)>,
    /// Read the store before waiting again: at the start, after a gap, a lagging
    /// receiver or a quiet second, and after the final state's event.
    look: bool,
    /// Looks that found the run final with nothing new.
    ended: u8,
}

impl EventStream {
    fn new(svc: Arc<Service>, id: String, after: i64) -> EventStream {
        // Subscribed before the first look, so nothing stored after it is missed.
        let news = svc.news.subscribe();
        EventStream {
            svc,
            id,
            last: after,
            news,
            pending: Default::default(),
            look: true,
            ended: 0,
        }
    }

    async fn next(&mut self) -> Option<(i64, String)> {
        loop {
            if let Some((seq, data)) = self.pending.pop_front() {
                self.last = seq;
                return Some((seq, data));
            }
            if self.ended > 1 {
                return None;
            }
            if self.look {
                // Final first, then the events: a run's last event is stored before it
                // is marked final, so nothing is missed. (A cancel marks it first and
                // stores its event just after: one more short look catches that.)
                let is_final = match self.svc.store.run(&self.id) {
                    Ok(Some(r)) => r.state.is_final(),
                    _ => true,
                };
                let fresh = self
                    .svc
                    .store
                    .events_after(&self.id, self.last)
                    .unwrap_or_default();
                if !fresh.is_empty() {
                    self.pending.extend(fresh);
                    continue;
                }
                if is_final || self.svc.is_stopping() {
                    self.ended += 1;
                    if self.ended <= 1 {
                        let wait = Duration::from_millis(200);
                        let _ = tokio::time::timeout(wait, self.news_of_this_run()).await;
                    }
                    continue;
                }
                self.look = false;
            }
            match tokio::time::timeout(Duration::from_secs(1), self.news_of_this_run()).await {
                Ok(Heard::Event(seq, data)) if seq == self.last + 1 => {
                    self.look = is_final_state(&data);
                    self.pending.push_back((seq, data.to_string()));
                }
                Ok(Heard::Event(seq, _)) if seq <= self.last => {}
                // The final state comes as an event; a look each second catches the rest.
                Ok(Heard::RowChanged) => {}
                _ => self.look = true,
            }
        }
    }

    /// The next news of this run. Other runs' news wakes no stream: with many runs and
    /// subscribers that would be many reads.
    async fn news_of_this_run(&mut self) -> Heard {
        loop {
            match self.news.recv().await {
                Ok(n) if n.run != self.id => continue,
                Ok(n) => match n.event {
                    Some((seq, data)) => return Heard::Event(seq, data),
                    None => return Heard::RowChanged,
                },
                // It may have missed this run's events.
                Err(_) => return Heard::Lagged,
            }
        }
    }
}

enum Heard {
    Event(i64, Arc<str>),
    RowChanged,
    Lagged,
}

/// A state event naming a final state: the stream looks at the store to end.
fn is_final_state(data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| {
        v["event"] == "state"
            && serde_json::from_value::<RunState>(v["state"].clone()).is_ok_and(|s| s.is_final())
    })
}

/// The run's events as plain text, one line each.
#[utoipa::path(get, path = "/v1/runs/{id}/log", responses((status = 200, content_type = "text/plain", body = String)))]
async fn log(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    find_run(&svc, &caller, &id)?;
    let mut out = String::new();
    for (_, data) in svc.store.events_after(&id, 0)? {
        let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
        out.push_str(&log_line(&v));
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response())
}

/// `<time> <event> <address or host> <details>` for one event.
pub fn log_line(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let at = s("at").unwrap_or_default();
    let event = s("event").unwrap_or_else(|| "event".into());
    let mut rest: Vec<String> = Vec::new();
    for k in [
        "state", "by", "address", "op", "host", "task", "status", "id", "error", "summary",
    ] {
        match &v[k] {
            serde_json::Value::Null => {}
            serde_json::Value::String(x) => rest.push(format!("{k}={x}")),
            other => rest.push(format!("{k}={other}")),
        }
    }
    format!("{at} {event} {}", rest.join(" "))
}
