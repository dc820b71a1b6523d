//! `tls_files`: the cluster CA, this node's certificate and its private key installed
//! for PostgreSQL, from pgform's TLS folder on the control machine. The task's
//! arguments name local paths, never the key: the key is read at act time and reaches
//! the host on standard input, so it is in no argument, diff, event or plan. A node
//! certificate due for renewal (expiring within the window, or not naming the node's
//! addresses) is made again locally, then installed; its change says why.

use std::path::Path;

use serde::Deserialize;

use super::modules::{ActionError, Change, Meta, read, write};
use crate::remote::Connection;
use crate::tls;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// pgform's TLS folder (control machine).
    pub local_dir: String,
    pub node: String,
    /// The names the certificate must carry, comma-separated (addresses and node name).
    pub names: String,
    pub renew_before_days: String,
    /// Where PostgreSQL reads them on the host.
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A host file and what it must hold.
struct Wanted<'a> {
    path: &'a str,
    content: String,
    meta: Meta,
}

impl TlsFiles {
    fn names(&self) -> Vec<String> {
        self.names
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn days(&self) -> Result<u32, ActionError> {
        self.renew_before_days.trim().parse().map_err(|_| {
            ActionError::Invalid(format!(
                "renew_before_days `{}` is not a number of days",
                self.renew_before_days
            ))
        })
    }

    /// Why the local certificate must be made again, if it must.
    fn local_reason(&self) -> Result<Option<String>, ActionError> {
        let dir = Path::new(&self.local_dir);
        let path = tls::node_cert(dir, &self.node);
        let pem = tls::read_optional(&path).map_err(invalid)?;
        let reason = tls::renewal_reason(
            &self.node,
            pem.as_deref(),
            &path,
            &self.names(),
            self.days()?,
            time::OffsetDateTime::now_utc(),
        );
        Ok(reason.or_else(|| {
            (!tls::node_key(dir, &self.node).exists())
                .then(|| format!("make a certificate for {}", self.node))
        }))
    }

    /// The three files as the host must have them (read from the local folder).
    fn wanted(&self) -> Result<[Wanted<'_>; 3], ActionError> {
        let dir = Path::new(&self.local_dir);
        let load = |p: &Path| {
            tls::read_optional(p)
                .map_err(invalid)?
                .ok_or_else(|| ActionError::Invalid(format!("{} is missing", p.display())))
        };
        let meta = |owner: &str, mode: &str| Meta {
            owner: owner.into(),
            group: owner.into(),
            mode: mode.into(),
        };
        Ok([
            Wanted {
                path: &self.ca,
                content: load(&tls::ca_cert(dir))?,
                meta: meta("root", "644"),
            },
            Wanted {
                path: &self.cert,
                content: load(&tls::node_cert(dir, &self.node))?,
                meta: meta("postgres", "644"),
            },
            Wanted {
                path: &self.key,
                content: load(&tls::node_key(dir, &self.node))?,
                meta: meta("postgres", "600"),
            },
        ])
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        if let Some(reason) = self.local_reason()? {
            return Ok(Some(change(reason)));
        }
        let wanted = self.wanted()?;
        let (ca, cert, key) = futures::future::join3(
            read(conn, &self.ca),
            read(conn, &self.cert),
            read(conn, &self.key),
        )
        .await;
        let mut differ = Vec::new();
        for (w, now) in wanted.iter().zip([ca?, cert?, key?]) {
            let same = now.as_ref().is_some_and(|(m, text)| {
                *text == w.content
                    && m.owner == w.meta.owner
                    && m.group == w.meta.group
                    && m.mode.trim_start_matches('0') == w.meta.mode
            });
            if !same {
                differ.push((w.path, now.map(|(_, text)| text)));
            }
        }
        if differ.is_empty() {
            return Ok(None);
        }
        // The host's certificate expiring is the reason worth naming.
        if let Some((_, Some(pem))) = differ.iter().find(|(p, _)| *p == self.cert)
            && let Some(reason) = tls::renewal_reason(
                &self.node,
                Some(pem),
                Path::new(&self.cert),
                &self.names(),
                self.days()?,
                time::OffsetDateTime::now_utc(),
            )
        {
            return Ok(Some(change(reason)));
        }
        let paths: Vec<&str> = differ.iter().map(|(p, _)| *p).collect();
        Ok(Some(change(format!(
            "install {} (certificate for {})",
            paths.join(", "),
            self.node
        ))))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        // The CA exists: hosts::configure made it before the run.
        tls::ensure_node(
            Path::new(&self.local_dir),
            &self.node,
            &self.names(),
            self.days()?,
        )
        .map_err(invalid)?;
        // The key before the certificate: PostgreSQL must never read a new certificate
        // with the old key.
        let [ca, cert, key] = self.wanted()?;
        for w in [ca, key, cert] {
            write(conn, w.path, &w.content, &w.meta).await?;
        }
        Ok(())
    }
}

fn change(summary: String) -> Change {
    Change {
        summary,
        diff: None,
        note_only: false,
    }
}

fn invalid(e: tls::TlsError) -> ActionError {
    ActionError::Invalid(e.to_string())
}
