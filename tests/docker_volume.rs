//! The local Docker provider keeps each node's PostgreSQL data on a named volume of its
//! own: made with the cluster's labels and shown in the plan, mounted at the data
//! directory's parent, kept when the container is replaced (the row written before is
//! still there), removed by destroy. The real `pgform` binary against the testbed's
//! daemon; each test has its own cluster name and /24 in 10.236.0.0/16.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::cli::Work;
use common::hosts::{self, SshKey, docker_try, ssh_root};
use serde_json::Value;

/// Removes the cluster's containers, volumes and networks and the extra image tag when
/// the test ends, whatever happened (after a destroy only the tag is left).
struct Cleanup {
    cluster: String,
    tag: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={}={}", common::CLUSTER_TAG, self.cluster);
        for list in [
            vec!["ps", "-aq", "--filter", &filter],
            vec!["volume", "ls", "-q", "--filter", &filter],
            vec!["network", "ls", "-q", "--filter", &filter],
        ] {
            let ids = docker_try(&list).unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = match list[0] {
                    "ps" => docker_try(&["rm", "-f", "-v", id]),
                    other => docker_try(&[other, "rm", id]),
                };
            }
        }
        let _ = docker_try(&["rmi", &self.tag]);
    }
}

fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

fn spec(cluster: &str, third: u8, key: &SshKey, image: &str) -> String {
    format!(
        r#"name = "{cluster}"
provider = "docker"

[docker]
network_cidr = "10.236.{third}.0/24"
image = "{image}"

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"

[packages]
apt_mirror = "deb [trusted=yes] http://10.236.{third}.1:{port} ./"

[postgres]
version = 15
replicas = 1
replication_user = "replicator"
"#,
        public = key.private.with_extension("pub").display(),
        private = key.private.display(),
        port = hosts::apt_port(),
    )
}

fn psql(key: &SshKey, ip: &str, sql: &str) -> String {
    let out = ssh_root(
        key,
        ip,
        &format!("cd / && sudo -u postgres psql -XAtq -v ON_ERROR_STOP=1 -c \"{sql}\""),
    );
    assert!(
        out.status.success(),
        "psql on {ip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn node_data_lives_on_a_labelled_volume_that_outlives_its_container() {
    if !hosts::require_testbed() {
        return;
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let cluster = format!("vol-{pid}-{n}");
    let third = ((pid.wrapping_mul(7) + n * 31) % 250 + 2) as u8;
    let tag = format!("pgform-host:volume-test-{pid}-{n}");
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
        tag: tag.clone(),
    };
    let key = SshKey::generate();
    let work = Work::new("pgform-docker-volume", Vec::new());
    work.write("cluster.toml", &spec(&cluster, third, &key, hosts::IMAGE));

    // The plan shows the volumes as resources of their own.
    work.pgform(&["plan"])
        .expect(0)
        .stdout_has("docker_volume.primary")
        .stdout_has("docker_volume.replica[0]");
    work.pgform(&["apply", "--auto-approve"]).expect(0);

    let filter = format!("label={}={cluster}", common::CLUSTER_TAG);
    let mut volumes: Vec<String> = docker(&["volume", "ls", "-q", "--filter", &filter])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    volumes.sort();
    assert_eq!(
        volumes,
        [
            format!("{cluster}-primary-conf"),
            format!("{cluster}-primary-data"),
            format!("{cluster}-replica-0-conf"),
            format!("{cluster}-replica-0-data")
        ]
    );
    let address = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"pgform:address\"}} {{index .Labels \"pgform:role\"}}",
        &volumes[1],
    ]);
    assert_eq!(address, "docker_volume.primary primary");
    let primary = format!("{cluster}-primary");
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}};{{end}}",
        &primary,
    ]);
    let mut mounts: Vec<&str> = mounts.split(';').filter(|m| !m.is_empty()).collect();
    mounts.sort();
    assert_eq!(
        mounts,
        [
            format!("volume {cluster}-primary-conf /etc/postgresql/15"),
            format!("volume {cluster}-primary-data /var/lib/postgresql/15")
        ]
    );

    let out = work.pgform(&["output", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("output --json");
    let ip = v["primary"]["private_ip"]
        .as_str()
        .expect("primary address")
        .to_string();
    psql(
        &key,
        &ip,
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the replacement')",
    );
    let old_id = docker(&["inspect", "--format", "{{.Id}}", &primary]);

    // Another image (the same one under another tag) replaces the containers; their
    // volumes stay.
    docker(&["tag", hosts::IMAGE, &tag]);
    work.write("cluster.toml", &spec(&cluster, third, &key, &tag));
    let plan = work.pgform(&["plan"]);
    plan.expect(0).stdout_has("docker_container.primary");
    assert!(
        !plan
            .stdout
            .lines()
            .any(|l| l.contains("docker_volume.") && !l.trim_start().starts_with('#')),
        "volumes are not touched{plan}"
    );
    work.pgform(&["apply", "--auto-approve"]).expect(0);
    let new_id = docker(&["inspect", "--format", "{{.Id}}", &primary]);
    assert_ne!(old_id, new_id, "the container was replaced");
    assert_eq!(
        psql(&key, &ip, "SELECT v FROM kept"),
        "before the replacement"
    );
    work.pgform(&["plan", "--detailed-exitcode"]).expect(0);

    work.pgform(&["destroy", "--auto-approve"]).expect(0);
    assert_eq!(
        docker(&["volume", "ls", "-q", "--filter", &filter]),
        "",
        "destroy removes the volumes"
    );
}
