//! Reading a desired-state file: format detection, parsing with the failing field's path
//! and position, then validation.

use std::path::Path;

use super::error::{Location, Problem, SpecError};
use super::flat::{FlatPayload, flat_field};
use super::secret::SecretSource;
use super::types::ClusterSpec;
use super::validate;

/// Which form the file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
    /// The flat JSON payload of the old Terraform/Ansible API.
    FlatJson,
}

/// A parsed, validated spec and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: ClusterSpec,
    pub format: Format,
    pub warnings: Vec<String>,
}

/// Reads and validates a desired-state file. Nothing but the file is touched.
pub fn load_file(path: &Path) -> Result<Loaded, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = parse_str(&text, path)?;
    // Paths in the file are relative to the file, wherever pgform runs from.
    let base = path.parent().unwrap_or(Path::new(""));
    let relative_to_file = |p: &mut Option<std::path::PathBuf>| {
        if let Some(p) = p
            .as_mut()
            .filter(|p| p.is_relative() && !p.starts_with("~"))
        {
            *p = base.join(&*p);
        }
    };
    relative_to_file(&mut loaded.spec.ssh.public_key_file);
    relative_to_file(&mut loaded.spec.ssh.private_key_file);
    relative_to_file(&mut loaded.spec.ssh.jump_private_key_file);
    relative_to_file(&mut loaded.spec.ssh.known_hosts_file);
    relative_to_file(&mut loaded.spec.postgres.replication_password_file);
    for user in &mut loaded.spec.postgres.users {
        relative_to_file(&mut user.password_file);
    }
    for file in loaded.spec.ha.files_mut() {
        relative_to_file(file);
    }
    // A key that cannot be read is a spec problem: found here, before any cloud call.
    if let Some(key) = &loaded.spec.ssh.public_key_file {
        let key = expand_home(key);
        if let Err(e) = std::fs::read_to_string(&key) {
            let field = "ssh.public_key_file";
            return Err(SpecError::Invalid {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    location: locate(&text, field, loaded.format),
                    field: field.into(),
                    message: format!("{} cannot be read: {e}", key.display()),
                    fix: Some(
                        "point it at an OpenSSH public key, relative to this file \
                         (ssh-keygen -t ed25519 makes one), or use ssh.key_name"
                            .into(),
                    ),
                }],
            });
        }
    }
    // The password policy, when the password can be read now (inline ones were checked
    // with the file; an unset variable is reported by the commands that need it).
    let source = loaded.spec.postgres.password_source();
    if !matches!(source, SecretSource::Inline(_))
        && let Ok(password) = source.resolve()
        && let Some(mut problem) =
            validate::password_policy(&loaded.spec.postgres, &source, password.expose())
    {
        problem.location = locate(&text, &problem.field, loaded.format);
        return Err(SpecError::Invalid {
            path: path.to_path_buf(),
            problems: vec![problem],
        });
    }
    // The same for application users' passwords, and the HA mode's.
    let mut problems = Vec::new();
    if loaded.spec.ha.patroni() {
        for secret in loaded.spec.ha.secrets() {
            if let Ok(password) = secret.resolve()
                && let Some(mut problem) = super::ha::password_policy(&secret, password.expose())
            {
                problem.location = locate(&text, &problem.field, loaded.format);
                problems.push(problem);
            }
        }
    }
    for (i, user) in loaded.spec.postgres.users.iter().enumerate() {
        if let Some(source) = user.password_source()
            && let Ok(password) = source.resolve()
            && let Some(mut problem) =
                validate::user_password_policy(i, user, &source, password.expose())
        {
            problem.location = locate(&text, &problem.field, loaded.format);
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(SpecError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(loaded)
}

/// `~/x` to `$HOME/x`, as a shell would.
pub fn expand_home(path: &Path) -> std::path::PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// Parses and validates `text`; `path` names the file in messages and its extension
/// picks the format (`.json`, else TOML).
pub fn parse_str(text: &str, path: &Path) -> Result<Loaded, SpecError> {
    let invalid = |problems| SpecError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    let (spec, format) = if is_json {
        parse_json(text).map_err(|p| invalid(vec![p]))?
    } else {
        (
            parse_toml(text).map_err(|p| invalid(vec![p]))?,
            Format::Toml,
        )
    };
    let mut warnings = Vec::new();
    let problems = validate::check(&spec, &mut warnings);
    if !problems.is_empty() {
        let located = problems
            .into_iter()
            .map(|mut p| {
                if format == Format::FlatJson
                    && let Some(flat) = flat_field(&p.field)
                {
                    p.field = flat.to_string();
                }
                p.location = p.location.or_else(|| locate(text, &p.field, format));
                p
            })
            .collect();
        return Err(invalid(located));
    }
    if format == Format::FlatJson || spec.postgres.replication_password.is_some() {
        warnings.push(
            "the replication password is written inline in the file; prefer \
             postgres.replication_password_env or postgres.replication_password_file"
                .into(),
        );
    }
    Ok(Loaded {
        spec,
        format,
        warnings,
    })
}

fn parse_toml(text: &str) -> Result<ClusterSpec, Problem> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_path(e.path());
        toml_problem(text, &field, e.inner())
    })
}

fn toml_problem(text: &str, field: &str, e: &toml::de::Error) -> Problem {
    let (message, fix) = message_and_fix(e.message().trim(), field, "TOML");
    Problem {
        location: e.span().map(|s| Location::of_offset(text, s.start)),
        field: field.to_string(),
        message,
        fix: Some(fix),
    }
}

fn parse_json(text: &str) -> Result<(ClusterSpec, Format), Problem> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| json_problem("", &e))?;
    let flat = value
        .as_object()
        .is_some_and(|o| o.contains_key("aws_region") || o.contains_key("num_replicas"));
    let mut de = serde_json::Deserializer::from_str(text);
    if flat {
        let payload: FlatPayload = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| json_problem(&field_path(e.path()), e.inner()))?;
        Ok((payload.into_spec(), Format::FlatJson))
    } else {
        let spec = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| json_problem(&field_path(e.path()), e.inner()))?;
        Ok((spec, Format::Json))
    }
}

fn json_problem(field: &str, e: &serde_json::Error) -> Problem {
    // serde_json appends " at line L column C" to its messages; we print that ourselves.
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_string())
        .unwrap_or(message);
    let (message, fix) = message_and_fix(&message, field, "JSON");
    Problem {
        location: (e.line() > 0).then_some(Location {
            line: e.line(),
            column: e.column(),
        }),
        field: field.to_string(),
        message,
        fix: Some(fix),
    }
}

fn field_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." { String::new() } else { p }
}

/// Splits a parse error into what is wrong and how to fix it. Our validating types
/// write "problem; fix"; serde's own messages get a fix here; every problem has one.
fn message_and_fix(message: &str, field: &str, syntax: &str) -> (String, String) {
    if let Some((problem, fix)) = message.split_once("; ") {
        return (problem.to_string(), fix.to_string());
    }
    let fix = if message.contains("unknown field") {
        "remove the field or correct its spelling (the expected fields are listed above)"
    } else if message.starts_with("missing field") {
        "add the field; `pgform init` writes a starter file with every field"
    } else if ["u16", "u32", "u64", "i64", "integer"]
        .iter()
        .any(|t| message.ends_with(&format!("expected {t}")))
    {
        "write a whole number of 0 or more, without quotes"
    } else if field.is_empty() {
        return (
            message.to_string(),
            format!("correct the {syntax} syntax at the position shown"),
        );
    } else {
        "see `pgform schema` for what this field accepts"
    };
    (message.to_string(), fix.to_string())
}

/// Finds where a dotted field path is written in the file.
fn locate(text: &str, field: &str, format: Format) -> Option<Location> {
    if field.is_empty() {
        return None;
    }
    match format {
        Format::Toml => locate_toml(text, field),
        Format::Json | Format::FlatJson => {
            let leaf = field.rsplit('.').next()?;
            let leaf = leaf.split('[').next()?;
            let needle = format!("\"{leaf}\"");
            text.find(&needle).map(|i| Location::of_offset(text, i))
        }
    }
}

fn locate_toml(text: &str, field: &str) -> Option<Location> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut parts = field.split('.').peekable();
    while let Some(part) = parts.next() {
        let name = part.split('[').next()?;
        let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        match value.get_ref() {
            DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => return Some(Location::of_offset(text, key.span().start)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = "name = \"c\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"k\"\n\
                        [access]\nadmin_cidrs = [\"203.0.113.0/24\"]\n[postgres]\nreplicas = 1\n";

    fn problems(text: &str, file: &str) -> Vec<Problem> {
        match parse_str(text, Path::new(file)) {
            Err(SpecError::Invalid { problems, .. }) => problems,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn formats_are_detected() {
        let t = parse_str(TOML, Path::new("c.toml")).unwrap();
        assert_eq!((t.format, t.spec.postgres.replicas), (Format::Toml, 1));
        assert!(t.warnings.is_empty());
        let json = r#"{"name": "c", "region": "us-east-1", "ssh": {"key_name": "k"}, "access": {"admin_cidrs": ["203.0.113.0/24"]}}"#;
        assert_eq!(
            parse_str(json, Path::new("c.txt")).unwrap().format,
            Format::Json
        );
        let json = format!("\n  {json}");
        assert_eq!(
            parse_str(&json, Path::new("c.txt")).unwrap().format,
            Format::Json
        );
        // A .json name is JSON even when it does not look like an object.
        let p = problems("name = \"c\"", "c.JSON");
        assert_eq!(
            p[0].fix.as_deref(),
            Some("correct the JSON syntax at the position shown")
        );
        let flat = r#"{"instance_type": "t3.medium", "num_replicas": 1, "aws_region": "us-east-1", "ssh_key_name": "k", "subnet_id": "subnet-0d2b0680f68dca9f4", "replication_password": "change-me"}"#;
        let f = parse_str(flat, Path::new("p.json")).unwrap();
        assert_eq!(f.format, Format::FlatJson);
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].starts_with("the replication password is written inline"));
        let flat = flat.replace(
            "\"aws_region\"",
            "\"region_x\": 1, \"num_replicas_x\": 1, \"aws_region\"",
        );
        assert_eq!(problems(&flat, "p.json")[0].field, "region_x");
        let only_replicas = r#"{"num_replicas": 1}"#;
        assert_eq!(
            problems(only_replicas, "p.json")[0].message,
            "missing field `instance_type`"
        );
    }

    #[test]
    fn inline_passwords_warn() {
        let text = TOML.replace("replicas = 1", "replication_password = \"long enough\"");
        let w = parse_str(&text, Path::new("c.toml")).unwrap().warnings;
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn problems_are_located() {
        let text = TOML.replace("replicas = 1", "replicas = 99");
        let p = problems(&text, "c.toml");
        assert_eq!(p[0].field, "postgres.replicas");
        assert_eq!(p[0].location, Some(Location { line: 8, column: 1 }));
        let text = TOML.replace("replicas = 1", "replicas = \"x\"");
        let p = problems(&text, "c.toml");
        assert_eq!(p[0].field, "postgres.replicas");
        assert_eq!(p[0].location.map(|l| l.line), Some(8));
        assert_eq!(
            p[0].fix.as_deref(),
            Some("write a whole number of 0 or more, without quotes")
        );
        let p = problems("name = = 1", "c.toml");
        assert_eq!(p[0].field, "");
        assert_eq!(
            p[0].fix.as_deref(),
            Some("correct the TOML syntax at the position shown")
        );
        let p = problems(&TOML.replace("replicas = 1", "replica = 1"), "c.toml");
        assert_eq!(p[0].field, "postgres.replica");
        assert!(p[0].fix.as_deref().unwrap().starts_with("remove the field"));
        let p = problems(&TOML.replace("name = \"c\"\n", ""), "c.toml");
        assert!(p[0].fix.as_deref().unwrap().starts_with("add the field"));
        let p = problems(&TOML.replace("replicas = 1", "synchronous = 3"), "c.toml");
        assert_eq!(
            p[0].fix.as_deref(),
            Some("see `pgform schema` for what this field accepts")
        );
        // Our own types' messages carry their fix after "; ".
        let p = problems(
            &TOML.replace("replicas = 1", "shared_buffers = \"lots\""),
            "c.toml",
        );
        assert_eq!(p[0].message, "`lots` is not a size");
        assert_eq!(
            p[0].fix.as_deref(),
            Some("write a whole number with kB, MB, GB or TB, e.g. 128MB")
        );
        // A nested table's field, and one in an inline table.
        let text = TOML.replace("replicas = 1", "[postgres.parameters]\nwrok_mem = 1");
        assert_eq!(
            problems(&text, "c.toml")[0].location,
            Some(Location { line: 9, column: 1 })
        );
        let text = TOML.replace("replicas = 1", "parameters = { wrok_mem = 1 }");
        assert_eq!(
            problems(&text, "c.toml")[0].location,
            Some(Location {
                line: 8,
                column: 16
            })
        );
    }

    #[test]
    fn json_problems_are_located() {
        let json = "{\n\"name\": \"c\",\n\"region\": \"us-east-1\",\n\"ssh\": {\"key_name\": \"k\"},\n\
                    \"access\": {\"admin_cidrs\": [\"203.0.113.0/24\"]},\n\"postgres\": {\"replicas\": 99}}";
        let p = problems(json, "c.json");
        assert_eq!(p[0].field, "postgres.replicas");
        assert_eq!(
            p[0].location,
            Some(Location {
                line: 6,
                column: 14
            })
        );
        let p = problems(&json.replace("99", "\"x\""), "c.json");
        assert_eq!(p[0].field, "postgres.replicas");
        assert!(!p[0].message.contains(" at line "), "{}", p[0].message);
        assert_eq!(p[0].location.map(|l| l.line), Some(6));
        let p = problems("{\"name\": }", "c.json");
        assert_eq!(
            p[0].location,
            Some(Location {
                line: 1,
                column: 10
            })
        );
        // Flat payload fields are named as written.
        let flat = r#"{"instance_type": "t3.medium", "num_replicas": 99, "aws_region": "us-east-1", "ssh_key_name": "k", "subnet_id": "subnet-0d2b0680f68dca9f4"}"#;
        let p = problems(flat, "p.json");
        assert_eq!(p[0].field, "num_replicas");
        assert_eq!(
            p[0].location,
            Some(Location {
                line: 1,
                column: 32
            })
        );
    }

    #[test]
    fn json_errors_without_a_position_have_no_location() {
        let e = serde_json::from_value::<u32>(serde_json::json!("x")).unwrap_err();
        assert_eq!(e.line(), 0);
        assert_eq!(json_problem("a", &e).location, None);
    }

    #[test]
    fn locate_finds_fields() {
        assert_eq!(locate(TOML, "", Format::Toml), None);
        assert_eq!(locate(TOML, "nowhere", Format::Toml), None);
        assert_eq!(
            locate(TOML, "ssh", Format::Toml),
            Some(Location { line: 3, column: 2 })
        );
        assert_eq!(
            locate(TOML, "ssh.key_name", Format::Toml),
            Some(Location { line: 4, column: 1 })
        );
        assert_eq!(locate(TOML, "ssh.user", Format::Toml), None);
        assert_eq!(
            locate(
                "[[hosts]]\naddress = \"a\"\n",
                "hosts[0].address",
                Format::Toml
            ),
            Some(Location { line: 1, column: 3 })
        );
        assert_eq!(
            locate("{\"a\": {\"b\": 1}}", "a.b[2]", Format::Json),
            Some(Location { line: 1, column: 8 })
        );
        assert_eq!(locate("{}", "a", Format::FlatJson), None);
        assert_eq!(locate("not toml [", "a", Format::Toml), None);
    }

    #[test]
    fn files_relative_paths_key_and_password() {
        let dir = std::env::temp_dir().join(format!("pgform-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = dir.join("c.toml");
        let text = TOML
            .replace(
                "key_name = \"k\"",
                "public_key_file = \"k.pub\"\nprivate_key_file = \"k\"\nknown_hosts_file = \"kh\"",
            )
            .replace("replicas = 1", "replication_password_file = \"pw\"");
        std::fs::write(&spec, &text).unwrap();
        // The public key cannot be read.
        let err = load_file(&spec).unwrap_err();
        assert_eq!(err.problems()[0].field, "ssh.public_key_file");
        assert_eq!(err.problems()[0].location.map(|l| l.line), Some(4));
        std::fs::write(dir.join("k.pub"), "ssh-ed25519 AAAA t\n").unwrap();
        // No password file yet: nothing to check now.
        let loaded = load_file(&spec).unwrap();
        assert_eq!(loaded.spec.ssh.public_key_file, Some(dir.join("k.pub")));
        assert_eq!(loaded.spec.ssh.private_key_file, Some(dir.join("k")));
        assert_eq!(loaded.spec.ssh.known_hosts_file, Some(dir.join("kh")));
        assert_eq!(
            loaded.spec.postgres.replication_password_file,
            Some(dir.join("pw"))
        );
        std::fs::write(dir.join("pw"), "short\n").unwrap();
        let err = load_file(&spec).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.field, "postgres.replication_password_file");
        assert_eq!(p.location.map(|l| l.line), Some(10));
        assert!(!err.to_string().contains("short\n"));
        std::fs::write(dir.join("pw"), "long enough\n").unwrap();
        assert!(load_file(&spec).is_ok());
        // Absolute and home paths stay as written.
        let text = text
            .replace("\"k\"", "\"/abs/k\"")
            .replace("\"kh\"", "\"~/kh\"");
        std::fs::write(&spec, &text).unwrap();
        let loaded = load_file(&spec).unwrap();
        assert_eq!(loaded.spec.ssh.private_key_file, Some("/abs/k".into()));
        assert_eq!(loaded.spec.ssh.known_hosts_file, Some("~/kh".into()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(load_file(&spec), Err(SpecError::Read { .. })));
    }

    #[test]
    fn expand_home_like_a_shell() {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        if let Some(home) = home {
            assert_eq!(expand_home(Path::new("~/x")), home.join("x"));
        }
        assert_eq!(expand_home(Path::new("/x/~")), Path::new("/x/~"));
        assert_eq!(expand_home(Path::new("x")), Path::new("x"));
    }
}
