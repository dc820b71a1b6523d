//! `standby_tls`: a standby's `primary_conninfo` verifies the primary's certificate
//! (`sslmode=verify-full`, `sslrootcert` the cluster CA on the host). New standbys get it
//! from pg_basebackup; one seeded before TLS gets it with ALTER SYSTEM (in
//! postgresql.auto.conf, where pg_basebackup -R put the rest) and a reload, which
//! restarts only the WAL receiver.

use serde::Deserialize;

use super::modules::{ActionError, Change, cluster_online, literal, sql, sql_read, version_number};
use crate::remote::Connection;
use crate::remote::shell::conninfo_value;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyTls {
    pub version: String,
    /// The CA certificate on the host.
    pub sslrootcert: String,
}

impl StandbyTls {
    /// The conninfo wanted, or `None` when the running one is right (or there is none
    /// yet: not a standby, or not running).
    async fn wanted(&self, conn: &Connection) -> Result<Option<String>, ActionError> {
        let v = version_number(&self.version)?;
        let now = match sql_read(conn, v, "SHOW primary_conninfo;").await {
            Ok(now) => now,
            Err(_) if !cluster_online(conn, v).await? => return Ok(None),
            Err(e) => return Err(e),
        };
        let now = now.trim_end_matches('\n');
        if now.is_empty() {
            return Ok(None);
        }
        let want = with_verify_full(now, &self.sslrootcert)
            .ok_or_else(|| ActionError::Invalid(format!("cannot read primary_conninfo `{now}`")))?;
        Ok((want != now).then_some(want))
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        Ok(self.wanted(conn).await?.map(|_| Change {
            summary: "primary_conninfo: sslmode=verify-full (reload)".into(),
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let v = version_number(&self.version)?;
        if let Some(want) = self.wanted(conn).await? {
            sql(
                conn,
                v,
                &format!(
                    "ALTER SYSTEM SET primary_conninfo = {};\nSELECT pg_reload_conf();",
                    literal(&want)
                ),
            )
            .await?;
        }
        Ok(())
    }
}

/// `key=value` pairs of a conninfo string (values bare or single-quoted with `\`
/// escapes, as libpq reads them); `None` when it is not one.
pub fn parse(conninfo: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// `conninfo` with `sslmode=verify-full` and `sslrootcert`, the other pairs kept in
/// order; unchanged when it already has them.
pub fn with_verify_full(conninfo: &str, sslrootcert: &str) -> Option<String> {
    let pairs = parse(conninfo)?;
    let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
    if has("sslmode", "verify-full") && has("sslrootcert", sslrootcert) {
        return Some(conninfo.to_string());
    }
    let mut parts: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
        .collect();
    parts.push("sslmode=verify-full".into());
    parts.push(format!("sslrootcert={}", conninfo_value(sslrootcert)));
    Some(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_reads_as_libpq_does() {
        let c = r"user=rep passfile='/var/lib/postgresql/.pgpass' host=10.0.0.1 sslmode=prefer application_name='it\'s'";
        let p = parse(c).unwrap();
        assert_eq!(
            p[1],
            ("passfile".into(), "/var/lib/postgresql/.pgpass".into())
        );
        assert_eq!(p[4], ("application_name".into(), "it's".into()));
        assert_eq!(parse("a = 'b c'").unwrap(), [("a".into(), "b c".into())]);
        assert!(parse("novalue").is_none());
        assert!(parse("a='open").is_none());
    }

    #[test]
    fn verify_full_replaces_the_ssl_mode_once() {
        let c = "user=rep host=10.0.0.1 sslmode=prefer";
        let w = with_verify_full(c, "/etc/ca.crt").unwrap();
        assert_eq!(
            w,
            "user='rep' host='10.0.0.1' sslmode=verify-full sslrootcert='/etc/ca.crt'"
        );
        assert_eq!(with_verify_full(&w, "/etc/ca.crt").unwrap(), w);
        let p = parse(&w).unwrap();
        assert_eq!(p.iter().filter(|(k, _)| k == "sslmode").count(), 1);
    }
}
