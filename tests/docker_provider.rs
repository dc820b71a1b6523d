//! The Docker provider on its own, against a real daemon (no mocks): networks and sshd
//! containers made through the `Provider` trait, refreshed (by id, by labels, batched),
//! discovered, adopted after an interrupted create, deleted idempotently.
//!
//! Needs the testbed: `bash scripts/testbed.sh up` (daemon at `DOCKER_HOST`, default
//! unix:///run/pgform/docker.sock, and the image pgform-host:bookworm). Without it the
//! tests print why and pass, unless `CI` is set: then they fail.
//!
//! Each test has its own cluster name and its own /24 in 10.233.0.0/16, and a guard that
//! removes everything labelled with its cluster when it ends, failed or not.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use pgform::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, Kind, Value};
use pgform::provider::docker::{DockerProvider, Timeouts};
use pgform::provider::{Lookup, Observed, Provider, ProviderError};

/// Where `scripts/testbed.sh dockerd` puts its daemon; `DOCKER_HOST` overrides.
const DEFAULT_DOCKER_HOST: &str = "unix:///run/pgform/docker.sock";
const IMAGE: &str = "pgform-host:bookworm";
const ROLE_LABEL: &str = "pgform:role";
/// Two keys on two lines: the env variable carries them unchanged.
const KEYS: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPgformDockerProviderTestKeyOne a@test\n\
                    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPgformDockerProviderTestKeyTwo b@test";

fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// The provider, or `None` (test skipped) when the testbed is not there; under `CI` a
/// missing testbed fails the test instead.
async fn testbed() -> Option<DockerProvider> {
    let why = match DockerProvider::connect(&docker_host()).await {
        Ok(p) => match raw(&docker_host()).await.inspect_image(IMAGE).await {
            Ok(_) => return Some(p),
            Err(e) => format!("image {IMAGE} is missing ({e}); run `bash scripts/testbed.sh up`"),
        },
        Err(e) => e.to_string(),
    };
    if std::env::var_os("CI").is_some() {
        panic!("Docker testbed not ready: {why}");
    }
    eprintln!("skipping: Docker testbed not ready: {why}");
    None
}

/// A bollard client of its own, to look behind the provider's back.
async fn raw(host: &str) -> Docker {
    Docker::connect_with_host(host)
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker daemon answers")
}

/// A cluster name and a third octet in 10.233.0.0/16, both unique to this test.
fn unique() -> (String, u32) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    (format!("dpt{pid}x{n}"), (pid.wrapping_mul(7) + n) % 254 + 1)
}

/// Removes every container and network labelled with its cluster when dropped (the test
/// passed or panicked), with a client and runtime of its own.
struct Cleanup {
    host: String,
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let host = self.host.clone();
        let label = format!("{CLUSTER_TAG}={}", self.cluster);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let docker = raw(&host).await;
                let filters = HashMap::from([("label", vec![label])]);
                let containers = docker
                    .list_containers(Some(
                        ListContainersOptionsBuilder::new()
                            .all(true)
                            .filters(&filters)
                            .build(),
                    ))
                    .await
                    .unwrap_or_default();
                for c in containers.into_iter().filter_map(|c| c.id) {
                    let force = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = docker.remove_container(&c, Some(force)).await;
                }
                let networks = docker
                    .list_networks(Some(
                        ListNetworksOptionsBuilder::new().filters(&filters).build(),
                    ))
                    .await
                    .unwrap_or_default();
                for n in networks.into_iter().filter_map(|n| n.id) {
                    let _ = docker.remove_network(&n).await;
                }
            })
        });
        let _ = done.join();
    }
}

fn labels(cluster: &str, address: &Address, role: Option<&str>) -> Value {
    let mut m = BTreeMap::new();
    m.insert(CLUSTER_TAG.to_string(), Value::str(cluster));
    m.insert(ADDRESS_TAG.to_string(), Value::str(address.to_string()));
    if let Some(role) = role {
        m.insert(ROLE_LABEL.to_string(), Value::str(role));
    }
    Value::Map(m)
}

fn attrs(pairs: Vec<(&str, Value)>) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn network_attrs(cluster: &str, octet: u32) -> Attrs {
    let address = Address::new(Kind::DockerNetwork, "main");
    attrs(vec![
        ("name", Value::str(format!("{cluster}-net"))),
        ("subnet", Value::str(format!("10.233.{octet}.0/24"))),
        ("labels", labels(cluster, &address, None)),
    ])
}

fn ip(octet: u32, host: u32) -> String {
    format!("10.233.{octet}.{host}")
}

/// A container's attributes as the graph would give them, references resolved.
fn container_attrs(
    cluster: &str,
    address: &Address,
    network_id: &str,
    ipv4: &str,
    role: &str,
) -> Attrs {
    let host = match address.index {
        Some(i) => format!("{}-{i}", address.name),
        None => address.name.clone(),
    };
    attrs(vec![
        ("name", Value::str(format!("{cluster}-{host}"))),
        ("hostname", Value::str(&host)),
        ("image", Value::str(IMAGE)),
        ("network_id", Value::str(network_id)),
        ("ipv4_address", Value::str(ipv4)),
        ("ssh_authorized_keys", Value::str(KEYS)),
        ("labels", labels(cluster, address, Some(role))),
        ("running", Value::Bool(true)),
    ])
}

/// `attrs` as a made but stopped container shows them.
fn not_running(attrs: &Attrs) -> Attrs {
    let mut out = attrs.clone();
    out.insert("running".into(), Value::Bool(false));
    out
}

fn lookup(cluster: &str, address: &Address, id: Option<&str>) -> Lookup {
    Lookup {
        cluster: cluster.to_string(),
        address: address.clone(),
        id: id.map(str::to_string),
    }
}

/// Everything the graph sets comes back with the same shape, and the outputs are there.
fn assert_container(made: &Observed, desired: &Attrs, state: &str) {
    assert_eq!(
        &made.attrs, desired,
        "observed attrs equal the desired ones"
    );
    let ip = desired["ipv4_address"].clone();
    assert_eq!(made.outputs.get("private_ip"), Some(&ip));
    assert_eq!(made.outputs.get("public_ip"), Some(&ip));
    assert_eq!(made.outputs.get("state"), Some(&Value::str(state)));
}

async fn ssh_answers(ip: &str) -> bool {
    let addr: SocketAddr = format!("{ip}:22").parse().unwrap();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn lifecycle_converges_discovers_and_deletes_idempotently() {
    let Some(p) = testbed().await else { return };
    let (cluster, octet) = unique();
    let _cleanup = Cleanup {
        host: docker_host(),
        cluster: cluster.clone(),
    };
    let ids = Mutex::new(Vec::<String>::new());
    let on_id = |id: &str| ids.lock().unwrap().push(id.to_string());

    // The lookups the AWS provider answers make no sense here.
    assert!(matches!(
        p.lookup_subnet("subnet-1").await,
        Err(ProviderError::Invalid(_))
    ));
    assert!(matches!(
        p.lookup_image("136693071363", "debian-12-*").await,
        Err(ProviderError::Invalid(_))
    ));

    let net_addr = Address::new(Kind::DockerNetwork, "main");
    let net_attrs = network_attrs(&cluster, octet);
    let net = p
        .create(&net_addr, &net_attrs, &format!("{cluster}-net"), &on_id)
        .await
        .expect("create network");
    assert_eq!(net.attrs, net_attrs);
    assert_eq!(net.outputs.get("gateway"), Some(&Value::str(ip(octet, 1))));

    let primary = Address::new(Kind::DockerContainer, "primary");
    let replica = Address::indexed(Kind::DockerContainer, "replica", 0);
    let primary_attrs = container_attrs(&cluster, &primary, &net.id, &ip(octet, 11), "primary");
    let replica_attrs = container_attrs(&cluster, &replica, &net.id, &ip(octet, 12), "replica");
    let (made_primary, made_replica) = tokio::join!(
        p.create(&primary, &primary_attrs, "t-primary", &on_id),
        p.create(&replica, &replica_attrs, "t-replica", &on_id),
    );
    let made_primary = made_primary.expect("create primary");
    let made_replica = made_replica.expect("create replica");
    assert_container(&made_primary, &primary_attrs, "running");
    assert_container(&made_replica, &replica_attrs, "running");
    {
        let mut seen = ids.lock().unwrap().clone();
        seen.sort();
        let mut made = vec![
            net.id.clone(),
            made_primary.id.clone(),
            made_replica.id.clone(),
        ];
        made.sort();
        assert_eq!(seen, made, "on_id was told each id");
    }
    assert!(ssh_answers(&ip(octet, 11)).await, "primary's sshd answers");
    assert!(ssh_answers(&ip(octet, 12)).await, "replica's sshd answers");

    // One batched refresh: by id, by labels (id-less), and what does not exist.
    let gone_net = Address::new(Kind::DockerNetwork, "other");
    let gone_container = Address::indexed(Kind::DockerContainer, "replica", 7);
    let lookups = vec![
        lookup(&cluster, &net_addr, Some(&net.id)),
        lookup(&cluster, &primary, Some(&made_primary.id)),
        lookup(&cluster, &replica, None),
        lookup(&cluster, &gone_container, Some(&"0".repeat(64))),
        lookup(&cluster, &gone_net, None),
        lookup("another-cluster", &primary, None),
    ];
    let before = p.api_calls();
    let found = p.refresh(&lookups).await.expect("refresh");
    assert_eq!(
        p.api_calls() - before,
        5,
        "one list per kind, one inspect per existing container and one per image"
    );
    assert_eq!(
        found,
        vec![
            Some(net.clone()),
            Some(made_primary.clone()),
            Some(made_replica.clone()),
            None,
            None,
            None,
        ]
    );

    let discovered = p.discover(&cluster).await.expect("discover");
    let expected: BTreeMap<Address, Observed> = [
        (net_addr.clone(), net.clone()),
        (primary.clone(), made_primary.clone()),
        (replica.clone(), made_replica.clone()),
    ]
    .into_iter()
    .collect();
    assert_eq!(discovered, expected);
    assert!(
        p.discover(&format!("{cluster}-none"))
            .await
            .unwrap()
            .is_empty()
    );

    // Nothing can change in place: a no-op update is fine, a label change is refused.
    let same = p
        .update(&primary, &made_primary.id, &primary_attrs, &primary_attrs)
        .await
        .expect("no-op update");
    assert_eq!(same, made_primary);
    let mut relabelled = primary_attrs.clone();
    relabelled.insert("labels".into(), labels(&cluster, &primary, Some("leader")));
    match p
        .update(&primary, &made_primary.id, &primary_attrs, &relabelled)
        .await
    {
        Err(ProviderError::Invalid(m)) => assert!(m.contains("labels"), "{m}"),
        other => panic!("relabelling should be refused, got {other:?}"),
    }

    // A stopped container (the Docker host rebooted) is started in place: same id, its
    // sshd answers again, and it refreshes as desired.
    raw(&docker_host())
        .await
        .stop_container(
            &made_replica.id,
            Some(StopContainerOptionsBuilder::new().t(1).build()),
        )
        .await
        .expect("stop the replica behind the provider's back");
    let stopped = p
        .refresh(&[lookup(&cluster, &replica, Some(&made_replica.id))])
        .await
        .expect("refresh stopped")
        .pop()
        .flatten()
        .expect("a stopped container still exists");
    assert_eq!(
        stopped.attrs,
        not_running(&replica_attrs),
        "only `running` differs"
    );
    assert_eq!(stopped.outputs.get("state"), Some(&Value::str("exited")));
    assert!(!Kind::DockerContainer.forces_replacement("running"));
    let started = p
        .update(&replica, &made_replica.id, &stopped.attrs, &replica_attrs)
        .await
        .expect("start in place");
    assert_eq!(started.id, made_replica.id);
    assert_container(&started, &replica_attrs, "running");
    assert!(
        ssh_answers(&ip(octet, 12)).await,
        "restarted replica's sshd answers"
    );

    // A network with a running container attached is not removed; the error says why.
    let impatient = p.clone().with_timeouts(Timeouts {
        network_busy: Duration::from_millis(500),
        ..Timeouts::default()
    });
    match impatient.delete(&net_addr, &net.id).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(
                message.contains("still has containers attached"),
                "{message}"
            )
        }
        other => panic!("removing a busy network should fail, got {other:?}"),
    }

    // Containers first, then the network; then nothing is left and deleting again is Ok.
    p.delete(&primary, &made_primary.id)
        .await
        .expect("delete primary");
    p.delete(&replica, &made_replica.id)
        .await
        .expect("delete replica");
    p.delete(&net_addr, &net.id).await.expect("delete network");
    let after = p
        .refresh(&lookups[..3])
        .await
        .expect("refresh after delete");
    assert_eq!(after, vec![None, None, None]);
    let idless: Vec<Lookup> = lookups[..3]
        .iter()
        .map(|l| lookup(&cluster, &l.address, None))
        .collect();
    assert_eq!(p.refresh(&idless).await.unwrap(), vec![None, None, None]);
    p.delete(&primary, &made_primary.id)
        .await
        .expect("delete again");
    p.delete(&net_addr, &net.id)
        .await
        .expect("delete network again");
    assert!(p.discover(&cluster).await.unwrap().is_empty());
}

#[tokio::test]
async fn create_adopts_what_an_interrupted_create_left() {
    let Some(p) = testbed().await else { return };
    let (cluster, octet) = unique();
    let host = docker_host();
    let _cleanup = Cleanup {
        host: host.clone(),
        cluster: cluster.clone(),
    };
    let docker = raw(&host).await;

    // A network made twice is one network.
    let net_addr = Address::new(Kind::DockerNetwork, "main");
    let net_attrs = network_attrs(&cluster, octet);
    let net = p
        .create(&net_addr, &net_attrs, "t", &|_| {})
        .await
        .expect("create network");
    let again = p
        .create(&net_addr, &net_attrs, "t", &|_| {})
        .await
        .expect("create network again");
    assert_eq!(again, net);

    // A container made (labels and all) but never started, as if pgform died right
    // after the create call, before it recorded the id.
    let primary = Address::new(Kind::DockerContainer, "primary");
    let desired = container_attrs(&cluster, &primary, &net.id, &ip(octet, 21), "primary");
    let text = |k: &str| desired[k].as_str().unwrap().to_string();
    let docker_labels: HashMap<String, String> = desired["labels"]
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let body = ContainerCreateBody {
        hostname: Some(text("hostname")),
        image: Some(IMAGE.to_string()),
        env: Some(vec![format!("SSH_AUTHORIZED_KEYS={KEYS}")]),
        labels: Some(docker_labels),
        host_config: Some(HostConfig {
            network_mode: Some(net.id.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.id.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip(octet, 21)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    let orphan = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&text("name"))
                    .build(),
            ),
            body.clone(),
        )
        .await
        .expect("create the orphan")
        .id;

    // Refresh finds it by its labels, though not running: a created container exists.
    let found = p
        .refresh(&[lookup(&cluster, &primary, None)])
        .await
        .expect("refresh id-less");
    let found = found[0].as_ref().expect("found by labels");
    assert_eq!(found.id, orphan);
    assert_eq!(found.attrs, not_running(&desired));
    assert_eq!(found.outputs.get("state"), Some(&Value::str("created")));

    // The rerun's create adopts it (and starts it) rather than failing on the name.
    let told = Mutex::new(None);
    let adopted = p
        .create(&primary, &desired, "t-primary", &|id| {
            *told.lock().unwrap() = Some(id.to_string())
        })
        .await
        .expect("create adopts");
    assert_eq!(adopted.id, orphan);
    assert_eq!(told.lock().unwrap().as_deref(), Some(orphan.as_str()));
    assert_container(&adopted, &desired, "running");
    assert!(ssh_answers(&ip(octet, 21)).await);
    // Adopting a running one works as well.
    let twice = p
        .create(&primary, &desired, "t-primary", &|_| {})
        .await
        .expect("create adopts a running container");
    assert_eq!(twice, adopted);

    // A stopped container still exists: same attributes, state `exited`.
    docker
        .stop_container(
            &orphan,
            Some(StopContainerOptionsBuilder::new().t(2).build()),
        )
        .await
        .expect("stop");
    let stopped = p
        .refresh(&[lookup(&cluster, &primary, Some(&orphan))])
        .await
        .expect("refresh stopped")[0]
        .clone()
        .expect("a stopped container is not gone");
    assert_eq!(stopped.attrs, not_running(&desired));
    assert_eq!(stopped.outputs.get("state"), Some(&Value::str("exited")));
    assert_eq!(
        stopped.outputs.get("private_ip"),
        Some(&Value::str(ip(octet, 21)))
    );

    // A name taken by a container that is not this address's is an error, not adopted.
    let other = Address::indexed(Kind::DockerContainer, "replica", 3);
    let mut foreign = body;
    foreign.labels = Some(HashMap::from([(CLUSTER_TAG.to_string(), cluster.clone())]));
    foreign.networking_config = None;
    foreign.host_config = Some(HostConfig {
        network_mode: Some("none".into()),
        ..Default::default()
    });
    let foreign_name = format!("{cluster}-foreign");
    docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&foreign_name)
                    .build(),
            ),
            foreign,
        )
        .await
        .expect("create foreign");
    let mut clash = container_attrs(&cluster, &other, &net.id, &ip(octet, 23), "replica");
    clash.insert("name".into(), Value::str(&foreign_name));
    match p.create(&other, &clash, "t-clash", &|_| {}).await {
        Err(ProviderError::Api { code, message, .. }) => {
            assert_eq!(code, "409");
            assert!(message.contains("not labelled"), "{message}");
        }
        other => panic!("a foreign name clash should fail, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_daemon_is_a_transport_error_naming_the_fix() {
    match DockerProvider::connect("unix:///nonexistent/pgform-docker.sock").await {
        Err(ProviderError::Transport(m)) => {
            assert!(m.contains("DOCKER_HOST"), "{m}");
            assert!(m.contains("scripts/testbed.sh up"), "{m}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}
