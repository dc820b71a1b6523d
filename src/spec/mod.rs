//! The desired-state file: types, defaults, loading (TOML, JSON, and the flat JSON
//! payload of the old API) and validation with located errors. No cloud calls here.

mod error;
mod flat;
mod guc;
pub mod ha;
mod load;
pub mod params;
mod secret;
mod types;
mod validate;

pub use error::{Location, Problem, SpecError};
pub use ha::{HaMode, HaSpec, SyncMode};
pub use load::{Format, Loaded, expand_home, load_file, parse_str};
pub use secret::{Secret, SecretSource};
pub use types::*;

/// The commented starter file written by `pgform init`.
pub const STARTER: &str = include_str!("starter.toml");

/// JSON Schema of the native desired-state file.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ClusterSpec)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_describes_the_file() {
        let schema = super::json_schema();
        let props = &schema["properties"];
        assert!(props["postgres"].is_object(), "{schema}");
        assert!(props["name"].is_object(), "{schema}");
        assert!(super::STARTER.contains("[postgres]"));
    }
}
