//! pgform on hosts that boot systemd, as cloud images do (every other host test runs
//! on hosts without an init system). Through the binary, on three such hosts:
//! - the plain mode: PostgreSQL runs as Debian's unit, enabled for boot; a replica's
//!   host off shows as `down` in `status`, the others as usual; after a power cut of
//!   every host, systemd brings the cluster back and the plan is converged;
//! - the same cluster given `ha.mode = "patroni"`: etcd and Patroni run as their
//!   units, enabled; Debian's unit for the cluster is no longer started, not even at
//!   boot (systemd's generator reads start.conf); after a power cut of every host the
//!   cluster comes back with its data and the plan is converged (nothing restarted);
//! - the leader's host cut off: `status` names it unreachable and shows the others'
//!   view, a new leader is elected, and the old one rejoins when its host is back;
//! - `reinit`: refusals that change nothing, then the old leader rebuilt from the new
//!   one as a replica, streaming with every row.
//!
//! Needs the host testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`); skipped without it, failed under `CI`.

mod common;

use std::time::{Duration, Instant};

use common::cli::{Run, Work};
use common::hosts::{self, Host, Network, SshKey};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn spec(work: &Work, net: &Network, hosts: &[Host], key: &SshKey, mode: &str) -> String {
    // The [ha] table is read in the plain mode too: only its mode matters there.
    let ha = common::cli::ha_table(work).replace("\"patroni\"", &format!("{mode:?}"));
    format!(
        "name = \"sysd\"\nprovider = \"hosts\"\n[ssh]\nprivate_key_file = {:?}\n\
         [packages]\napt_mirror = \"deb [trusted=yes] {} ./\"\n{ha}{}",
        key.private,
        net.apt_mirror(),
        common::cli::hosts_list(hosts.iter().map(Host::ip), |_| String::new()),
    )
}

/// One row from `sql` run by psql as postgres on `host`.
fn psql(host: &Host, sql: &str) -> String {
    host.ssh_ok(&format!(
        "cd / && runuser -u postgres -- psql -XAtc {}",
        shell_quote(sql)
    ))
    .trim()
    .to_string()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Cuts the power of every host at once, then starts them all again.
fn power_cycle(hosts: &[Host]) {
    for h in hosts {
        h.kill();
    }
    std::thread::scope(|s| {
        for h in hosts {
            s.spawn(move || h.start_again());
        }
    });
}

/// `pgform status --json` (exit 0, or 1 when a node is down or no leader runs).
fn status(work: &Work) -> (Run, Value) {
    let run = work.pgform(&["-f", "c.toml", "status", "--json"]);
    assert!(matches!(run.code, Some(0 | 1)), "{run}");
    let v = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    (run, v)
}

/// Waits until Patroni's view has a leader and `members` members, all running or
/// streaming on the leader's timeline within Patroni's default `maximum_lag_on_failover`
/// (1 MiB: a replica further behind may not take over), every node reachable; returns
/// the view.
fn settled(work: &Work, members: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (run, v) = status(work);
        let list = v["members"].as_array().cloned().unwrap_or_default();
        let leader_tl = list
            .iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| m["timeline"].as_u64());
        let ok = run.code == Some(0)
            && list.len() == members
            && list.iter().all(|m| {
                matches!(m["state"].as_str(), Some("running" | "streaming"))
                    && m["timeline"].as_u64() == leader_tl
                    && m["lag"].as_u64().unwrap_or(0) < 1 << 20
            });
        if ok {
            return v;
        }
        assert!(Instant::now() < deadline, "the cluster settles: {v}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The systemd unit checks every host of `hosts` passes (`systemctl` words).
fn units(hosts: &[Host], check: &str) {
    for h in hosts {
        let out = h.ssh(check);
        assert!(
            out.status.success(),
            "{}: `{check}` failed:\n{}{}",
            h.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn plain_then_patroni_on_systemd_hosts() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("sysd");
    let hosts: Vec<Host> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..3u8)
            .map(|i| {
                let (net, key) = (&net, &key);
                s.spawn(move || Host::start_systemd(net, &format!("sysd{i}"), 11 + i, key))
            })
            .collect();
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let work = Work::new("pgform-sysd", vec![]);

    // Plain: Debian's unit runs the cluster and is enabled for boot.
    work.write("c.toml", &spec(&work, &net, &hosts, &key, "plain"));
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0);
    units(
        &hosts,
        "systemctl is-active --quiet postgresql@15-main && systemctl is-enabled --quiet postgresql",
    );
    psql(
        &hosts[0],
        "CREATE TABLE kept (v int PRIMARY KEY); INSERT INTO kept SELECT generate_series(1, 1000);",
    );
    // A replica's host off: status shows it down, naming why, and the others as usual.
    hosts[2].kill();
    let (run, rows) = status(&work);
    assert_eq!(run.code, Some(1), "{run}");
    let roles: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["primary", "replica", "down"], "{rows}");
    assert!(
        rows[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect to replica-1")),
        "{rows}"
    );
    hosts[2].start_again();

    // Every host loses power and boots: systemd starts the cluster again; converged.
    power_cycle(&hosts);
    work.pgform(&["-f", "c.toml", "plan", "--detailed-exitcode"])
        .expect(0);
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0)
        .recap_all_zero("changed")
        .stdout_has("every replica streams");

    // Patroni: etcd and Patroni are units, enabled; Debian's cluster unit is stopped
    // and Patroni's postmaster runs in Patroni's unit.
    work.write("c.toml", &spec(&work, &net, &hosts, &key, "patroni"));
    work.pgform(&["-f", "c.toml", "apply", "--auto-approve"])
        .expect(0);
    let ha_units = "systemctl is-active --quiet etcd patroni \
        && systemctl is-enabled --quiet etcd && systemctl is-enabled --quiet patroni \
        && ! systemctl is-active --quiet postgresql@15-main \
        && grep -q patroni.service /proc/$(head -n 1 /var/lib/postgresql/15/main/postmaster.pid)/cgroup";
    units(&hosts, ha_units);
    let view = settled(&work, 3);
    assert_eq!(view["leader"], "primary", "{view}");

    // Every host loses power and boots: the units bring the cluster back, with its
    // data; nothing needs restarting (the plan is converged) and Debian's unit stayed
    // down (start.conf `disabled`, read by systemd's generator at boot).
    power_cycle(&hosts);
    let view = settled(&work, 3);
    work.pgform(&["-f", "c.toml", "plan", "--detailed-exitcode"])
        .expect(0);
    units(&hosts, ha_units);
    let leader = view["leader"].as_str().expect("a leader").to_string();
    let index = |name: &str| match name {
        "primary" => 0,
        r => r["replica-".len()..].parse::<usize>().unwrap() + 1,
    };
    assert_eq!(
        psql(&hosts[index(&leader)], "SELECT count(*) FROM kept;"),
        "1000"
    );

    // The leader's host loses power: status shows the others' view and names the
    // lost host; a new leader takes writes.
    let old = &hosts[index(&leader)];
    old.kill();
    let deadline = Instant::now() + WAIT;
    let (run, view) = loop {
        let (run, v) = status(&work);
        if v["leader"].as_str().is_some_and(|l| l != leader) {
            break (run, v);
        }
        assert!(Instant::now() < deadline, "a new leader: {v}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(run.code, Some(1), "a node is down: {run}");
    assert_eq!(view["unreachable"][0]["name"], leader.as_str(), "{view}");
    let new = view["leader"].as_str().unwrap().to_string();
    psql(&hosts[index(&new)], "INSERT INTO kept VALUES (1001);");
    let text = work.pgform(&["-f", "c.toml", "status"]);
    text.expect(1)
        .stdout_has(&format!("Leader: {new}"))
        .stdout_has("Not reachable over SSH")
        .stdout_has(&format!("  {leader} ("));

    // The host comes back: Patroni rejoins it as a replica of the new leader (rewound
    // when it diverged), with the row written while it was away; converged.
    old.start_again();
    let view = settled(&work, 3);
    assert_eq!(view["leader"], new.as_str(), "{view}");
    let deadline = Instant::now() + WAIT;
    while psql(old, "SELECT count(*) FROM kept;") != "1001" {
        assert!(Instant::now() < deadline, "the row reaches {leader}");
        std::thread::sleep(Duration::from_millis(500));
    }
    work.pgform(&["-f", "c.toml", "plan", "--detailed-exitcode"])
        .expect(0);

    // `reinit` rebuilds a replica from the leader: refused for the leader, for a name
    // that is no member, and without approval (standard input is not a terminal here),
    // each changing nothing; approved, the replica's data directory is a new copy (a
    // file left in the old one is gone), it streams again, with every row.
    let marker = "/var/lib/postgresql/15/main/pgform-reinit-marker";
    old.ssh_ok(&format!("touch {marker}"));
    let reinit = |args: &[&str]| {
        let mut all = vec!["-f", "c.toml", "reinit"];
        all.extend_from_slice(args);
        work.pgform(&all)
    };
    reinit(&[&new, "--auto-approve"])
        .expect(1)
        .stderr_has(&format!("{new} leads, and a leader is not rebuilt"));
    reinit(&["replica-7", "--auto-approve"])
        .expect(1)
        .stderr_has("replica-7 is not a member");
    reinit(&[&leader])
        .expect(1)
        .stderr_has("standard input is not a terminal to approve it: pass --auto-approve");
    old.ssh_ok(&format!("test -e {marker}"));
    reinit(&[&leader, "--auto-approve"])
        .expect(0)
        .stdout_has(&format!(
            "Reinitialized: {leader} streams from the leader again."
        ));
    old.ssh_ok(&format!("test ! -e {marker}"));
    psql(&hosts[index(&new)], "INSERT INTO kept VALUES (1002);");
    let deadline = Instant::now() + WAIT;
    while psql(old, "SELECT count(*) FROM kept;") != "1002" {
        assert!(
            Instant::now() < deadline,
            "the row reaches {leader} after its reinit"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let view = settled(&work, 3);
    assert_eq!(view["leader"], new.as_str(), "{view}");
    work.pgform(&["-f", "c.toml", "plan", "--detailed-exitcode"])
        .expect(0);
}
