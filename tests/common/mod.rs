//! Test harness: a private moto server (EC2 emulator) per test.
//!
//! Use from an integration test with `mod common;`, then:
//!
//! ```ignore
//! let moto = common::Moto::start();          // killed again when `moto` is dropped
//! let ec2 = moto.ec2().await;                // SDK client pointed at it
//! Command::new(env!("CARGO_BIN_EXE_pgform")).envs(moto.env())...;
//! assert_eq!(moto.count_tagged("demo").await, 0);
//! ```
//!
//! moto 5.2 facts the helpers below rely on (probed with boto3):
//! - DescribeTags keeps the tags of deleted resources and of terminated instances, so
//!   "what exists" is read with one Describe call per kind, filtered on `tag:KEY`.
//! - Start one moto per test rather than `POST /moto-api/reset`: with MOTO_AMIS_PATH
//!   images that carry a `creation_date`, moto fails to load them a second time, so a
//!   reset (or a second region on the same server) leaves it answering 500.
//!   Use region us-east-1 only.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

pub mod cli;
pub mod hosts;
pub mod pg;
pub mod proxy;
pub mod serve;
pub mod tools;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, Instance};

/// The tag pgform puts on everything it creates; its value is the cluster name.
pub const CLUSTER_TAG: &str = "pgform:cluster";
pub const REGION: &str = "us-east-1";

/// Images in tests/fixtures/amis.json (the only images this moto knows).
pub const DEBIAN_OWNER: &str = "136693071363";
/// Newest Debian 12 amd64 image: `debian-12-amd64-20261101-1234`.
pub const AMI_AMD64_NEWEST: &str = "ami-0d12a0000000000a2";
/// Older Debian 12 amd64 image: `debian-12-amd64-20261001-1800`.
pub const AMI_AMD64_OLDER: &str = "ami-0d12a0000000000a1";
/// Debian 12 arm64 image `debian-12-arm64-20261101-1234`; the newest of all three, so a
/// lookup that forgets to filter on architecture picks it.
pub const AMI_ARM64: &str = "ami-0d12a0000000000b1";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 3;

/// A running `moto_server` on a free loopback port, with the fixture image list.
pub struct Moto {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    /// moto's stdout and stderr (request log, Python tracebacks of its 500s).
    pub log: PathBuf,
    child: Child,
}

/// How a start attempt ended when the server did not come up.
enum NotReady {
    Exited(String),
    TimedOut,
}

impl Moto {
    /// Starts moto and waits (up to 30 s) until it answers HTTP.
    pub fn start() -> Moto {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/amis.json");
        let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto");
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));

        // Another process can take the port between our probe and moto's bind: retry.
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let log = log_dir.join(format!("moto-{port}.log"));
            let mut child = spawn(port, &fixture, &log);
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Moto {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        log,
                        child,
                    };
                }
                Err(NotReady::Exited(status)) => {
                    let output = fs::read_to_string(&log).unwrap_or_default();
                    if attempt < START_ATTEMPTS && output.contains("Address already in use") {
                        continue;
                    }
                    panic!("moto_server exited ({status}) before answering; its log:\n{output}");
                }
                Err(NotReady::TimedOut) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let output = fs::read_to_string(&log).unwrap_or_default();
                    panic!(
                        "moto_server did not answer within {START_TIMEOUT:?}; its log:\n{output}"
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// An EC2 client for this moto: region us-east-1, dummy static credentials.
    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "pgform-tests",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    /// Environment for a spawned `pgform` binary so that it talks to this moto.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Instances tagged `pgform:cluster=<cluster>` that are not terminated (or terminating).
    pub async fn instances_tagged(&self, cluster: &str) -> Vec<Instance> {
        let reservations = self
            .ec2()
            .await
            .describe_instances()
            .filters(tag_filter(cluster))
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await;
        ok("DescribeInstances", reservations)
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .collect()
    }

    /// Everything tagged `pgform:cluster=<cluster>`, as (kind, id) pairs: VPCs, subnets,
    /// internet gateways, route tables, security groups, key pairs (by name) and
    /// non-terminated instances. Handy in assertion messages.
    pub async fn tagged(&self, cluster: &str) -> Vec<(&'static str, String)> {
        let ec2 = self.ec2().await;
        let tag = || tag_filter(cluster);
        let mut found = Vec::new();
        let mut add = |kind: &'static str, ids: Vec<Option<String>>| {
            found.extend(ids.into_iter().flatten().map(|id| (kind, id)));
        };

        let vpcs = ec2.describe_vpcs().filters(tag()).into_paginator();
        let vpcs = ok("DescribeVpcs", vpcs.items().send().try_collect().await);
        add("vpc", vpcs.into_iter().map(|v| v.vpc_id).collect());

        let subnets = ec2.describe_subnets().filters(tag()).into_paginator();
        let subnets = ok(
            "DescribeSubnets",
            subnets.items().send().try_collect().await,
        );
        add("subnet", subnets.into_iter().map(|s| s.subnet_id).collect());

        let igws = ec2
            .describe_internet_gateways()
            .filters(tag())
            .into_paginator();
        let igws = ok(
            "DescribeInternetGateways",
            igws.items().send().try_collect().await,
        );
        add(
            "internet-gateway",
            igws.into_iter().map(|g| g.internet_gateway_id).collect(),
        );

        let rts = ec2.describe_route_tables().filters(tag()).into_paginator();
        let rts = ok(
            "DescribeRouteTables",
            rts.items().send().try_collect().await,
        );
        add(
            "route-table",
            rts.into_iter().map(|r| r.route_table_id).collect(),
        );

        let sgs = ec2
            .describe_security_groups()
            .filters(tag())
            .into_paginator();
        let sgs = ok(
            "DescribeSecurityGroups",
            sgs.items().send().try_collect().await,
        );
        add(
            "security-group",
            sgs.into_iter().map(|g| g.group_id).collect(),
        );

        // DescribeKeyPairs has no pagination.
        let keys = ec2.describe_key_pairs().filters(tag()).send().await;
        let keys = ok("DescribeKeyPairs", keys).key_pairs.unwrap_or_default();
        add("key-pair", keys.into_iter().map(|k| k.key_name).collect());

        let instances = self.instances_tagged(cluster).await;
        add(
            "instance",
            instances.into_iter().map(|i| i.instance_id).collect(),
        );

        found
    }

    /// How many resources are tagged `pgform:cluster=<cluster>` (see [`Moto::tagged`]).
    pub async fn count_tagged(&self, cluster: &str) -> usize {
        self.tagged(cluster).await.len()
    }

    /// Creates an untagged VPC and a subnet in it, like a user's pre-existing network.
    /// Returns (vpc id, subnet id).
    pub async fn make_subnet(&self, vpc_cidr: &str, subnet_cidr: &str) -> (String, String) {
        let ec2 = self.ec2().await;
        let vpc = ok(
            "CreateVpc",
            ec2.create_vpc().cidr_block(vpc_cidr).send().await,
        );
        let vpc_id = vpc
            .vpc
            .and_then(|v| v.vpc_id)
            .expect("CreateVpc returned no VPC id");
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(subnet_cidr)
            .send()
            .await;
        let subnet_id = ok("CreateSubnet", subnet)
            .subnet
            .and_then(|s| s.subnet_id)
            .expect("CreateSubnet returned no subnet id");
        (vpc_id, subnet_id)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("moto log: {}", self.log.display());
        }
    }
}

/// Filter `tag:pgform:cluster = <cluster>`.
pub fn tag_filter(cluster: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{CLUSTER_TAG}"))
        .values(cluster)
        .build()
}

/// Unwraps an SDK result, panicking with the whole error chain (code, message).
fn ok<T, E: std::error::Error>(call: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{call} failed: {}", DisplayErrorContext(&e)))
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener
        .local_addr()
        .expect("bound socket has no address")
        .port()
}

fn spawn(port: u16, fixture: &Path, log: &Path) -> Child {
    let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = out
        .try_clone()
        .expect("cannot duplicate the log file handle");
    let spawned = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_AMIS_PATH", fixture)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "moto_server is not on PATH: run `bash .ci/run`, or `pip install 'moto[server]'`"
        ),
        Err(e) => panic!("cannot start moto_server: {e}"),
    }
}

/// Polls until moto answers `GET /moto-api/` with 200, the child exits, or time runs out.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), NotReady> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status.to_string()));
        }
        if answers_http(addr) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(NotReady::TimedOut)
}

/// One plain HTTP/1.0 request; true on a 200 status line.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /moto-api/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut status_line = [0u8; 12]; // "HTTP/1.1 200"
    stream.read_exact(&mut status_line).is_ok() && status_line.ends_with(b" 200")
}

/// `args` with `--only infra` after `apply` or `plan`: the EC2 tests check the
/// infrastructure layer, and moto's instances are not hosts anyone can reach.
pub fn infra_only<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(args.len() + 2);
    let explicit = args.contains(&"--only");
    for a in args {
        out.push(*a);
        if !explicit && matches!(*a, "apply" | "plan") {
            out.extend(["--only", "infra"]);
        }
    }
    out
}
