//! SSH masters kept between runs (`remote::Connection`, `Target::keep_master`) on real
//! sshd containers: a rerun resumes the same master process, a host whose known-hosts
//! entry changed or that was replaced gets a new one (never the old connection), and with
//! keeping turned off the master ends with the run. Needs `bash scripts/testbed.sh up`;
//! skipped without it unless `CI` is set.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::hosts::{self, Host, Network, SshKey};
use pgform::remote::{Connection, Sh, Target};

fn target(host: &Host, key: &SshKey, keep: Option<Duration>) -> Target {
    Target {
        name: host.name.clone(),
        address: host.ip().to_string(),
        port: 22,
        user: "root".into(),
        private_key: Some(key.private.clone()),
        jump: Vec::new(),
        strict_host_keys: false,
        known_hosts_file: Some(key.dir().join("known_hosts")),
        keep_master: keep,
    }
}

/// The pid of the master behind `socket` (`ssh -O check`), None when none answers.
fn master_pid(socket: &Path) -> Option<u32> {
    let out = std::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-O", "check", "pgform-test"])
        .output()
        .expect("run ssh -O check");
    let text = String::from_utf8_lossy(&out.stderr);
    let pid = text.split("pid=").nth(1)?.split(')').next()?;
    pid.parse().ok()
}

/// The host's own ed25519 host key, read through `conn`.
async fn host_key(conn: &Connection) -> String {
    let out = conn
        .run(Sh::argv(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]), None)
        .await
        .expect("run a command");
    assert!(out.success(), "{}", out.tail());
    out.stdout
}

const KEEP: Option<Duration> = Some(Duration::from_secs(60));

#[tokio::test]
async fn a_rerun_resumes_the_kept_master_and_a_changed_host_key_gets_a_new_one() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("keep");
    let host = Host::start(&net, "keep", 11, &key);
    let t = target(&host, &key, KEEP);

    let first = Connection::open(&t).await.expect("ssh to the host");
    let socket = first.control_socket().to_path_buf();
    let dir = pgform::remote::masters_dir().expect("a private masters directory");
    assert!(
        socket.starts_with(&dir),
        "{} not in {}",
        socket.display(),
        dir.display()
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "masters directory mode {mode:o}");
    assert!(
        socket.as_os_str().len() < 100,
        "socket path too long for a unix socket"
    );
    let pid = master_pid(&socket).expect("the master runs");
    let key_seen = host_key(&first).await;
    first.close().await;

    // The run ended; its master did not.
    assert_eq!(
        master_pid(&socket),
        Some(pid),
        "the master ended with the run"
    );
    let second = Connection::open(&t).await.expect("ssh to the host again");
    assert_eq!(
        second.control_socket(),
        socket,
        "a new master for the same host"
    );
    assert_eq!(
        master_pid(&socket),
        Some(pid),
        "the rerun started another master"
    );
    assert_eq!(host_key(&second).await, key_seen);
    second.close().await;

    // The host's known-hosts entry is part of the master's identity: once it is
    // forgotten (as pgform does for hosts it replaced), a new master is made.
    let forgot = std::process::Command::new("ssh-keygen")
        .arg("-R")
        .arg(host.ip().to_string())
        .arg("-f")
        .arg(key.dir().join("known_hosts"))
        .output()
        .unwrap();
    assert!(forgot.status.success());
    let third = Connection::open(&t)
        .await
        .expect("ssh after the key was forgotten");
    assert_ne!(third.control_socket(), socket, "the old master was reused");
    let new_pid = master_pid(third.control_socket()).expect("the new master runs");
    assert_ne!(new_pid, pid);
    third.close().await;

    pgform::remote::close_kept_masters(&host.ip().to_string(), 22).await;
    assert_eq!(
        master_pid(&socket),
        None,
        "close_kept_masters left a master"
    );
}

#[tokio::test]
async fn a_replaced_host_is_not_reached_through_the_old_master() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("swap");
    let old = Host::start(&net, "swap", 11, &key);
    let t = target(&old, &key, KEEP);
    let conn = Connection::open(&t).await.expect("ssh to the first host");
    let socket = conn.control_socket().to_path_buf();
    let old_key = host_key(&conn).await;
    conn.close().await;
    assert!(master_pid(&socket).is_some(), "the master was not kept");

    // A new container at the same address, with new host keys.
    drop(old);
    let new = Host::start(&net, "swap", 11, &key);
    let t = target(&new, &key, KEEP);

    // Not through the old master, and not trusted either: the key changed and pgform did
    // not replace the host itself.
    let refused = Connection::open(&t).await;
    let err = refused.err().expect("a changed host key must be refused");
    assert!(
        err.to_string().contains("IDENTIFICATION HAS CHANGED")
            || err.to_string().to_lowercase().contains("host key"),
        "{err}"
    );

    // pgform forgets the keys of hosts it replaced and closes their masters: then the new
    // host is reached, through a new master.
    pgform::remote::close_kept_masters(&new.ip().to_string(), 22).await;
    let forgot = std::process::Command::new("ssh-keygen")
        .arg("-R")
        .arg(new.ip().to_string())
        .arg("-f")
        .arg(key.dir().join("known_hosts"))
        .output()
        .unwrap();
    assert!(forgot.status.success());
    let conn = Connection::open(&t).await.expect("ssh to the new host");
    let new_key = host_key(&conn).await;
    assert_ne!(new_key, old_key, "reached the old host");
    conn.close().await;
    pgform::remote::close_kept_masters(&new.ip().to_string(), 22).await;
}

#[tokio::test]
async fn with_keeping_off_the_master_ends_with_the_run() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("nokeep");
    let host = Host::start(&net, "nokeep", 11, &key);
    let t = target(&host, &key, None);
    let conn = Connection::open(&t).await.expect("ssh to the host");
    let socket = conn.control_socket().to_path_buf();
    if let Some(dir) = pgform::remote::masters_dir() {
        assert!(
            !socket.starts_with(dir),
            "a master kept though keeping is off"
        );
    }
    assert!(master_pid(&socket).is_some());
    host_key(&conn).await;
    conn.close().await;
    assert_eq!(master_pid(&socket), None, "the master outlived the run");

    // The next run makes its own.
    let again = Connection::open(&t).await.expect("ssh again");
    assert_ne!(again.control_socket(), socket);
    again.close().await;
}

/// The CLI's switch (`--ssh-persist`, `PGFORM_SSH_PERSIST`): by default a command leaves
/// its master in the private directory for the next one; with 0 it leaves nothing behind.
#[tokio::test]
async fn the_cli_keeps_masters_unless_told_not_to() {
    if !hosts::require_testbed() {
        return;
    }
    let key = SshKey::generate();
    let net = Network::create("clikeep");
    let host = Host::start(&net, "clikeep", 12, &key);
    let runtime = tempfile::tempdir().unwrap();
    let runtime_env = (
        "XDG_RUNTIME_DIR".to_string(),
        runtime.path().display().to_string(),
    );
    let work = common::cli::Work::new("clikeep", vec![runtime_env.clone()]);
    let off = common::cli::Work::new(
        "clikeep-off",
        vec![runtime_env, ("PGFORM_SSH_PERSIST".into(), "0".into())],
    );
    let spec = format!(
        "name = \"clikeep\"\nprovider = \"hosts\"\n[[hosts]]\naddress = \"{}\"\n\
         role = \"primary\"\n[ssh]\nprivate_key_file = {:?}\n",
        host.ip(),
        key.private
    );
    work.write("c.toml", &spec);
    off.write("c.toml", &spec);
    let masters = runtime.path().join("pgform-ssh");
    let sockets = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&masters)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };

    // `plan` reaches the host (check mode on a bare host: changes to make).
    work.pgform(&["plan", "-f", "c.toml", "--ssh-persist", "0"])
        .expect(0);
    off.pgform(&["plan", "-f", "c.toml"]).expect(0);
    assert_eq!(sockets(), Vec::<std::path::PathBuf>::new());

    work.pgform(&["plan", "-f", "c.toml"]).expect(0);
    let kept = sockets();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let pid = master_pid(&kept[0].join("master")).expect("the kept master answers");
    // Ended here: it would otherwise outlive the test by its idle time.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}
