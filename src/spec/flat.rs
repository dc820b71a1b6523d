//! The flat JSON payload that users of the old Terraform/Ansible API send, accepted
//! as-is and mapped onto the native spec.

use serde::Deserialize;

use super::secret::Secret;
use super::types::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatPayload {
    /// Not in the old API; defaults to "pgform".
    #[serde(default = "default_name")]
    cluster_name: String,
    instance_type: String,
    num_replicas: u32,
    aws_region: String,
    ssh_key_name: String,
    subnet_id: String,
    #[serde(default)]
    postgres_version: Option<serde_json::Value>,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    shared_buffers: Option<Size>,
    #[serde(default)]
    replication_user: Option<String>,
    #[serde(default)]
    replication_password: Option<Secret>,
}

/// The flat payload's name for a native field, so that problems found after the
/// mapping name what the user wrote.
pub fn flat_field(native: &str) -> Option<&'static str> {
    Some(match native {
        "name" => "cluster_name",
        "region" => "aws_region",
        "instances.type" => "instance_type",
        "postgres.replicas" => "num_replicas",
        "ssh.key_name" => "ssh_key_name",
        "network.subnet_id" => "subnet_id",
        "postgres.version" => "postgres_version",
        "postgres.max_connections" => "max_connections",
        "postgres.shared_buffers" => "shared_buffers",
        "postgres.replication_user" => "replication_user",
        "postgres.replication_password" => "replication_password",
        _ => return None,
    })
}

fn default_name() -> String {
    "pgform".into()
}

impl FlatPayload {
    pub fn into_spec(self) -> ClusterSpec {
        let mut postgres = PostgresSpec {
            replicas: self.num_replicas,
            replication_password: self.replication_password,
            ..PostgresSpec::default()
        };
        if let Some(v) = self.postgres_version.as_ref().and_then(version_of) {
            postgres.version = v;
        }
        if let Some(m) = self.max_connections {
            postgres.max_connections = m;
        }
        if let Some(s) = self.shared_buffers {
            postgres.shared_buffers = s;
        }
        if let Some(u) = self.replication_user {
            postgres.replication_user = u;
        }
        ClusterSpec {
            name: self.cluster_name,
            provider: ProviderKind::Aws,
            region: self.aws_region,
            docker: DockerSpec::default(),
            hosts: Vec::new(),
            packages: PackagesSpec::default(),
            network: NetworkSpec {
                subnet_id: Some(self.subnet_id),
                public: false,
                ..NetworkSpec::default()
            },
            instances: InstanceSpec {
                instance_type: self.instance_type,
                ..InstanceSpec::default()
            },
            ssh: SshSpec {
                key_name: Some(self.ssh_key_name),
                ..SshSpec::default()
            },
            // The old API reached hosts and PostgreSQL from inside the VPC.
            access: AccessSpec {
                allow_vpc: true,
                ..AccessSpec::default()
            },
            postgres,
            tls: TlsSpec::default(),
            cost: Default::default(),
            ha: super::ha::HaSpec::default(),
        }
    }
}

/// "15" or 15; anything else is left for validation to report as version 0.
fn version_of(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32).or(Some(0)),
        serde_json::Value::String(s) => Some(s.trim().parse().unwrap_or(0)),
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_names_of_native_fields() {
        for (native, flat) in [
            ("name", "cluster_name"),
            ("region", "aws_region"),
            ("instances.type", "instance_type"),
            ("postgres.replicas", "num_replicas"),
            ("ssh.key_name", "ssh_key_name"),
            ("network.subnet_id", "subnet_id"),
            ("postgres.version", "postgres_version"),
            ("postgres.max_connections", "max_connections"),
            ("postgres.shared_buffers", "shared_buffers"),
            ("postgres.replication_user", "replication_user"),
            ("postgres.replication_password", "replication_password"),
        ] {
            assert_eq!(flat_field(native), Some(flat));
        }
        assert_eq!(flat_field("postgres.parameters.work_mem"), None);
    }

    fn payload(extra: &str) -> ClusterSpec {
        let text = format!(
            r#"{{"instance_type": "t3.large", "num_replicas": 3, "aws_region": "eu-west-1", "ssh_key_name": "k", "subnet_id": "subnet-1234567"{extra}}}"#
        );
        serde_json::from_str::<FlatPayload>(&text)
            .unwrap()
            .into_spec()
    }

    #[test]
    fn payload_maps_onto_the_spec() {
        let s = payload("");
        assert_eq!(s.name, "pgform");
        assert_eq!(s.provider, ProviderKind::Aws);
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.instances.instance_type, "t3.large");
        assert_eq!(s.network.subnet_id.as_deref(), Some("subnet-1234567"));
        assert!(!s.network.public);
        assert_eq!(s.ssh.key_name.as_deref(), Some("k"));
        assert!(s.access.allow_vpc);
        assert_eq!(s.postgres.replicas, 3);
        assert_eq!(s.postgres.version, 15);
        assert_eq!(s.postgres.max_connections, 100);
        assert_eq!(s.postgres.replication_user, "replicator");
        assert!(s.postgres.replication_password.is_none());

        let s = payload(
            r#", "cluster_name": "x", "postgres_version": "16", "max_connections": 50, "shared_buffers": "64MB", "replication_user": "r", "replication_password": "pw""#,
        );
        assert_eq!(s.name, "x");
        assert_eq!(s.postgres.version, 16);
        assert_eq!(s.postgres.max_connections, 50);
        assert_eq!(s.postgres.shared_buffers.to_string(), "64MB");
        assert_eq!(s.postgres.replication_user, "r");
        assert_eq!(s.postgres.replication_password, Some(Secret::new("pw")));
    }

    #[test]
    fn versions_of_the_payload() {
        for (v, expect) in [
            (r#"15"#, 15),
            (r#"" 14 ""#, 14),
            (r#""x""#, 0),
            (r#"-1"#, 0),
            (r#"1.5"#, 0),
            (r#"true"#, 0),
        ] {
            let s = payload(&format!(r#", "postgres_version": {v}"#));
            assert_eq!(s.postgres.version, expect, "{v}");
        }
    }
}
