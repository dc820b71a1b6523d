//! Hosts on a private network reached through bastions: the real `pgform` binary, and
//! database hosts whose sshd accepts root only from the bastion's address
//! (`Host::start_behind`), so that a run that does not go through the bastion fails.
//!
//! - `aws_private_subnet_through_bastion`: provider aws against moto (`network.public =
//!   false`, `ssh.connect_via = "private"`), containers at moto's private addresses, a
//!   bastion with its own key (`ssh.jump_private_key_file`) in front: apply converges,
//!   replicas stream, a rerun changes nothing, `status` works; without the bastion, with
//!   a wrong bastion key, with an unknown bastion key under `strict`, or with a host
//!   stopped, `plan` fails and names the bastion or the host.
//! - `listed_hosts_through_two_bastions`: provider hosts, two hops in a chain with the
//!   hosts' own key: the plan reaches every host.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`) and moto_server on PATH.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::Moto;
use common::cli::{PASSWORD, Work};
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

/// A cluster name unique to this test process and call.
fn unique_cluster() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("cli-bastion-{}-{n}", std::process::id())
}

/// True when `file` (a known-hosts file) has a key for `address`.
fn knows(file: &std::path::Path, address: Ipv4Addr) -> bool {
    Command::new("ssh-keygen")
        .arg("-F")
        .arg(address.to_string())
        .arg("-f")
        .arg(file)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_hosts_through_two_bastions() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("hops");
    let outer = Host::start(&net, "outer", 250, &key);
    let inner = Host::start_behind(&net, "inner", 251, &key, &outer);
    let db = [
        Host::start_behind(&net, "pg-primary", 11, &key, &inner),
        Host::start_behind(&net, "pg-replica", 12, &key, &inner),
    ];
    let cluster = unique_cluster();
    let work = Work::new("pgform-cli-bastion", Vec::new());
    let known = work.path("hosts.known");
    let spec = |jump: &str| {
        format!(
            "name = \"{cluster}\"\nprovider = \"hosts\"\n\
             [ssh]\nuser = \"root\"\nprivate_key_file = \"{}\"\njump_host = \"{jump}\"\n\
             known_hosts_file = \"{}\"\n\
             [postgres]\nreplication_user = \"replicator\"\n\
             [[hosts]]\naddress = \"{}\"\nrole = \"primary\"\n\
             [[hosts]]\naddress = \"{}\"\nrole = \"replica\"\n",
            key.private.display(),
            known.display(),
            db[0].ip(),
            db[1].ip(),
        )
    };
    // Both hops, with the hosts' key and user: every host is checked (PostgreSQL is not
    // installed yet, so there are changes).
    work.write(
        "cluster.toml",
        &spec(&format!("{},root@{}:22", outer.ip(), inner.ip())),
    );
    let plan = work.pgform(&["plan", "--detailed-exitcode"]);
    plan.expect(2).stdout_lacks("Not checked");
    for name in ["primary:", "replica-0:"] {
        plan.stdout_has(name);
    }
    for ip in [outer.ip(), inner.ip(), db[0].ip(), db[1].ip()] {
        assert!(knows(&known, ip), "{ip} is not in {}", known.display());
    }

    // The Ansible export carries the same hops (a ProxyCommand with the key and the
    // known-hosts policy): ssh with its common args reaches a host, as Ansible would.
    work.pgform(&["export", "ansible", "ansible"]).expect(0);
    let vars = work.read("ansible/group_vars/all/main.yml");
    let args: serde_norway::Value = serde_norway::from_str::<serde_norway::Value>(&vars)
        .expect("group_vars are YAML")["ansible_ssh_common_args"]
        .clone();
    let args = args
        .as_str()
        .unwrap_or_else(|| panic!("no ansible_ssh_common_args in\n{vars}"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec ssh {args} -o BatchMode=yes -o IdentitiesOnly=yes -i \"$1\" \
             -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no root@\"$2\" hostname"
        ))
        .args([
            "sh",
            &key.private.display().to_string(),
            &db[1].ip().to_string(),
        ])
        .output()
        .expect("run ssh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pg-replica",
        "ssh {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The inner bastion alone is not reachable from here: the error names it.
    work.write("cluster.toml", &spec(&format!("root@{}", inner.ip())));
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(1)
        .stdout_has("Not checked: primary, replica-0")
        .stdout_has(&format!("cannot reach the jump host root@{}", inner.ip()))
        .stderr_has("could not check the host(s) primary, replica-0");
}

/// Provider aws on a private subnet (the Docker network's /24, so that containers can
/// stand at moto's addresses), SSH as root to the private addresses through `jump`.
fn aws_spec(cluster: &str, net: &Network, key: &SshKey, ssh_extra: &str) -> String {
    let subnet = &net.subnet;
    let octets: Vec<&str> = subnet.split('.').collect();
    let vpc = format!("{}.{}.0.0/16", octets[0], octets[1]);
    format!(
        r#"name = "{cluster}"
provider = "aws"
region = "{region}"

[network]
vpc_cidr = "{vpc}"
subnet_cidr = "{subnet}"
public = false

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"
user = "root"
connect_via = "private"
{ssh_extra}

[access]
admin_cidrs = ["{subnet}"]
client_cidrs = ["{subnet}"]

[packages]
apt_mirror = "deb [trusted=yes] {mirror} ./"

[postgres]
replicas = 2
shared_buffers = "128MB"
replication_user = "replicator"
"#,
        region = common::REGION,
        public = key.private.with_extension("pub").display(),
        private = key.private.display(),
        mirror = net.apt_mirror(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_private_subnet_through_bastion() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let bastion_key = SshKey::generate();
    let net = Network::create("bastion");
    let bastion = Host::start(&net, "bastion", 250, &bastion_key);
    let moto = Moto::start();
    let work = Work::new("pgform-cli-bastion", moto.env());
    let cluster = unique_cluster();
    let jump = format!(
        "jump_host = \"root@{}\"\njump_private_key_file = \"{}\"",
        bastion.ip(),
        bastion_key.private.display()
    );
    work.write("cluster.toml", &aws_spec(&cluster, &net, &key, &jump));

    // moto's instances, then a container at each private address that accepts SSH from
    // the bastion only.
    work.pgform(&["apply", "--only", "infra", "--auto-approve"])
        .expect(0);
    let ips: Vec<Ipv4Addr> = work
        .private_ips()
        .iter()
        .map(|ip| ip.parse().expect("an IPv4 address"))
        .collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    let containers: Vec<Host> = ["pg-primary", "pg-replica-0", "pg-replica-1"]
        .iter()
        .zip(&ips)
        .map(|(name, ip)| Host::start_behind(&net, name, ip.octets()[3], &key, &bastion))
        .collect();

    // Without the bastion the hosts refuse SSH: the plan names all three, and fails.
    let direct = aws_spec(&cluster, &net, &key, "");
    work.write("direct.toml", &direct);
    let args = ["-f", "direct.toml", "--state", "cluster.pgstate.json"];
    work.pgform(&[&args[..], &["plan", "--detailed-exitcode"]].concat())
        .expect(1)
        .stdout_has("Not checked: primary, replica-0, replica-1")
        .stderr_has("could not check the host(s) primary, replica-0, replica-1");

    // The hosts' key is not the bastion's: the error names the bastion, not the hosts.
    let wrong = format!("jump_host = \"root@{}\"", bastion.ip());
    work.write("wrong.toml", &aws_spec(&cluster, &net, &key, &wrong));
    let args = ["-f", "wrong.toml", "--state", "cluster.pgstate.json"];
    work.pgform(&[&args[..], &["plan", "--detailed-exitcode"]].concat())
        .expect(1)
        .stdout_has(&format!(
            "cannot reach the jump host root@{} on the way to primary",
            bastion.ip()
        ))
        .stdout_has("Permission denied (publickey");
    work.pgform(&[&args[..], &["status"]].concat())
        .expect(1)
        .stderr_has(&format!("cannot reach the jump host root@{}", bastion.ip()));

    // Strict host keys and a known-hosts file without the bastion: refused, at the hop.
    let strict = format!(
        "{jump}\nknown_hosts = \"strict\"\nknown_hosts_file = \"{}\"",
        work.path("empty.known_hosts").display()
    );
    work.write("empty.known_hosts", "");
    work.write("strict.toml", &aws_spec(&cluster, &net, &key, &strict));
    let args = ["-f", "strict.toml", "--state", "cluster.pgstate.json"];
    work.pgform(&[&args[..], &["plan", "--detailed-exitcode"]].concat())
        .expect(1)
        .stdout_has(&format!("cannot reach the jump host root@{}", bastion.ip()))
        .stdout_has("Host key verification failed");

    // Through the bastion: configured, streaming, converged.
    work.pgform(&["apply", "--only", "hosts", "--auto-approve"])
        .expect(0)
        .stdout_has("Verified")
        .recap_all_zero("failed");
    let status = work.pgform(&["status", "--json"]);
    status.expect(0);
    let rows: Vec<Value> = serde_json::from_str(&status.stdout).expect("status --json");
    let states: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap_or("-"),
                r["state"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("primary", "-"),
            ("replica", "streaming"),
            ("replica", "streaming")
        ],
        "{status}"
    );
    work.pgform(&["apply", "--auto-approve"])
        .expect(0)
        .stdout_has("No changes")
        .recap_all_zero("changed");
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(0)
        .stdout_has("No changes. The hosts match the spec.");
    // The bastion's key is kept with the hosts' in the cluster's known-hosts file.
    let known = work.path(&format!("{cluster}.known_hosts"));
    for ip in std::iter::once(bastion.ip()).chain(ips.iter().copied()) {
        assert!(knows(&known, ip), "{ip} is not in {}", known.display());
    }
    // And strict now accepts it.
    let strict = format!("{jump}\nknown_hosts = \"strict\"");
    work.write("strict.toml", &aws_spec(&cluster, &net, &key, &strict));
    work.pgform(&[
        "-f",
        "strict.toml",
        "--state",
        "cluster.pgstate.json",
        "plan",
        "--detailed-exitcode",
    ])
    .expect(0);

    // A host that is down: the plan fails naming it, in text and in JSON.
    containers[2].stop();
    work.pgform(&["plan", "--detailed-exitcode"])
        .expect(1)
        .stdout_has("Not checked: replica-1")
        .stdout_lacks("No changes. The hosts match the spec.")
        .stderr_has("could not check the host(s) replica-1");
    let json = work.pgform(&["plan", "--json", "--detailed-exitcode"]);
    json.expect(1);
    let doc: Value = serde_json::from_str(&json.stdout).expect("plan --json");
    assert_eq!(doc["hosts"]["checked"], Value::Bool(false), "{json}");
    assert_eq!(
        doc["hosts"]["not_checked"],
        serde_json::json!(["replica-1"]),
        "{json}"
    );

    work.assert_no_password_anywhere();
    assert!(!work.read("cluster.pgstate.json").contains(PASSWORD));
    drop(containers);
}
