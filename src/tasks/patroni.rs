//! Patroni's REST API from a host, and `patroni_config`: the cluster's dynamic
//! configuration (timings, synchronous mode, PostgreSQL parameters) in the DCS as the
//! spec says. Once Patroni runs, parameters change only here (PATCH /config with the
//! REST credentials, on standard input), never in a settings file on a node: Patroni
//! applies them on every member; the restarts some need are pgform's (`hosts::ha`).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::modules::{ActionError, Change, ok};
use crate::remote::{Connection, shell::ha as sh};

/// Patroni's REST port.
pub const REST_PORT: u16 = 8008;

/// `METHOD url` on the host, authenticated with `auth` (user, password) when given.
/// Returns the status code (0: no answer) and the body.
pub async fn rest(
    conn: &Connection,
    method: &str,
    url: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> Result<(u16, String), ActionError> {
    let mut input = match auth {
        Some((user, password)) => format!("{user}:{password}\n"),
        None => "\n".to_string(),
    };
    input.push_str(body);
    let out = ok(
        conn.run(sh::rest(method, url), Some(input.as_bytes()))
            .await?,
        "Patroni REST request",
    )?;
    let (code, rest) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
    Ok((code.trim().parse().unwrap_or(0), rest.to_string()))
}

/// Whether a Patroni answers `GET url` (no authentication) within `seconds`, asked from
/// the host of `conn`.
pub async fn answers(conn: &Connection, url: &str, seconds: u32) -> bool {
    match conn
        .run(sh::rest_within("GET", url, seconds), Some(b"\n"))
        .await
    {
        Ok(out) => out.success() && out.stdout.starts_with("200"),
        Err(_) => false,
    }
}

/// The dynamic configuration as the spec wants it, on the leader.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatroniConfig {
    /// The REST API's base URL, e.g. `http://10.0.0.5:8008`.
    pub rest: String,
    /// The wanted configuration as JSON (the same as `bootstrap.dcs`).
    pub config: String,
    pub version: String,
    pub user: String,
    /// The REST password (a secret variable: the task is `secret`).
    pub password: String,
}

impl PatroniConfig {
    async fn current(&self, conn: &Connection) -> Result<Option<Value>, ActionError> {
        let (code, body) = rest(conn, "GET", &format!("{}/config", self.rest), None, "").await?;
        match code {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ActionError::Invalid(format!("Patroni's /config: {e}"))),
            // Not running yet (check mode on new hosts): the bootstrap writes it.
            0 | 503 => Ok(None),
            _ => Err(ActionError::Invalid(format!(
                "Patroni's /config answered {code}: {}",
                body.trim()
            ))),
        }
    }

    fn wanted(&self) -> Result<Value, ActionError> {
        serde_json::from_str(&self.config)
            .map_err(|e| ActionError::Invalid(format!("patroni_config: config: {e}")))
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        let wanted = self.wanted()?;
        let Some(current) = self.current(conn).await? else {
            return Ok(Some(Change {
                summary: "dynamic configuration written when Patroni bootstraps".into(),
                diff: None,
                note_only: false,
            }));
        };
        let version = super::modules::version_number(&self.version)?;
        Ok(patch(&wanted, &current).map(|(_, summary)| Change {
            summary: with_restarts(version, &wanted, &current, summary),
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let wanted = self.wanted()?;
        let Some(current) = self.current(conn).await? else {
            return Err(ActionError::Invalid(
                "Patroni's REST API does not answer on the leader".into(),
            ));
        };
        let Some((body, _)) = patch(&wanted, &current) else {
            return Ok(());
        };
        let (code, answer) = rest(
            conn,
            "PATCH",
            &format!("{}/config", self.rest),
            Some((&self.user, &self.password)),
            &body.to_string(),
        )
        .await?;
        if code != 200 {
            return Err(ActionError::Invalid(format!(
                "PATCH /config answered {code}: {}",
                answer.trim()
            )));
        }
        Ok(())
    }
}

/// A JSON value as text for comparing: strings as they are, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The PATCH body that makes `current` hold `wanted` (parameters missing from `wanted`
/// set to null, which removes them), and what it changes; `None` when nothing.
pub fn patch(wanted: &Value, current: &Value) -> Option<(Value, String)> {
    let empty = Map::new();
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let (want, have) = (obj(wanted), obj(current));
    let mut body = Map::new();
    let mut said = Vec::new();
    let mut compare = |key: &str, w: &Value, h: Option<&Value>, out: &mut Map<String, Value>| {
        if h.map(text) != Some(text(w)) {
            said.push(match h {
                Some(h) => format!("{key} {} -> {}", text(h), text(w)),
                None => format!("{key} = {}", text(w)),
            });
            out.insert(key.to_string(), w.clone());
        }
    };
    for (k, w) in &want {
        if k != "postgresql" {
            compare(k, w, have.get(k), &mut body);
        }
    }
    let want_pg = want.get("postgresql").map(obj).unwrap_or_default();
    let have_pg = have.get("postgresql").map(obj).unwrap_or_default();
    let mut pg = Map::new();
    for (k, w) in &want_pg {
        if k != "parameters" {
            compare(k, w, have_pg.get(k), &mut pg);
        }
    }
    let want_params = want_pg
        .get("parameters")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let have_params = have_pg
        .get("parameters")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut params = Map::new();
    for (k, w) in want_params {
        compare(k, w, have_params.get(k), &mut params);
    }
    for k in have_params.keys() {
        if !want_params.contains_key(k) {
            said.push(format!("remove {k}"));
            params.insert(k.clone(), Value::Null);
        }
    }
    if !params.is_empty() {
        pg.insert("parameters".into(), Value::Object(params));
    }
    if !pg.is_empty() {
        body.insert("postgresql".into(), Value::Object(pg));
    }
    (!body.is_empty()).then(|| {
        (
            Value::Object(body),
            format!("dynamic configuration: {}", said.join("; ")),
        )
    })
}

/// `summary` with the changed parameters that take a restart named (apply restarts the
/// members once Patroni has given them the new values, replicas first).
fn with_restarts(version: u32, wanted: &Value, current: &Value, summary: String) -> String {
    let params = |v: &Value| {
        v.get("postgresql")
            .and_then(|p| p.get("parameters"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (w, h) = (params(wanted), params(current));
    let mut restart: Vec<&String> = w
        .keys()
        .chain(h.keys())
        .filter(|k| w.get(*k).map(text) != h.get(*k).map(text))
        .filter(|k| crate::spec::params::needs_restart(version, k))
        .collect();
    restart.sort();
    restart.dedup();
    if restart.is_empty() {
        summary
    } else {
        format!(
            "{summary} (restart for {}: each member, replicas first, the leader in place)",
            restart
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nothing_to_patch_when_the_dcs_holds_the_spec() {
        let w = json!({"ttl": 30, "postgresql": {"use_slots": true, "parameters": {"work_mem": "4MB", "max_connections": "100"}}});
        // Numbers written by someone else compare by their text.
        let h = json!({"ttl": 30, "postgresql": {"use_slots": true, "parameters": {"work_mem": "4MB", "max_connections": 100}}});
        assert_eq!(patch(&w, &h), None);
    }

    #[test]
    fn changes_and_removals_are_patched() {
        let w = json!({"ttl": 20, "postgresql": {"use_slots": true, "parameters": {"work_mem": "8MB", "shared_buffers": "256MB"}}});
        let h = json!({"ttl": 30, "loop_wait": 10, "postgresql": {"use_slots": true, "parameters": {"work_mem": "4MB", "shared_buffers": "128MB", "old": "x"}}});
        let (body, said) = patch(&w, &h).unwrap();
        assert_eq!(
            body,
            json!({"ttl": 20, "postgresql": {"parameters": {"work_mem": "8MB", "shared_buffers": "256MB", "old": null}}})
        );
        assert!(said.contains("ttl 30 -> 20"), "{said}");
        assert!(said.contains("work_mem 4MB -> 8MB"), "{said}");
        assert!(said.contains("remove old"), "{said}");
        let s = with_restarts(15, &w, &h, said);
        assert!(
            s.ends_with(
                "(restart for shared_buffers: each member, replicas first, the leader in place)"
            ),
            "{s}"
        );
    }
}
