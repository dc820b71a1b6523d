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
