//! `[ha]`: high availability with Patroni and etcd. The default, `plain`, is
//! streaming replication as pgform runs it without `[ha]`; `patroni` hands PostgreSQL
//! to Patroni on every node, with etcd on the cluster's own nodes as its DCS.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::error::Problem;
use super::secret::{MIN_PASSWORD_CHARS, SecretSource, password_problem};
use super::types::{ClusterSpec, ProviderKind, Size};

/// Who keeps the cluster's roles: pgform alone, or Patroni.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaMode {
    /// Streaming replication as configured by pgform: no automatic failover.
    #[default]
    Plain,
    /// Patroni on every node with etcd as DCS: automatic failover, switchover, rejoin.
    Patroni,
}

/// Patroni's synchronous mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replicas.
    #[default]
    Off,
    /// A synchronous standby when one is healthy (writes go on without one).
    On,
    /// Writes wait for a synchronous standby, even when none is left (no commit lost).
    Strict,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Strict => "strict",
        }
    }
}

/// High availability (`[ha]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaSpec {
    /// `plain` (default) or `patroni`. A running plain cluster switched to `patroni`
    /// is converted with its data (the old primary leads; one restart per node); an HA
    /// cluster is not turned back into a plain one.
    #[serde(default)]
    pub mode: HaMode,
    /// etcd members (the DCS), on the first nodes of the cluster: odd, at least 3, at
    /// most the number of nodes.
    #[serde(default = "default_etcd_members")]
    pub etcd_members: u32,
    /// Seconds the leader key lives without renewal: a dead leader is replaced after
    /// about this long.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Seconds between Patroni's checks.
    #[serde(default = "default_loop_wait")]
    pub loop_wait: u32,
    /// Seconds Patroni retries the DCS and PostgreSQL before it demotes.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: u32,
    /// A replica further behind than this never becomes leader by failover.
    #[serde(default = "default_max_lag")]
    pub maximum_lag_on_failover: Size,
    /// `off`, `on` or `strict`.
    #[serde(default)]
    pub synchronous_mode: SyncMode,
    /// The user of Patroni's REST API for anything that changes the cluster.
    #[serde(default = "default_rest_user")]
    pub rest_user: String,
    /// Environment variable holding the REST password (default PGFORM_REST_PASSWORD).
    pub rest_password_env: Option<String>,
    /// File holding the REST password (first line), relative to the spec file.
    pub rest_password_file: Option<PathBuf>,
    /// Environment variable holding the password of PostgreSQL's superuser `postgres`,
    /// which Patroni uses (default PGFORM_SUPERUSER_PASSWORD).
    pub superuser_password_env: Option<String>,
    /// File holding the superuser password (first line).
    pub superuser_password_file: Option<PathBuf>,
    /// The role pg_rewind connects as when a former leader rejoins.
    #[serde(default = "default_rewind_user")]
    pub rewind_user: String,
    /// Environment variable holding the rewind role's password (default
    /// PGFORM_REWIND_PASSWORD).
    pub rewind_password_env: Option<String>,
    /// File holding the rewind password (first line).
    pub rewind_password_file: Option<PathBuf>,
}

impl Default for HaSpec {
    fn default() -> Self {
        HaSpec {
            mode: HaMode::Plain,
            etcd_members: default_etcd_members(),
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            maximum_lag_on_failover: default_max_lag(),
            synchronous_mode: SyncMode::Off,
            rest_user: default_rest_user(),
            rest_password_env: None,
            rest_password_file: None,
            superuser_password_env: None,
            superuser_password_file: None,
            rewind_user: default_rewind_user(),
            rewind_password_env: None,
            rewind_password_file: None,
        }
    }
}

fn default_etcd_members() -> u32 {
    3
}
fn default_ttl() -> u32 {
    30
}
fn default_loop_wait() -> u32 {
    10
}
fn default_retry_timeout() -> u32 {
    10
}
fn default_max_lag() -> Size {
    Size { bytes: 1 << 20 }
}
fn default_rest_user() -> String {
    "patroni".into()
}
fn default_rewind_user() -> String {
    "rewind".into()
}

pub const DEFAULT_REST_PASSWORD_ENV: &str = "PGFORM_REST_PASSWORD";
pub const DEFAULT_SUPERUSER_PASSWORD_ENV: &str = "PGFORM_SUPERUSER_PASSWORD";
pub const DEFAULT_REWIND_PASSWORD_ENV: &str = "PGFORM_REWIND_PASSWORD";

/// One of the HA secrets: its field prefix (`ha.rest_password`), source and role.
#[derive(Debug, Clone)]
pub struct HaSecret {
    pub field: &'static str,
    pub role: String,
    pub source: SecretSource,
}

impl HaSecret {
    /// Reads it now; the error names the field and the source, never a value.
    pub fn resolve(&self) -> Result<super::Secret, String> {
        self.source.resolve().map_err(|e| {
            let e = e.replace(
                "or set postgres.replication_password_file",
                &format!("or set {}_file", self.field),
            );
            format!("{}: {e}", self.field)
        })
    }
}

impl HaSpec {
    pub fn patroni(&self) -> bool {
        self.mode == HaMode::Patroni
    }

    /// The REST API's, the superuser's and the rewind role's passwords, in that order.
    pub fn secrets(&self) -> [HaSecret; 3] {
        let source = |file: &Option<PathBuf>, env: &Option<String>, default: &str| match file {
            Some(f) => SecretSource::File(f.clone()),
            None => SecretSource::Env(env.clone().unwrap_or_else(|| default.to_string())),
        };
        [
            HaSecret {
                field: "ha.rest_password",
                role: self.rest_user.clone(),
                source: source(
                    &self.rest_password_file,
                    &self.rest_password_env,
                    DEFAULT_REST_PASSWORD_ENV,
                ),
            },
            HaSecret {
                field: "ha.superuser_password",
                role: "postgres".into(),
                source: source(
                    &self.superuser_password_file,
                    &self.superuser_password_env,
                    DEFAULT_SUPERUSER_PASSWORD_ENV,
                ),
            },
            HaSecret {
                field: "ha.rewind_password",
                role: self.rewind_user.clone(),
                source: source(
                    &self.rewind_password_file,
                    &self.rewind_password_env,
                    DEFAULT_REWIND_PASSWORD_ENV,
                ),
            },
        ]
    }

    /// The file fields, for making them relative to the spec file.
    pub fn files_mut(&mut self) -> [&mut Option<PathBuf>; 3] {
        [
            &mut self.rest_password_file,
            &mut self.superuser_password_file,
            &mut self.rewind_password_file,
        ]
    }
}

/// The number of nodes the spec asks for.
pub fn node_count(spec: &ClusterSpec) -> u64 {
    match spec.provider {
        ProviderKind::Hosts => spec.hosts.len() as u64,
        _ => u64::from(spec.postgres.replicas) + 1,
    }
}

/// Parameters Patroni sets itself on every node (those the plain mode refuses as well,
/// such as `synchronous_standby_names` or `cluster_name`, are refused there already).
pub const PATRONI_OWNED: [&str; 4] = ["hba_file", "ident_file", "data_directory", "config_file"];

/// The `[ha]` table's problems (none in plain mode but for its own ranges).
pub fn check(spec: &ClusterSpec) -> Vec<Problem> {
    let ha = &spec.ha;
    let mut out = Vec::new();
    let mut bad = |field: &str, message: String, fix: String| {
        out.push(Problem {
            location: None,
            field: field.into(),
            message,
            fix: Some(fix),
        })
    };
    if !ha.patroni() {
        return out;
    }
    let nodes = node_count(spec);
    if nodes < 3 {
        bad(
            "ha.mode",
            format!("\"patroni\" needs at least 3 nodes for its etcd DCS; the spec has {nodes}"),
            if spec.provider == ProviderKind::Hosts {
                "list 3 or more [[hosts]], or set ha.mode = \"plain\"".into()
            } else {
                "set postgres.replicas = 2 or more, or ha.mode = \"plain\"".into()
            },
        );
    }
    let m = ha.etcd_members;
    if m < 3 || m.is_multiple_of(2) {
        bad(
            "ha.etcd_members",
            format!(
                "{m} etcd members {}",
                if m < 3 {
                    "cannot survive the loss of one"
                } else {
                    "is an even count: it tolerates no more failures than one fewer"
                }
            ),
            "use an odd count of at least 3, e.g. 3 (or 5 for 5+ nodes)".into(),
        );
    } else if nodes >= 3 && u64::from(m) > nodes {
        bad(
            "ha.etcd_members",
            format!("{m} etcd members, but the cluster has only {nodes} nodes"),
            format!(
                "use an odd count of at most {}",
                if nodes.is_multiple_of(2) {
                    nodes - 1
                } else {
                    nodes
                }
            ),
        );
    }
    // Patroni's own rules: loop_wait + 2 * retry_timeout <= ttl, and its minimums.
    if ha.ttl < 20 {
        bad(
            "ha.ttl",
            format!("{} s is below Patroni's minimum", ha.ttl),
            "use 20 s or more, e.g. 30".into(),
        );
    }
    if ha.loop_wait < 1 {
        bad(
            "ha.loop_wait",
            "0 s makes Patroni spin".into(),
            "use 1 s or more, e.g. 10".into(),
        );
    }
    if ha.retry_timeout < 3 {
        bad(
            "ha.retry_timeout",
            format!("{} s is below Patroni's minimum", ha.retry_timeout),
            "use 3 s or more, e.g. 10".into(),
        );
    }
    let need = u64::from(ha.loop_wait) + 2 * u64::from(ha.retry_timeout);
    if ha.ttl >= 20 && u64::from(ha.ttl) < need {
        bad(
            "ha.ttl",
            format!(
                "{} s is less than loop_wait + 2 x retry_timeout = {need} s: a healthy leader would lose its key",
                ha.ttl
            ),
            format!("set ha.ttl to {need} or more, or lower ha.loop_wait / ha.retry_timeout"),
        );
    }
    if spec.postgres.synchronous {
        bad(
            "postgres.synchronous",
            "true: with ha.mode = \"patroni\" Patroni chooses the synchronous standby".into(),
            "remove it and set ha.synchronous_mode = \"on\" (or \"strict\")".into(),
        );
    }
    for name in spec.postgres.parameters.keys() {
        if PATRONI_OWNED.contains(&name.as_str()) {
            bad(
                &format!("postgres.parameters.{name}"),
                "is set by Patroni on each node under ha.mode = \"patroni\"".into(),
                "remove it from postgres.parameters".into(),
            );
        }
    }
    for (field, user) in [
        ("ha.rest_user", &ha.rest_user),
        ("ha.rewind_user", &ha.rewind_user),
    ] {
        let ok = !user.is_empty()
            && user.len() <= 63
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !user.starts_with("pg_");
        if !ok {
            bad(
                field,
                format!("`{user}` is not a usable user name"),
                "use 1 to 63 letters, digits, '_' or '-', not starting with pg_".into(),
            );
        }
    }
    if ha.rewind_user == spec.postgres.replication_user || ha.rewind_user == "postgres" {
        bad(
            "ha.rewind_user",
            format!(
                "`{}` is already another role of the cluster",
                ha.rewind_user
            ),
            "choose a name of its own, e.g. rewind".into(),
        );
    }
    for (field, env, file) in [
        (
            "ha.rest_password",
            &ha.rest_password_env,
            &ha.rest_password_file,
        ),
        (
            "ha.superuser_password",
            &ha.superuser_password_env,
            &ha.superuser_password_file,
        ),
        (
            "ha.rewind_password",
            &ha.rewind_password_env,
            &ha.rewind_password_file,
        ),
    ] {
        if env.is_some() && file.is_some() {
            bad(
                &format!("{field}_env"),
                format!("both {field}_env and {field}_file are set"),
                format!("keep one of {field}_env and {field}_file"),
            );
        }
    }
    out
}

/// The password policy for an HA secret read from its source: names the field and
/// source, never the value.
pub fn password_policy(secret: &HaSecret, password: &str) -> Option<Problem> {
    let why = password_problem(&secret.role, password)?;
    let (field, from) = match &secret.source {
        SecretSource::Env(var) => (format!("{}_env", secret.field), format!("in {var}")),
        SecretSource::File(p) => (
            format!("{}_file", secret.field),
            format!("in {}", p.display()),
        ),
        SecretSource::Inline(_) => (secret.field.to_string(), "written in the file".into()),
    };
    Some(Problem {
        location: None,
        field,
        message: format!("the password {from} {why}"),
        fix: Some(format!(
            "choose a password of at least {MIN_PASSWORD_CHARS} characters that is not the \
             user name, on one line"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn text(tail: &str) -> String {
        format!(
            "name = \"t\"\nprovider = \"docker\"\n[ssh]\npublic_key_file = \"/dev/null\"\n\
             [postgres]\nreplicas = 2\n{tail}"
        )
    }

    fn spec(tail: &str) -> ClusterSpec {
        crate::spec::parse_str(&text(tail), Path::new("t.toml"))
            .map(|l| l.spec)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What validation (all of it, through the parser) says of the spec.
    fn problems(tail: &str) -> Vec<Problem> {
        match crate::spec::parse_str(&text(tail), Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    fn fields(tail: &str) -> Vec<String> {
        problems(tail).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn plain_is_the_default_and_checks_nothing() {
        let s = spec("");
        assert_eq!(s.ha.mode, HaMode::Plain);
        assert!(!s.ha.patroni());
        assert!(problems("").is_empty());
        // Plain mode with one replica and an even member count: nothing to say.
        let mut s = spec("");
        s.postgres.replicas = 1;
        s.ha.etcd_members = 2;
        assert!(check(&s).is_empty());
    }

    #[test]
    fn patroni_defaults_are_valid() {
        let s = spec("[ha]\nmode = \"patroni\"\n");
        assert!(s.ha.patroni());
        assert_eq!(s.ha.ttl, 30);
        assert_eq!(s.ha.loop_wait, 10);
        assert_eq!(s.ha.retry_timeout, 10);
        assert_eq!(s.ha.maximum_lag_on_failover.bytes, 1 << 20);
        assert_eq!(s.ha.synchronous_mode, SyncMode::Off);
        assert_eq!(s.ha.etcd_members, 3);
        assert!(check(&s).is_empty(), "{:?}", check(&s));
        let s = spec(
            "[ha]\nmode = \"patroni\"\nsynchronous_mode = \"strict\"\nmaximum_lag_on_failover = \"4MB\"\n",
        );
        assert_eq!(s.ha.synchronous_mode, SyncMode::Strict);
        assert_eq!(s.ha.maximum_lag_on_failover.bytes, 4 << 20);
    }

    #[test]
    fn the_dcs_needs_an_odd_count_of_at_least_three() {
        let mut s = spec("[ha]\nmode = \"patroni\"\n");
        s.postgres.replicas = 1;
        let p = check(&s);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "ha.mode");
        assert!(p[0].message.contains("the spec has 2"), "{}", p[0]);
        assert!(
            p[0].fix
                .as_deref()
                .unwrap()
                .contains("postgres.replicas = 2")
        );

        let p = problems("[ha]\nmode = \"patroni\"\netcd_members = 2\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "ha.etcd_members");
        assert!(p[0].message.starts_with("2 etcd members"), "{}", p[0]);
        assert!(p[0].fix.as_deref().unwrap().contains("odd"));
        let p = problems("[ha]\nmode = \"patroni\"\netcd_members = 4\n");
        assert!(p[0].message.contains("even count"), "{}", p[0]);
        let p = problems("[ha]\nmode = \"patroni\"\netcd_members = 5\n");
        assert_eq!(p[0].field, "ha.etcd_members");
        assert!(p[0].message.contains("only 3 nodes"), "{}", p[0]);
        assert!(p[0].fix.as_deref().unwrap().contains("at most 3"));
    }

    #[test]
    fn timings_follow_patronis_rules() {
        assert_eq!(
            fields("[ha]\nmode = \"patroni\"\nttl = 25\n"),
            ["ha.ttl"],
            "25 < 10 + 2 x 10"
        );
        let p = problems("[ha]\nmode = \"patroni\"\nttl = 25\n");
        assert!(
            p[0].fix.as_deref().unwrap().contains("30 or more"),
            "{}",
            p[0]
        );
        assert!(fields("[ha]\nmode = \"patroni\"\nttl = 25\nretry_timeout = 5\n").is_empty());
        assert_eq!(fields("[ha]\nmode = \"patroni\"\nttl = 10\n"), ["ha.ttl"]);
        assert_eq!(
            fields("[ha]\nmode = \"patroni\"\nloop_wait = 0\nretry_timeout = 2\n"),
            ["ha.loop_wait", "ha.retry_timeout"]
        );
    }

    #[test]
    fn what_patroni_owns_is_refused_with_the_fix() {
        let p = problems(
            "synchronous = true\n[postgres.parameters]\nhba_file = \"/x\"\nwork_mem = \"8MB\"\n[ha]\nmode = \"patroni\"\n",
        );
        let f: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(f, ["postgres.synchronous", "postgres.parameters.hba_file"]);
        assert!(p[0].fix.as_deref().unwrap().contains("ha.synchronous_mode"));
    }

    #[test]
    fn users_and_secret_sources() {
        assert_eq!(
            fields("[ha]\nmode = \"patroni\"\nrest_user = \"a b\"\nrewind_user = \"replicator\"\n"),
            ["ha.rest_user", "ha.rewind_user"]
        );
        assert_eq!(
            fields(
                "[ha]\nmode = \"patroni\"\nrest_password_env = \"X\"\nrest_password_file = \"f\"\n"
            ),
            ["ha.rest_password_env"]
        );
        let s = spec("[ha]\nmode = \"patroni\"\nsuperuser_password_file = \"su\"\n");
        let [rest, su, rewind] = s.ha.secrets();
        assert_eq!(
            rest.source,
            SecretSource::Env(DEFAULT_REST_PASSWORD_ENV.into())
        );
        assert_eq!(su.source, SecretSource::File("su".into()));
        assert_eq!(rewind.role, "rewind");
        let unset = HaSecret {
            field: "ha.rest_password",
            role: "patroni".into(),
            source: SecretSource::Env("PGFORM_TEST_SURELY_UNSET_REST".into()),
        };
        let e = unset.resolve().unwrap_err();
        assert!(
            e.starts_with("ha.rest_password: environment variable PGFORM_TEST_SURELY_UNSET_REST"),
            "{e}"
        );
        assert!(e.contains("ha.rest_password_file"), "{e}");
        let p = password_policy(&unset, "patroni").unwrap();
        assert_eq!(p.field, "ha.rest_password_env");
        assert!(!p.message.contains("patroni`") || p.message.contains("role's name"));
        assert!(password_policy(&unset, "long enough pw").is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = "name = \"t\"\nprovider = \"docker\"\n[ha]\nmode = \"patroni\"\nttll = 3\n";
        let e = crate::spec::parse_str(text, Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("ttll"), "{e}");
        let text = "name = \"t\"\nprovider = \"docker\"\n[ha]\nmode = \"raft\"\n";
        let e = crate::spec::parse_str(text, Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("raft"), "{e}");
    }
}
