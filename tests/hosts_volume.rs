//! The data volume on real hosts: a loop device of this machine stands in for the EBS
//! disk of an EC2 instance, passed into a container host with the
//! `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...` link that EC2's udev rules
//! make. The node carries the volume id as the hosts layer reads it from an instance's
//! outputs; the `data_volume` task finds the disk by it, formats it only when empty and
//! mounts it by UUID before PostgreSQL is installed.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::hosts::{self, Host, LoopDevice, Network, SshKey};
use pgform::hosts as cluster;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::State;
use pgform::tasks::{Recap, RunOptions, TaskEvent, TaskStatus};

const PASSWORD: &str = "volume test password";
const VOLUME_ID: &str = "vol-0123456789abcdef0";
const TASK: &str = "data disk mounted";
const MOUNT: &str = "/var/lib/postgresql/15";

fn spec(net: &Network, host: &Host, key: &SshKey, data_device: Option<&str>) -> ClusterSpec {
    let device = data_device
        .map(|d| format!("data_device = {d:?}\n"))
        .unwrap_or_default();
    let text = format!(
        "name = \"t\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n\
         [[hosts]]\naddress = \"{}\"\nrole = \"primary\"\n{device}",
        key.private,
        net.apt_mirror(),
        host.ip()
    );
    let mut spec = parse_str(&text, Path::new("t.toml"))
        .expect("valid spec")
        .spec;
    // TLS is on by default: the certificates live beside the test's key.
    spec.tls.dir = Some(key.dir().join("t.tls"));
    spec
}

/// The link EC2's udev rules make for an NVMe EBS disk (a container's /dev is made
/// afresh at each start, as a machine's is at boot).
fn link_as_ebs(host: &Host, device: &str) {
    host.ssh_ok(&format!(
        "mkdir -p /dev/disk/by-id && ln -sf {device} /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
        VOLUME_ID.replace('-', "")
    ));
}

async fn run(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    conns: &[pgform::remote::Connection],
    check: bool,
) -> (Recap, Vec<TaskEvent>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = RunOptions {
        check,
        events: Some(Arc::new(move |e: &TaskEvent| {
            eprintln!(
                "{:>8} {:?} {} {}{}",
                e.host,
                e.status,
                e.task,
                e.summary.clone().unwrap_or_default(),
                e.error.clone().unwrap_or_default()
            );
            sink.lock().unwrap().push(e.clone());
        })),
        ..Default::default()
    };
    let recap = cluster::configure(spec, nodes, conns, PASSWORD, &opts)
        .await
        .expect("playbook runs");
    let events = std::mem::take(&mut *seen.lock().unwrap());
    (recap, events)
}

fn changed(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e.status, TaskStatus::Changed | TaskStatus::WouldChange))
        .map(|e| format!("{}: {:?}", e.task, e.summary))
        .collect()
}

fn volume_event(events: &[TaskEvent]) -> &TaskEvent {
    events
        .iter()
        .find(|e| e.task == TASK)
        .unwrap_or_else(|| panic!("no `{TASK}` event: {events:#?}"))
}

fn uuid(host: &Host, device: &str) -> String {
    host.ssh_ok(&format!("blkid -p -s UUID -o value {device}"))
        .trim()
        .to_string()
}

fn psql(host: &Host, sql: &str) -> String {
    host.ssh_ok(&format!(
        "cd / && sudo -u postgres psql -XAtq -v ON_ERROR_STOP=1 -c {}",
        pgform::remote::shell::quote(sql)
    ))
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ebs_volume_is_formatted_once_mounted_by_uuid_and_keeps_its_data() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("vol");
    // Dropped after the host (declared before it): the container lets go of it first.
    let disk = LoopDevice::new(512);
    let host = Host::start_with_disk(&net, "pg0", 11, &key, &disk.path);
    link_as_ebs(&host, &disk.path);

    let spec = spec(&net, &host, &key, None);
    let mut nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    // What the hosts layer reads from an EC2 instance's outputs.
    nodes[0].data_disk = cluster::DataDisk {
        volume_id: VOLUME_ID.into(),
        device: "/dev/sdf".into(),
    };
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");

    // The plan shows the volume as a task like the others.
    let (_, events) = run(&spec, &nodes, &conns, true).await;
    let e = volume_event(&events);
    assert_eq!(e.status, TaskStatus::WouldChange, "{e:?}");
    let summary = e.summary.clone().unwrap_or_default();
    assert!(
        summary.contains(VOLUME_ID) && summary.contains("format") && summary.contains(MOUNT),
        "{summary}"
    );
    let probe = host.ssh(&format!("blkid -p {}", disk.path));
    assert_eq!(probe.status.code(), Some(2), "check mode formatted nothing");

    // First apply: formatted, mounted, PostgreSQL's cluster made on it.
    let (recap, events) = run(&spec, &nodes, &conns, false).await;
    assert!(recap.failures.is_empty(), "{:?}", recap.failures);
    assert_eq!(volume_event(&events).status, TaskStatus::Changed);
    let first_uuid = uuid(&host, &disk.path);
    assert!(!first_uuid.is_empty());
    assert_eq!(
        host.ssh_ok(&format!("blkid -p -s TYPE -o value {}", disk.path))
            .trim(),
        "ext4"
    );
    let source = host.ssh_ok("findmnt -n -o SOURCE -T /var/lib/postgresql/15/main");
    assert_eq!(
        source.trim(),
        disk.path,
        "the data directory is on the volume"
    );
    let fstab = host.ssh_ok("cat /etc/fstab");
    assert!(
        fstab
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    format!("UUID={first_uuid}").as_str(),
                    MOUNT,
                    "ext4",
                    "defaults,noatime,nofail",
                    "0",
                    "2"
                ]),
        "{fstab}"
    );
    psql(
        &host,
        "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('written before');",
    );

    // A rerun changes nothing and formats nothing.
    let (recap, events) = run(&spec, &nodes, &conns, false).await;
    assert!(recap.failures.is_empty(), "{:?}", recap.failures);
    assert!(changed(&events).is_empty(), "{:?}", changed(&events));
    assert_eq!(volume_event(&events).status, TaskStatus::Ok);
    assert_eq!(uuid(&host, &disk.path), first_uuid, "not reformatted");
    assert_eq!(psql(&host, "SELECT v FROM kept"), "written before");

    // A restart of the host: no init reads fstab in a container, so nothing is mounted
    // and PostgreSQL is down; the next apply mounts the volume before PostgreSQL starts.
    for c in conns {
        c.close().await;
    }
    host.stop();
    host.start_again();
    link_as_ebs(&host, &disk.path);
    assert!(
        host.ssh_ok(&format!("findmnt -n {MOUNT} || true"))
            .trim()
            .is_empty()
    );
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    let (_, events) = run(&spec, &nodes, &conns, true).await;
    let e = volume_event(&events);
    assert_eq!(e.status, TaskStatus::WouldChange);
    let summary = e.summary.clone().unwrap_or_default();
    assert!(
        summary.contains("mount") && !summary.contains("format"),
        "{summary}"
    );
    let (recap, events) = run(&spec, &nodes, &conns, false).await;
    assert!(recap.failures.is_empty(), "{:?}", recap.failures);
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e.status == TaskStatus::Changed)
        .map(|e| e.task.as_str())
        .collect();
    assert_eq!(order.first(), Some(&TASK), "mounted first: {order:?}");
    assert_eq!(uuid(&host, &disk.path), first_uuid, "not reformatted");
    assert_eq!(
        host.ssh_ok("findmnt -n -o SOURCE -T /var/lib/postgresql/15/main")
            .trim(),
        disk.path
    );
    assert_eq!(psql(&host, "SELECT v FROM kept"), "written before");
    let (_, events) = run(&spec, &nodes, &conns, false).await;
    assert!(changed(&events).is_empty(), "{:?}", changed(&events));
    for c in conns {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_holding_another_filesystem_is_refused_and_left_untouched() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("volx");
    let disk = LoopDevice::new(64);
    // Someone's data: an ext2 filesystem with a file on it.
    let src = tempfile::tempdir().expect("temp dir");
    std::fs::write(src.path().join("precious.txt"), "keep me\n").unwrap();
    let out = std::process::Command::new("mkfs.ext2")
        .args(["-q", "-d"])
        .arg(src.path())
        .arg(&disk.path)
        .output()
        .expect("mkfs.ext2 runs (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = Host::start_with_disk(&net, "pg0", 11, &key, &disk.path);
    let before = uuid(&host, &disk.path);

    // The listed-hosts form of the same task: `[[hosts]] data_device`.
    let spec = spec(&net, &host, &key, Some(&disk.path));
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    assert_eq!(nodes[0].data_disk.device, disk.path);
    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    for check in [true, false] {
        let (recap, events) = run(&spec, &nodes, &conns, check).await;
        let e = volume_event(&events);
        assert_eq!(e.status, TaskStatus::Failed, "{e:?}");
        let error = e.error.clone().unwrap_or_default();
        assert!(
            error.contains(&disk.path)
                && error.contains("ext2 filesystem")
                && error.contains("Fix:"),
            "{error}"
        );
        assert!(!recap.failures.is_empty());
    }
    assert_eq!(uuid(&host, &disk.path), before, "not reformatted");
    assert!(
        !host
            .ssh("dpkg -s postgresql-15 >/dev/null 2>&1")
            .status
            .success(),
        "nothing after the refused volume ran"
    );
    assert!(
        host.ssh_ok("cat /etc/fstab")
            .lines()
            .all(|l| !l.contains(MOUNT))
    );
    for c in conns {
        c.close().await;
    }
    drop(host);
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /precious.txt", &disk.path])
        .output()
        .expect("debugfs runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "keep me\n");
}

/// The Ansible export does the same: the disk formatted and mounted by UUID before the
/// install, a rerun changes nothing, and pgform's own check then finds nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn exported_playbook_mounts_the_data_disk_the_same_way() {
    let Some(bin) = common::tools::require("ansible-playbook", "pip install ansible") else {
        return;
    };
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("volans");
    let disk = LoopDevice::new(512);
    let host = Host::start_with_disk(&net, "pg0", 11, &key, &disk.path);
    let spec = spec(&net, &host, &key, Some(&disk.path));
    let nodes = cluster::inventory(&spec, &State::new("t")).expect("inventory");
    cluster::prepare_tls(&spec, &nodes).expect("certificates");
    let files = pgform::export::ansible::export(
        &spec,
        &pgform::export::ansible::Inventory::Hosts(nodes.clone()),
    )
    .expect("export");
    let dir = tempfile::tempdir().unwrap();
    pgform::export::write_files(dir.path(), &files).expect("write");
    let run = || {
        let out = std::process::Command::new(&bin)
            .current_dir(dir.path())
            .args(["-i", "inventory.ini", "site.yml", "--private-key"])
            .arg(&key.private)
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env(pgform::export::ansible::PASSWORD_ENV, PASSWORD)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ansible-playbook");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ansible-playbook failed:\n{all}");
        all
    };
    run();
    let first_uuid = uuid(&host, &disk.path);
    assert_eq!(
        host.ssh_ok("findmnt -n -o SOURCE -T /var/lib/postgresql/15/main")
            .trim(),
        disk.path
    );
    let second = run();
    let recap = &second[second.find("PLAY RECAP").unwrap_or(0)..];
    assert!(
        recap.contains("changed=0"),
        "a rerun changed something:\n{recap}"
    );
    assert_eq!(uuid(&host, &disk.path), first_uuid, "not reformatted");

    let known = key.dir().join("known_hosts");
    let conns = cluster::connect(&spec, &nodes, &known).await.expect("ssh");
    let (recap, events) = run_check(&spec, &nodes, &conns).await;
    assert!(recap.failures.is_empty(), "{:?}", recap.failures);
    assert!(changed(&events).is_empty(), "{:?}", changed(&events));
    for c in conns {
        c.close().await;
    }
}

async fn run_check(
    spec: &ClusterSpec,
    nodes: &[cluster::Node],
    conns: &[pgform::remote::Connection],
) -> (Recap, Vec<TaskEvent>) {
    run(spec, nodes, conns, true).await
}

/// The HA mode on data disks, through the binary: each of three hosts has its own empty
/// disk (`data_device`); Patroni's data directory lands on it, on every member. A host
/// that restarts comes back without its mount (a container, like a machine without the
/// mount in fstab, mounts nothing by itself) and without Patroni (no init): the next
/// apply mounts the disk first, then starts etcd and Patroni over the kept data, and a
/// rerun changes nothing.
#[test]
fn patroni_keeps_its_data_on_each_hosts_data_disk() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("volha");
    // Dropped after the hosts (declared before them): the containers let go first.
    let disks: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(512)).collect();
    let hosts: Vec<Host> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let n = i as u8;
            Host::start_with_disk(&net, &format!("volha{n}"), 11 + n, &key, &d.path)
        })
        .collect();
    let work = common::cli::Work::new("pgform-volha", vec![]);
    let text = format!(
        "name = \"volha\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n{}{}",
        key.private,
        net.apt_mirror(),
        common::cli::ha_table(&work),
        common::cli::hosts_list(hosts.iter().map(Host::ip), |i| {
            format!("data_device = {:?}\n", disks[i].path)
        }),
    );
    work.write("c.toml", &text);
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0)
        .stdout_has("every replica streams");
    let on_disk = |h: &Host, d: &LoopDevice| {
        let source = h.ssh_ok(&format!("findmnt -n -o SOURCE -T {MOUNT}/main"));
        assert_eq!(
            source.trim(),
            d.path,
            "{}: the data directory's disk",
            h.name
        );
        assert_eq!(
            h.ssh_ok(&format!("stat -c %U {MOUNT}/main/PG_VERSION"))
                .trim(),
            "postgres"
        );
    };
    for (h, d) in hosts.iter().zip(&disks) {
        on_disk(h, d);
    }
    // Patroni picks the leader: the node named primary need not be it.
    let status = work.pgform(&["-f", "c.toml", "status", "--json"]);
    status.expect(0);
    let view: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let host_of = |node: &str| match node {
        "primary" => 0,
        r => r["replica-".len()..].parse::<usize>().expect("a replica") + 1,
    };
    let leader = host_of(view["leader"].as_str().expect("a leader"));
    psql(
        &hosts[leader],
        "CREATE TABLE kept (v int); INSERT INTO kept SELECT generate_series(1, 500);",
    );

    // A replica's host restarts: no mount, no Patroni until pgform's next apply.
    let (replica, disk) = (&hosts[(leader + 1) % 3], &disks[(leader + 1) % 3]);
    replica.ssh_ok(&format!("touch {MOUNT}/written-before-the-restart"));
    replica.stop();
    replica.start_again();
    replica.ssh_ok(&format!("! mountpoint -q {MOUNT}"));
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0)
        .stdout_has("every replica streams");
    on_disk(replica, disk);
    replica.ssh_ok(&format!("test -e {MOUNT}/written-before-the-restart"));
    assert_eq!(psql(replica, "SELECT count(*) FROM kept;"), "500");
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0)
        .recap_all_zero("changed");
}
