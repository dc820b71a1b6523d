//! Secrets: values that must never be printed, serialised or passed on a command line.
//! `Secret` has no `Serialize` and a redacting `Debug`, so the type system keeps it out
//! of the state, plans and logs.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// A secret value. Reading it is explicit (`expose`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Inline(Secret),
}

impl SecretSource {
    /// Reads the secret now. The error names the source, never the value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(format!(
                    "environment variable {var} is not set; export it, or set \
                     postgres.replication_password_file"
                )),
            },
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let first = text.lines().next().unwrap_or("").to_string();
                if first.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Secret(first))
            }
        }
    }

    /// A description safe to print.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("environment variable {v}"),
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Inline(_) => "inline value (redacted)".into(),
        }
    }
}

/// The fewest characters a password may have.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The password policy for the PostgreSQL roles pgform creates (today the replication
/// role): at least [`MIN_PASSWORD_CHARS`] characters, not the role's own name in any
/// case, and no NUL or line break, which neither libpq's password file nor a
/// connection string can carry. An ordinary word such as `postgres`, or a password that
/// contains the role's name, passes. Returns what is wrong, never the password.
pub fn password_problem(role: &str, password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!("is shorter than {MIN_PASSWORD_CHARS} characters"))
    } else if password.to_lowercase() == role.to_lowercase() {
        Some(format!("is the role's name, `{role}`"))
    } else if password.contains(['\0', '\n', '\r']) {
        Some("contains a NUL or a line break".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy() {
        for good in [
            "postgres",
            "replicator-2024",
            "xReplicatorx",
            "12345678",
            "p@ss 'w\"o:r\\d $(id) ; `id` & *",
            "éééééééé",
        ] {
            assert_eq!(password_problem("replicator", good), None, "{good}");
        }
        let short = password_problem("replicator", "1234567").unwrap();
        assert_eq!(short, "is shorter than 8 characters");
        // Eight characters, not eight bytes.
        assert!(password_problem("r", "éééé").is_some());
        let name = password_problem("Replicator", "rEPLICATOR").unwrap();
        assert_eq!(name, "is the role's name, `Replicator`");
        for bad in ["long enough\n", "long\renough", "long\0enough"] {
            assert_eq!(
                password_problem("replicator", bad).as_deref(),
                Some("contains a NUL or a line break"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sources_resolve_and_describe_without_the_value() {
        let inline = SecretSource::Inline(Secret::new("inline-secret"));
        assert_eq!(inline.resolve().unwrap().expose(), "inline-secret");
        assert_eq!(inline.describe(), "inline value (redacted)");
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
        let env = SecretSource::Env("PGFORM_TEST_SURELY_UNSET_VARIABLE".into());
        assert!(
            env.resolve()
                .unwrap_err()
                .contains("PGFORM_TEST_SURELY_UNSET_VARIABLE")
        );
        assert_eq!(
            env.describe(),
            "environment variable PGFORM_TEST_SURELY_UNSET_VARIABLE"
        );
        let file = SecretSource::File("/nonexistent/pgform/password".into());
        assert!(
            file.resolve()
                .unwrap_err()
                .starts_with("cannot read /nonexistent/pgform/password")
        );
        assert_eq!(file.describe(), "file /nonexistent/pgform/password");
    }

    #[test]
    fn a_password_file_gives_its_first_line() {
        let path = std::env::temp_dir().join(format!("pgform-secret-{}", std::process::id()));
        let file = SecretSource::File(path.clone());
        std::fs::write(&path, "first line  \nsecond\n").unwrap();
        assert_eq!(file.resolve().unwrap().expose(), "first line  ");
        std::fs::write(&path, "\nsecond\n").unwrap();
        assert_eq!(
            file.resolve().unwrap_err(),
            format!("{} is empty", path.display())
        );
        std::fs::write(&path, "").unwrap();
        assert!(file.resolve().is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
