//! Bearer tokens (stored as SHA-256 hashes, compared in constant time), roles, and the
//! layer every request passes: authentication, then for a POST with an
//! `Idempotency-Key` the replay of its first answer, then an audit row per mutating call.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::Service;
use super::api::ApiError;
use super::store::{AuditRow, Idempotency, Store, StoreError, TokenRow, now};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read clusters, runs, plans, events, outputs, state.
    Read,
    /// Also submit specs, start plan and destroy-plan runs, discard and cancel.
    Plan,
    /// Also confirm plans and start apply runs.
    Apply,
    /// Also force-unlock a cluster's state.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Plan => "plan",
            Role::Apply => "apply",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Read, Role::Plan, Role::Apply, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Who makes a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` when the service has no token (open on loopback only).
    pub token: Option<String>,
    pub role: Role,
    /// A token for one cluster sees and changes only it.
    pub cluster: Option<String>,
}

impl Caller {
    /// 403 unless the caller has `role` (on `cluster`, when the request is about one).
    pub fn require(&self, role: Role, cluster: Option<&str>) -> Result<(), ApiError> {
        if self.role < role {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token has the {} role",
                    role.as_str(),
                    self.role.as_str()
                ),
            ));
        }
        if let (Some(mine), Some(asked)) = (&self.cluster, cluster)
            && mine != asked
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token is for cluster `{mine}`, not `{asked}`"),
            ));
        }
        Ok(())
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal in time independent of where the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Makes a token: returns its row (as stored: the hash only) and the secret, to be
/// shown once.
pub fn create_token(
    store: &dyn Store,
    role: Role,
    cluster: Option<&str>,
) -> Result<(TokenRow, String), StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    let secret = format!("pgf_{}", hex::encode(bytes));
    let row = TokenRow {
        id: format!("tok-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        hash: hash(&secret),
        role: role.as_str().into(),
        cluster: cluster.map(str::to_string),
        created_at: now(),
        revoked: false,
    };
    store.add_token(&row)?;
    Ok((row, secret))
}

/// The caller a request's `Authorization` header names.
pub fn authenticate(store: &dyn Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let live: Vec<TokenRow> = store
        .tokens()
        .map_err(ApiError::store)?
        .into_iter()
        .filter(|t| !t.revoked)
        .collect();
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if live.is_empty() && store.tokens().map_err(ApiError::store)?.is_empty() {
        // No token was ever made: the service listens on loopback only (checked at start).
        return Ok(Caller {
            token: None,
            role: Role::Admin,
            cluster: None,
        });
    }
    let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(unauthorized(
            "send `Authorization: Bearer <token>` (`pgform token create` makes one)",
        ));
    };
    let presented = hash(presented.trim());
    // Every live token is compared, so the time taken does not tell which one matched.
    let mut found = None;
    for t in &live {
        if same(&t.hash, &presented) {
            found = Some(t);
        }
    }
    let t = found.ok_or_else(|| unauthorized("the token is unknown or revoked"))?;
    Ok(Caller {
        token: Some(t.id.clone()),
        role: Role::parse(&t.role).unwrap_or(Role::Read),
        cluster: t.cluster.clone(),
    })
}

/// The layer around every `/v1` route but health: authentication, idempotency, audit.
pub async fn layer(State(svc): State<Arc<Service>>, mut req: Request, next: Next) -> Response {
    let caller = match authenticate(&*svc.store, req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(caller.clone());
    let method = req.method().clone();
    // The path as sent (inside the `/v1` router the prefix is stripped).
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = match (method == Method::POST, key) {
        (true, Some(key)) => idempotent(&svc, &caller, &key, req, next).await,
        _ => next.run(req).await,
    };
    if method != Method::GET && method != Method::HEAD {
        let row = AuditRow {
            at: now(),
            token: caller.token.clone(),
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
        };
        if let Err(e) = svc.store.audit(&row) {
            tracing::error!("cannot write the audit row: {e}");
        }
    }
    response
}

/// Runs the request once per key and caller; later sends of the same key replay the
/// first answer.
async fn idempotent(
    svc: &Service,
    caller: &Caller,
    key: &str,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match super::api::read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut h = Sha256::new();
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    h.update(path.as_bytes());
    h.update([0]);
    h.update(&bytes);
    let body_hash = hex::encode(h.finalize());
    let scope = caller.token.clone().unwrap_or_else(|| "-".into());
    match svc.store.idempotency_begin(key, &scope, &body_hash) {
        Err(e) => return ApiError::store(e).into_response(),
        Ok(Idempotency::InFlight) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_in_flight",
                "a request with this Idempotency-Key is still being answered; send it again later",
            )
            .into_response();
        }
        Ok(Idempotency::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                "this Idempotency-Key was used with another request body; use a new key",
            )
            .into_response();
        }
        Ok(Idempotency::Done { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            r.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
            return r;
        }
        Ok(Idempotency::New) => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    // Server errors are not remembered: the client may send the request again.
    let stored = if parts.status.is_server_error() {
        svc.store.idempotency_abort(key, &scope)
    } else {
        svc.store.idempotency_finish(
            key,
            &scope,
            parts.status.as_u16(),
            &String::from_utf8_lossy(&bytes),
        )
    };
    if let Err(e) = stored {
        tracing::error!("cannot record the Idempotency-Key: {e}");
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::store::SqliteStore;

    #[test]
    fn roles_are_ordered_and_scoped() {
        let c = Caller {
            token: Some("t".into()),
            role: Role::Plan,
            cluster: Some("a".into()),
        };
        assert!(c.require(Role::Read, Some("a")).is_ok());
        assert!(c.require(Role::Plan, None).is_ok());
        assert!(c.require(Role::Apply, Some("a")).is_err());
        assert!(c.require(Role::Read, Some("b")).is_err());
    }

    #[test]
    fn tokens_are_stored_hashed_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let (row, secret) = create_token(&store, Role::Apply, Some("a")).unwrap();
        assert!(secret.starts_with("pgf_") && secret.len() == 68);
        let stored = store.tokens().unwrap();
        assert_eq!(stored[0].hash, hash(&secret));
        let text = std::fs::read(dir.path().join("t.db")).unwrap();
        assert!(!String::from_utf8_lossy(&text).contains(&secret));
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        let caller = authenticate(&store, &headers).unwrap();
        assert_eq!(caller.role, Role::Apply);
        assert_eq!(caller.cluster.as_deref(), Some("a"));
        headers.insert("authorization", "Bearer pgf_00".parse().unwrap());
        assert!(authenticate(&store, &headers).is_err());
        assert!(store.revoke_token(&row.id).unwrap());
        headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        // Revoked, and the service does not fall back to open access.
        assert!(authenticate(&store, &headers).is_err());
    }
}
