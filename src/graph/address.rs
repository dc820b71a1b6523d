use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a graph node is. Infrastructure kinds carry Terraform's type names so that
/// addresses read the same in pgform's plan and in the exported HCL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Vpc,
    Subnet,
    InternetGateway,
    RouteTable,
    SecurityGroup,
    KeyPair,
    Instance,
    /// The local provider's private network (Docker Engine API).
    DockerNetwork,
    /// A local host: a container with sshd on the cluster's Docker network.
    DockerContainer,
    /// A local host's PostgreSQL data: a named volume that outlives its container.
    DockerVolume,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Vpc,
        Kind::Subnet,
        Kind::InternetGateway,
        Kind::RouteTable,
        Kind::SecurityGroup,
        Kind::KeyPair,
        Kind::Instance,
        Kind::DockerNetwork,
        Kind::DockerContainer,
        Kind::DockerVolume,
    ];

    /// The kinds the AWS provider makes.
    pub const AWS: [Kind; 7] = [
        Kind::Vpc,
        Kind::Subnet,
        Kind::InternetGateway,
        Kind::RouteTable,
        Kind::SecurityGroup,
        Kind::KeyPair,
        Kind::Instance,
    ];

    /// The kinds the local Docker provider makes.
    pub const DOCKER: [Kind; 3] = [
        Kind::DockerNetwork,
        Kind::DockerContainer,
        Kind::DockerVolume,
    ];

    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Vpc => "aws_vpc",
            Kind::Subnet => "aws_subnet",
            Kind::InternetGateway => "aws_internet_gateway",
            Kind::RouteTable => "aws_route_table",
            Kind::SecurityGroup => "aws_security_group",
            Kind::KeyPair => "aws_key_pair",
            Kind::Instance => "aws_instance",
            Kind::DockerNetwork => "docker_network",
            Kind::DockerContainer => "docker_container",
            Kind::DockerVolume => "docker_volume",
        }
    }

    /// Attributes whose change cannot be made in place: the resource is replaced.
    pub fn forces_replacement(self, attr: &str) -> bool {
        match self {
            Kind::Vpc => attr == "cidr_block",
            Kind::Subnet => matches!(attr, "vpc_id" | "cidr_block" | "availability_zone"),
            Kind::InternetGateway => attr == "vpc_id",
            Kind::RouteTable => matches!(attr, "vpc_id" | "subnet_id" | "gateway_id"),
            Kind::SecurityGroup => matches!(attr, "name" | "description" | "vpc_id"),
            Kind::KeyPair => matches!(attr, "key_name" | "public_key"),
            Kind::Instance => matches!(
                attr,
                "ami"
                    | "subnet_id"
                    | "key_name"
                    | "root_volume_size"
                    | "root_volume_type"
                    | "data_volume_size"
                    | "data_volume_type"
                    | "associate_public_ip_address"
            ),
            // Docker changes neither once made, labels included; a container can only
            // be started (or stopped).
            Kind::DockerNetwork | Kind::DockerVolume => true,
            Kind::DockerContainer => attr != "running",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.type_name() == s)
            .ok_or_else(|| format!("unknown resource type `{s}`"))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// A node's address, e.g. `aws_instance.replica[1]`: stable across runs, written in
/// the state and in every resource's `pgform:address` tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub kind: Kind,
    pub name: String,
    pub index: Option<u32>,
}

impl Address {
    pub fn new(kind: Kind, name: &str) -> Address {
        Address {
            kind,
            name: name.to_string(),
            index: None,
        }
    }
    pub fn indexed(kind: Kind, name: &str, index: u32) -> Address {
        Address {
            kind,
            name: name.to_string(),
            index: Some(index),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        Ok(())
    }
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Address, String> {
        let bad = || format!("`{s}` is not a resource address (e.g. aws_instance.replica[0])");
        let (kind, rest) = s.split_once('.').ok_or_else(bad)?;
        let kind: Kind = kind.parse()?;
        let (name, index) = match rest.split_once('[') {
            Some((name, idx)) => {
                let idx = idx.strip_suffix(']').ok_or_else(bad)?;
                (name, Some(idx.parse().map_err(|_| bad())?))
            }
            None => (rest, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        Ok(Address {
            kind,
            name: name.to_string(),
            index,
        })
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
