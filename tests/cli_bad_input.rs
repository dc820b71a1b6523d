//! "A set of malformed specs: each gives its clear message and exit 1, and moto records
//! no change."
//!
//! Every malformed spec is run through `pgform validate`, `pgform plan` and
//! `pgform apply --auto-approve` with AWS_ENDPOINT_URL pointed at the test proxy in front
//! of a private moto. Each command must exit 1 without a panic, name the field (as written
//! in the file), say where (file:line:col) when the code can, and give a `fix:` hint.
//! No request may reach EC2, no state file may be written, and moto must hold nothing new.
//!
//! Then two specs that are well formed but wrong about the world (a subnet that does not
//! exist, a public key file that cannot be read): exit 1 naming the field, read-only
//! requests only, nothing created.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Moto;
use common::proxy::Proxy;

const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPN1fdOXK+DcPlS87q9rQV0Kj1/yO7xyaBvR+sdIXG4K pgform-test";
const CLUSTER: &str = "bad";

/// A valid native TOML spec; each case changes one thing in it. Line numbers matter to
/// the cases' `line`.
const TOML: &str = r#"name = "bad"
region = "us-east-1"

[network]
vpc_cidr = "10.0.0.0/16"
subnet_cidr = "10.0.1.0/24"

[instances]
type = "t3.medium"

[ssh]
public_key_file = "key.pub"

[access]
admin_cidrs = ["203.0.113.0/24"]

[postgres]
version = 15
replicas = 2
shared_buffers = "1GB"
"#;

/// The same spec as native JSON.
const JSON: &str = r#"{
  "name": "bad",
  "region": "us-east-1",
  "network": {"vpc_cidr": "10.0.0.0/16", "subnet_cidr": "10.0.1.0/24"},
  "ssh": {"public_key_file": "key.pub"},
  "access": {"admin_cidrs": ["203.0.113.0/24"]},
  "postgres": {"version": 15, "replicas": 2, "shared_buffers": "1GB"}
}
"#;

/// The old API's flat payload (examples/flat-payload.json).
const FLAT: &str = r#"{"instance_type": "t3.medium", "num_replicas": 2, "aws_region": "us-east-1", "ssh_key_name": "stag-key", "subnet_id": "subnet-0d2b0680f68dca9f4", "postgres_version": "15", "max_connections": 100, "shared_buffers": "50MB", "replication_user": "reptile", "replication_password": "change-me"}
"#;

/// One malformed spec.
struct Case {
    /// File name; its extension picks the format.
    file: &'static str,
    /// The valid text the case starts from, and the one replacement that breaks it.
    base: &'static str,
    from: &'static str,
    to: &'static str,
    /// What stderr must mention: the field as written in the file.
    field: &'static str,
    /// The line the problem is reported at (`file:line:col`), when the code can tell.
    line: Option<usize>,
}

impl Case {
    fn text(&self) -> String {
        assert!(
            self.base.contains(self.from),
            "case {}: `{}` is not in its base spec",
            self.file,
            self.from
        );
        self.base.replacen(self.from, self.to, 1)
    }
}

fn pgform(dir: &Path, env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgform"))
        .current_dir(dir)
        .args(common::infra_only(args))
        .env_remove("AWS_PROFILE")
        .env("HOME", dir)
        .env("PGFORM_REPLICATION_PASSWORD", "test-only-secret")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("cannot run pgform");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// moto's environment with the endpoint replaced by the proxy's.
fn via(moto: &Moto, proxy: &Proxy) -> Vec<(String, String)> {
    let mut env = moto.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    env
}

/// A directory with the public key the base specs name, and the spec `file` = `text`.
fn workdir(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.pub"), format!("{PUBLIC_KEY}\n")).unwrap();
    std::fs::write(dir.path().join(file), text).unwrap();
    dir
}

/// True when `stderr` has `file:line:col` for this line.
fn has_location(stderr: &str, file: &str, line: usize) -> bool {
    let prefix = format!("{file}:{line}:");
    stderr.match_indices(&prefix).any(|(i, _)| {
        let rest = &stderr[i + prefix.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    })
}

/// Nothing tagged with the cluster, and no VPC but moto's default.
async fn assert_moto_unchanged(moto: &Moto, what: &str) {
    let tagged = moto.tagged(CLUSTER).await;
    assert!(
        tagged.is_empty(),
        "{what}: resources were created: {tagged:?}"
    );
    let tagged = moto.tagged("pgform").await; // the flat payload's default cluster name
    assert!(
        tagged.is_empty(),
        "{what}: resources were created: {tagged:?}"
    );
    let vpcs = moto
        .ec2()
        .await
        .describe_vpcs()
        .send()
        .await
        .expect("DescribeVpcs")
        .vpcs
        .unwrap_or_default();
    let extra: Vec<_> = vpcs
        .iter()
        .filter(|v| v.is_default() != Some(true))
        .collect();
    assert!(
        extra.is_empty(),
        "{what}: VPCs besides the default: {extra:?}"
    );
}

async fn check(case: Case) {
    check_with(case, &[], &[]).await;
}

/// `check`, with more environment for pgform, and what stderr must also say (the fix's
/// range, values or suggestion). Nothing in `extra_env` may appear in the output.
async fn check_with(case: Case, extra_env: &[(&str, &str)], says: &[&str]) {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut env = via(&moto, &proxy);
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let dir = workdir(case.file, &case.text());

    let mut failures = Vec::new();
    for args in [
        &["validate"][..],
        &["plan"][..],
        &["apply", "--auto-approve"][..],
    ] {
        let mut full = vec!["-f", case.file];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = pgform(dir.path(), &env, &full);
        let cmd = format!("pgform {}", full.join(" "));
        let mut problems = Vec::new();
        if code != 1 {
            problems.push(format!("exit code {code}, expected 1"));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if !stderr.contains(case.field) {
            problems.push(format!("stderr does not name the field `{}`", case.field));
        }
        if !stderr.contains("fix:") {
            problems.push("stderr has no `fix:` hint".to_string());
        }
        for said in says {
            if !stderr.contains(said) {
                problems.push(format!("stderr does not say `{said}`"));
            }
        }
        for (_, secret) in extra_env {
            if stdout.contains(secret) || stderr.contains(secret) {
                problems.push("the output shows the password".to_string());
            }
        }
        if let Some(line) = case.line
            && !has_location(&stderr, case.file, line)
        {
            problems.push(format!("stderr has no location {}:{line}:COL", case.file));
        }
        let requests = proxy.actions();
        if !requests.is_empty() {
            problems.push(format!("requests reached EC2: {requests:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{cmd}:\n  - {}\n  stdout: {stdout:?}\n  stderr: {stderr:?}",
                problems.join("\n  - ")
            ));
        }
    }
    let written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pgstate"))
        .collect();
    if !written.is_empty() {
        failures.push(format!("state files were written: {written:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} (`{}` -> `{}`):\n{}",
        case.file,
        case.from,
        case.to,
        failures.join("\n")
    );
    assert_moto_unchanged(&moto, case.file).await;
}

macro_rules! malformed {
    ($($name:ident: $case:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            check($case).await;
        }
    )*};
}

malformed! {
    toml_vpc_cidr_prefix_33: Case {
        file: "cluster.toml", base: TOML,
        from: r#"vpc_cidr = "10.0.0.0/16""#, to: r#"vpc_cidr = "10.0.0.0/33""#,
        field: "network.vpc_cidr", line: Some(5),
    };
    toml_vpc_cidr_banana: Case {
        file: "cluster.toml", base: TOML,
        from: r#"vpc_cidr = "10.0.0.0/16""#, to: r#"vpc_cidr = "banana""#,
        field: "network.vpc_cidr", line: Some(5),
    };
    toml_vpc_cidr_prefix_too_wide_for_aws: Case {
        file: "cluster.toml", base: TOML,
        from: r#"vpc_cidr = "10.0.0.0/16""#, to: r#"vpc_cidr = "10.0.0.0/8""#,
        field: "network.vpc_cidr", line: Some(5),
    };
    toml_subnet_outside_vpc: Case {
        file: "cluster.toml", base: TOML,
        from: r#"subnet_cidr = "10.0.1.0/24""#, to: r#"subnet_cidr = "10.1.1.0/24""#,
        field: "network.subnet_cidr", line: Some(6),
    };
    toml_replicas_99: Case {
        file: "cluster.toml", base: TOML,
        from: "replicas = 2", to: "replicas = 99",
        field: "postgres.replicas", line: Some(19),
    };
    toml_shared_buffers_not_a_size: Case {
        file: "cluster.toml", base: TOML,
        from: r#"shared_buffers = "1GB""#, to: r#"shared_buffers = "lots""#,
        field: "postgres.shared_buffers", line: Some(20),
    };
    toml_shared_buffers_exceeds_memory: Case {
        file: "cluster.toml", base: TOML,
        from: r#"shared_buffers = "1GB""#, to: r#"shared_buffers = "64GB""#,
        field: "postgres.shared_buffers", line: Some(20),
    };
    toml_unknown_field_typo: Case {
        file: "cluster.toml", base: TOML,
        from: "replicas = 2", to: "replica = 2",
        field: "replica", line: Some(19),
    };
    toml_missing_required_field: Case {
        file: "cluster.toml", base: TOML,
        from: "name = \"bad\"\n", to: "",
        field: "name", line: None,
    };
    toml_both_key_name_and_public_key_file: Case {
        file: "cluster.toml", base: TOML,
        from: r#"public_key_file = "key.pub""#, to: "public_key_file = \"key.pub\"\nkey_name = \"existing\"",
        field: "ssh.public_key_file", line: Some(12),
    };
    toml_unknown_parameter: Case {
        file: "cluster.toml", base: TOML,
        from: r#"shared_buffers = "1GB""#, to: "shared_buffers = \"1GB\"\n[postgres.parameters]\nwrok_mem = \"8MB\"",
        field: "postgres.parameters.wrok_mem", line: Some(22),
    };
    toml_parameter_managed_by_pgform: Case {
        file: "cluster.toml", base: TOML,
        from: r#"shared_buffers = "1GB""#, to: "shared_buffers = \"1GB\"\n[postgres.parameters]\nwal_level = \"logical\"",
        field: "postgres.parameters.wal_level", line: Some(22),
    };
    toml_postgres_version_9: Case {
        file: "cluster.toml", base: TOML,
        from: "version = 15", to: "version = 9",
        field: "postgres.version", line: Some(18),
    };
    toml_syntax_error: Case {
        file: "cluster.toml", base: TOML,
        from: "replicas = 2", to: "replicas = = 2",
        field: "cluster.toml", line: Some(19),
    };
    json_vpc_cidr_prefix_33: Case {
        file: "cluster.json", base: JSON,
        from: r#""vpc_cidr": "10.0.0.0/16""#, to: r#""vpc_cidr": "10.0.0.0/33""#,
        field: "network.vpc_cidr", line: Some(4),
    };
    json_subnet_outside_vpc: Case {
        file: "cluster.json", base: JSON,
        from: r#""subnet_cidr": "10.0.1.0/24""#, to: r#""subnet_cidr": "192.168.1.0/24""#,
        field: "network.subnet_cidr", line: Some(4),
    };
    json_shared_buffers_exceeds_memory: Case {
        file: "cluster.json", base: JSON,
        from: r#""shared_buffers": "1GB""#, to: r#""shared_buffers": "64GB""#,
        field: "postgres.shared_buffers", line: Some(7),
    };
    json_unknown_field_typo: Case {
        file: "cluster.json", base: JSON,
        from: r#""replicas": 2"#, to: r#""replica": 2"#,
        field: "replica", line: Some(7),
    };
    json_both_key_name_and_public_key_file: Case {
        file: "cluster.json", base: JSON,
        from: r#""public_key_file": "key.pub""#, to: r#""public_key_file": "key.pub", "key_name": "existing""#,
        field: "ssh.public_key_file", line: Some(5),
    };
    json_postgres_version_9: Case {
        file: "cluster.json", base: JSON,
        from: r#""version": 15"#, to: r#""version": 9"#,
        field: "postgres.version", line: Some(7),
    };
    json_syntax_error: Case {
        file: "cluster.json", base: JSON,
        from: r#""replicas": 2,"#, to: r#""replicas": 2,,"#,
        field: "cluster.json", line: Some(7),
    };
    flat_num_replicas_negative: Case {
        file: "payload.json", base: FLAT,
        from: r#""num_replicas": 2"#, to: r#""num_replicas": -1"#,
        field: "num_replicas", line: Some(1),
    };
    flat_num_replicas_not_a_number: Case {
        file: "payload.json", base: FLAT,
        from: r#""num_replicas": 2"#, to: r#""num_replicas": "two""#,
        field: "num_replicas", line: Some(1),
    };
    flat_num_replicas_99: Case {
        file: "payload.json", base: FLAT,
        from: r#""num_replicas": 2"#, to: r#""num_replicas": 99"#,
        field: "num_replicas", line: Some(1),
    };
    flat_unknown_field_typo: Case {
        file: "payload.json", base: FLAT,
        from: r#""num_replicas""#, to: r#""num_replica""#,
        field: "num_replica", line: Some(1),
    };
    flat_missing_required_field: Case {
        file: "payload.json", base: FLAT,
        from: r#""instance_type": "t3.medium", "#, to: "",
        field: "instance_type", line: None,
    };
    flat_shared_buffers_not_a_size: Case {
        file: "payload.json", base: FLAT,
        from: r#""shared_buffers": "50MB""#, to: r#""shared_buffers": "lots""#,
        field: "shared_buffers", line: Some(1),
    };
}

/// `[postgres.parameters]` after the base TOML's last line (line 20): the parameter is on
/// line 22.
const PARAMS_FROM: &str = r#"shared_buffers = "1GB""#;
fn params(line: &str) -> &'static str {
    Box::leak(format!("{PARAMS_FROM}\n[postgres.parameters]\n{line}").into_boxed_str())
}

/// A setting's value that PostgreSQL would refuse: refused by `validate` (and so by
/// `plan` and `apply` before they change anything), naming the field and the fix.
macro_rules! bad_value {
    ($($name:ident: $line:expr, $field:expr, $says:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let case = Case {
                file: "cluster.toml", base: TOML, from: PARAMS_FROM, to: params($line),
                field: $field, line: Some(22),
            };
            check_with(case, &[], $says).await;
        }
    )*};
}

bad_value! {
    value_integer_out_of_range: "max_parallel_workers = 5000",
        "postgres.parameters.max_parallel_workers", &["`5000` is out of range", "from 0 to 1024"];
    value_negative: "temp_buffers = -100",
        "postgres.parameters.temp_buffers", &["`-100` is out of range", "from 800kB to"];
    value_size_without_unit_out_of_range: "work_mem = 16",
        "postgres.parameters.work_mem",
        &["a number without a unit counts kB, so this is 16kB", "from 64kB to", "did you mean `16MB`?"];
    value_size_with_a_unit_in_the_wrong_case: r#"work_mem = "4mb""#,
        "postgres.parameters.work_mem", &["`4mb` is not a memory size", "did you mean `4MB`?"];
    value_size_that_is_not_one: r#"work_mem = "lots""#,
        "postgres.parameters.work_mem", &["`lots` is not a memory size", "B, kB, MB, GB, TB"];
    value_duration_without_unit_out_of_range: "checkpoint_timeout = 5",
        "postgres.parameters.checkpoint_timeout",
        &["counts s, so this is 5s", "from 30s to 1d", "did you mean `5min`?"];
    value_unknown_enum: r#"synchronous_commit = "maybe""#,
        "postgres.parameters.synchronous_commit",
        &["`maybe` is not one of its values", "use one of local, remote_write, remote_apply, on, off"];
    value_near_miss_enum: r#"synchronous_commit = "remote_aply""#,
        "postgres.parameters.synchronous_commit", &["did you mean `remote_apply`?"];
    value_string_for_a_bool: r#"autovacuum = "sometimes""#,
        "postgres.parameters.autovacuum", &["`sometimes` is not a boolean", "on or off"];
    value_number_for_a_real_out_of_range: "random_page_cost = -1.5",
        "postgres.parameters.random_page_cost", &["`-1.5` is out of range", "0 or more"];
}

#[tokio::test]
async fn typed_field_out_of_postgres_range() {
    let case = Case {
        file: "cluster.toml",
        base: TOML,
        from: "replicas = 2",
        to: "replicas = 2\nmax_connections = 0",
        field: "postgres.max_connections",
        line: Some(20),
    };
    check_with(case, &[], &["`0` is out of range", "from 1 to 262143"]).await;
}

/// A replication password against the policy: refused before anything runs, the message
/// names where it comes from and never shows it.
#[tokio::test]
async fn password_too_short() {
    let case = Case {
        file: "cluster.toml",
        base: TOML,
        from: "replicas = 2",
        to: "replicas = 2\nreplication_password_env = \"SHORT_PW\"",
        field: "postgres.replication_password_env",
        line: Some(20),
    };
    let says = ["the replication password in SHORT_PW is shorter than 8 characters"];
    check_with(case, &[("SHORT_PW", "Pw-7ch!")], &says).await;
}

#[tokio::test]
async fn password_that_is_the_user_name() {
    let case = Case {
        file: "cluster.toml",
        base: TOML,
        from: "replicas = 2",
        to: "replicas = 2\nreplication_user = \"Replicator2\"",
        field: "postgres.replication_password_env",
        line: None,
    };
    let says = ["is the role's name, `Replicator2`", "at least 8 characters"];
    check_with(
        case,
        &[("PGFORM_REPLICATION_PASSWORD", "rePLICATOR2")],
        &says,
    )
    .await;
}

#[tokio::test]
async fn flat_payload_inline_password_too_short() {
    let case = Case {
        file: "payload.json",
        base: FLAT,
        from: r#""replication_password": "change-me""#,
        to: r#""replication_password": "pw""#,
        field: "replication_password",
        line: Some(1),
    };
    check_with(case, &[], &["is shorter than 8 characters"]).await;
}

/// Passwords the policy allows, an ordinary word among them, and values PostgreSQL
/// accepts in its less common spellings, are valid.
#[test]
fn policy_passing_passwords_and_accepted_values_are_valid() {
    let values = params(
        "work_mem = \"1.5MB\"\nsynchronous_commit = \"Remote_Apply\"\nautovacuum = \"ye\"\n\
         huge_pages = \"true\"\nstatement_timeout = \"1.5 min\"\nmax_parallel_workers = \"0x10\"",
    );
    let text = TOML.replacen(PARAMS_FROM, values, 1);
    for password in [
        "postgres",
        "replicator-and-more",
        r#"Wk4 'single' "double" $HOME `id` ;&|<>\ :*#%! Jm8"#,
    ] {
        let dir = workdir("cluster.toml", &text);
        let env = [(
            "PGFORM_REPLICATION_PASSWORD".to_string(),
            password.to_string(),
        )];
        let (code, stdout, stderr) = pgform(dir.path(), &env, &["-f", "cluster.toml", "validate"]);
        assert_eq!(code, 0, "{password}:\n{stdout}\n{stderr}");
    }
}

/// The base specs themselves are valid: the cases fail for the one thing they change.
#[test]
fn base_specs_are_valid() {
    for (file, text) in [
        ("cluster.toml", TOML),
        ("cluster.json", JSON),
        ("payload.json", FLAT),
    ] {
        let dir = workdir(file, text);
        let (code, stdout, stderr) = pgform(dir.path(), &[], &["-f", file, "validate"]);
        assert_eq!(code, 0, "{file} should be valid:\n{stdout}\n{stderr}");
    }
}

/// Only Describe calls (lookups and refresh) reached EC2.
fn assert_read_only(proxy: &Proxy, what: &str) {
    let writes: Vec<String> = proxy
        .actions()
        .into_iter()
        .filter(|a| !a.starts_with("Describe"))
        .collect();
    assert!(
        writes.is_empty(),
        "{what}: requests that change EC2: {writes:?}"
    );
}

/// Runs plan and apply; each must exit 1 naming `field` with a fix hint.
async fn check_world_error(file: &str, text: &str, field: &str) {
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let env = via(&moto, &proxy);
    let dir = workdir(file, text);
    for args in [&["plan"][..], &["apply", "--auto-approve"][..]] {
        let mut full = vec!["-f", file];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = pgform(dir.path(), &env, &full);
        let what = format!("pgform {}", full.join(" "));
        assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
        assert_eq!(
            code, 1,
            "{what}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stderr.contains(field),
            "{what}: stderr does not name `{field}`:\n{stderr}"
        );
        assert!(stderr.contains("fix:"), "{what}: no `fix:` hint:\n{stderr}");
        assert_read_only(&proxy, &what);
    }
    assert_moto_unchanged(&moto, file).await;
}

#[tokio::test]
async fn subnet_id_that_does_not_exist() {
    let text = TOML.replacen(
        "vpc_cidr = \"10.0.0.0/16\"\nsubnet_cidr = \"10.0.1.0/24\"",
        "subnet_id = \"subnet-0123456789abcdef0\"",
        1,
    );
    assert!(text.contains("subnet_id"));
    // validate makes no cloud call, so it cannot know; it must not call EC2 either.
    {
        let moto = Moto::start();
        let proxy = Proxy::start(&moto.endpoint);
        let dir = workdir("cluster.toml", &text);
        let (code, _, stderr) = pgform(dir.path(), &via(&moto, &proxy), &["validate"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(proxy.actions(), Vec::<String>::new(), "validate called EC2");
    }
    check_world_error("cluster.toml", &text, "network.subnet_id").await;
}

#[tokio::test]
async fn flat_payload_subnet_id_that_does_not_exist() {
    check_world_error("payload.json", FLAT, "subnet_id").await;
}

#[tokio::test]
async fn public_key_file_that_cannot_be_read() {
    let text = TOML.replacen(
        "public_key_file = \"key.pub\"",
        "public_key_file = \"missing.pub\"",
        1,
    );
    // Found by validate already: a local file, no cloud call needed.
    let dir = workdir("cluster.toml", &text);
    let (code, stdout, stderr) = pgform(dir.path(), &[], &["validate"]);
    assert_eq!(code, 1, "validate\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("cluster.toml:"),
        "file:line:col expected:\n{stderr}"
    );
    assert!(
        stderr.contains("missing.pub") && stderr.contains("fix:"),
        "{stderr}"
    );
    check_world_error("cluster.toml", &text, "ssh.public_key_file").await;
}

#[tokio::test]
async fn public_key_file_that_is_a_directory() {
    let text = TOML.replacen(
        "public_key_file = \"key.pub\"",
        "public_key_file = \"keys\"",
        1,
    );
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let env = via(&moto, &proxy);
    let dir = workdir("cluster.toml", &text);
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for args in [&["plan"][..], &["apply", "--auto-approve"][..]] {
        let (code, stdout, stderr) = pgform(dir.path(), &env, args);
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert_eq!(code, 1, "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stderr.contains("ssh.public_key_file"),
            "{args:?}:\n{stderr}"
        );
        assert!(stderr.contains("fix:"), "{args:?}:\n{stderr}");
        assert_read_only(&proxy, &format!("{args:?}"));
    }
    assert_moto_unchanged(&moto, "cluster.toml").await;
}
