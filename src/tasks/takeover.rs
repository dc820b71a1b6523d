//! `patroni_takeover`: a node's plain-mode cluster (Debian's `<version>/main`) handed to
//! Patroni with its data kept. On the primary the roles Patroni makes at a bootstrap
//! (the superuser's password, the rewind role and its grants) are made first, while
//! Debian's cluster still runs; then the cluster stops cleanly and its start.conf says
//! `disabled`, so that only Patroni starts PostgreSQL from then on (on the same data
//! directory). The task after it starts Patroni; `hosts::ha` runs the two on the
//! primary first and on the replicas only once Patroni names that node leader.
//!
//! One task, safe to repeat: a run stopped anywhere in it finds the cluster still
//! enabled and starts over (starting Debian's cluster again if it had stopped), and a
//! disabled cluster is no longer asked about.

use serde::Deserialize;

use super::modules::{ActionError, Change, cluster_online, ident, literal, ok, sql};
use super::scram;
use crate::remote::{Connection, shell, shell::ha as sh};

/// Functions pg_rewind runs on the source server (Patroni's own grants at a bootstrap).
const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Takeover {
    pub version: String,
    pub superuser_password: String,
    pub rewind_user: String,
    pub rewind_password: String,
}

/// What the host's plain cluster is, if it still runs the plain mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    Primary,
    Replica,
}

impl Plain {
    /// From [`sh::plain_cluster`]'s answer.
    pub fn parse(out: &str) -> Option<Plain> {
        match out.trim() {
            "primary" => Some(Plain::Primary),
            "replica" => Some(Plain::Replica),
            _ => None,
        }
    }

    pub async fn read(conn: &Connection, version: u32) -> Result<Option<Plain>, ActionError> {
        let out = ok(
            conn.run_read(sh::plain_cluster(version)).await?,
            "reading Debian's cluster",
        )?;
        Ok(Plain::parse(&out.stdout))
    }

    /// The plan's line: what the conversion does to this node.
    pub fn summary(self, version: u32) -> String {
        let (what, how) = match self {
            Plain::Primary => (
                "becomes Patroni's leader",
                "rewind role made, then stopped and started by Patroni, which promotes it on a new timeline",
            ),
            Plain::Replica => (
                "becomes a Patroni replica of the leader",
                "stopped, then started by Patroni once the old primary leads",
            ),
        };
        format!(
            "convert Debian's {version}/main (plain mode) to Patroni: {what}; data kept, \
             PostgreSQL restarts ({how}); {version}/main disabled"
        )
    }
}

impl Takeover {
    fn version(&self) -> Result<u32, ActionError> {
        super::modules::version_number(&self.version)
    }

    pub async fn query(&self, conn: &Connection) -> Result<Option<Change>, ActionError> {
        let v = self.version()?;
        Ok(Plain::read(conn, v).await?.map(|p| Change {
            summary: p.summary(v),
            diff: None,
            note_only: false,
        }))
    }

    pub async fn act(&self, conn: &Connection) -> Result<(), ActionError> {
        let v = self.version()?;
        let Some(plain) = Plain::read(conn, v).await? else {
            return Ok(());
        };
        if plain == Plain::Primary {
            // No Patroni runs on this node yet (it starts after this task): starting
            // Debian's cluster again after an interrupted run is safe.
            if !cluster_online(conn, v).await? {
                ok(
                    conn.run(shell::pg_ctlcluster(v, "start"), None).await?,
                    "pg_ctlcluster start",
                )?;
            }
            sql(conn, v, &self.roles(conn, v).await?).await?;
        }
        ok(
            conn.run(sh::plain_cluster_retire(v), None).await?,
            "stopping and disabling Debian's cluster",
        )?;
        Ok(())
    }

    /// The roles a Patroni bootstrap makes: the superuser's password, the rewind role
    /// with the functions pg_rewind calls. Verifiers, not passwords, when they can be
    /// computed here; the text goes to psql on standard input.
    async fn roles(&self, conn: &Connection, v: u32) -> Result<String, ActionError> {
        let secret = |p: &str| literal(&scram::verifier(p, &scram::salt()).unwrap_or(p.into()));
        let exists = sql(
            conn,
            v,
            &format!(
                "SELECT 1 FROM pg_roles WHERE rolname = {};",
                literal(&self.rewind_user)
            ),
        )
        .await?;
        let verb = if exists.trim() == "1" {
            "ALTER"
        } else {
            "CREATE"
        };
        let rewind = ident(&self.rewind_user);
        let mut text = format!(
            "SET log_statement = 'none'; SET synchronous_commit = 'local';\n\
             ALTER ROLE postgres WITH PASSWORD {};\n\
             {verb} ROLE {rewind} WITH LOGIN NOREPLICATION PASSWORD {};\n",
            secret(&self.superuser_password),
            secret(&self.rewind_password),
        );
        for f in REWIND_FUNCTIONS {
            text.push_str(&format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {rewind};\n"
            ));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_says_data_kept_and_a_restart() {
        assert_eq!(Plain::parse("primary\n"), Some(Plain::Primary));
        assert_eq!(Plain::parse("replica"), Some(Plain::Replica));
        assert_eq!(Plain::parse(""), None);
        let s = Plain::Primary.summary(15);
        assert!(s.contains("becomes Patroni's leader"), "{s}");
        assert!(s.contains("data kept, PostgreSQL restarts"), "{s}");
        assert!(s.contains("15/main disabled"), "{s}");
        assert!(
            Plain::Replica
                .summary(15)
                .contains("once the old primary leads")
        );
    }
}
