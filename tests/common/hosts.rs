//! Test harness: Debian hosts in Docker containers, reached over SSH as root.
//!
//! Needs the testbed (`bash scripts/testbed.sh up`, then
//! `eval "$(bash scripts/testbed.sh env)"`): a docker daemon, the image
//! `pgform-host:bookworm` (sshd as PID 1, no init system) and a local apt repository with
//! PostgreSQL 15 served on this machine. Use from an integration test with `mod common;`:
//!
//! ```ignore
//! use common::hosts::{self, Host, Network, SshKey};
//! if !hosts::require_testbed() { return; }      // skips locally, fails under CI=…
//! let key = SshKey::generate();
//! let net = Network::create("repl");            // a fresh /24 in 10.232.0.0/16
//! let primary = Host::start(&net, "pg1", 11, &key); // at net.ip(11), i.e. x.y.z.11
//! let mirror = net.apt_mirror();                // "http://<gateway>:8765"
//! let bastion = Host::start(&net, "bastion", 250, &key); // any host serves as a bastion
//! let private = Host::start_behind(&net, "pg2", 12, &key, &bastion); // SSH from it only
//! primary.ssh_ok(&format!("echo 'deb [trusted=yes] {mirror} ./' > /etc/apt/sources.list.d/local.list"));
//! ```
//!
//! Declare the `Network` before its hosts, so that the hosts are dropped (removed) first;
//! dropping a `Network` also removes any container still on it.
//!
//! Facts the helpers rely on:
//! - The daemon is Debian's Docker 20.10 (API 1.41); the `docker` on PATH may be a newer
//!   CLI, which negotiates the API down. Commands here use only options 20.10 knows.
//! - The hosts reach nothing but each other and this machine (the daemon runs with
//!   `--iptables=false`: no NAT). The image's own apt source (the Debian mirror that
//!   debootstrap used) does not answer there: point apt at `Network::apt_mirror()` only.
//! - A stopped container loses all its processes, PostgreSQL included, and nothing starts
//!   them again on `Host::start_again` (no init system), as on a host without systemd
//!   after a power cut.
//! - Containers and networks carry the labels `pgform.testbed=1` and
//!   `pgform.testbed.pid=<test process>`. A test process killed before its `Drop`s ran
//!   leaves them behind; `Network::create` removes those of dead test processes.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The host image `scripts/testbed.sh image` builds.
pub const IMAGE: &str = "pgform-host:bookworm";
/// The same host booting systemd as PID 1 (`Host::start_systemd`), also built by
/// `scripts/testbed.sh image`.
pub const SYSTEMD_IMAGE: &str = "pgform-host-systemd:bookworm";
/// What systemd needs in a container: its cgroup hierarchy writable (the host's
/// namespace: Docker 20.10 on cgroup v1), a fresh /run, `mount` for its own mounts, and
/// the container named as one (systemd then skips what only a machine does). Stopped
/// with SIGRTMIN+3, systemd's "halt"; SIGTERM would only make it reexecute itself.
const SYSTEMD_RUN_ARGS: &[&str] = &[
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--cgroupns=host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--stop-signal",
    "SIGRTMIN+3",
    "-e",
    "container=docker",
];
/// Where `scripts/testbed.sh dockerd` puts its daemon; `DOCKER_HOST` overrides.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///run/pgform/docker.sock";
/// The local apt repository's port; `PGFORM_APT_PORT` overrides.
pub const DEFAULT_APT_PORT: u16 = 8765;

const LABEL: &str = "pgform.testbed=1";
const PID_LABEL: &str = "pgform.testbed.pid";
const SSH_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_HINT: &str = "run `bash scripts/testbed.sh up` and \
                          `eval \"$(bash scripts/testbed.sh env)\"` first";

/// Unique names across the threads of this process; the pid makes them unique across
/// test binaries running at the same time.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pgform-t{}-{n}-{prefix}", std::process::id())
}

/// `DOCKER_HOST`, or the testbed's socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// `PGFORM_APT_PORT`, or 8765.
pub fn apt_port() -> u16 {
    match std::env::var("PGFORM_APT_PORT") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("PGFORM_APT_PORT is not a port number: {v:?}")),
        _ => DEFAULT_APT_PORT,
    }
}

/// A `docker` command against the testbed's daemon.
pub fn docker_cmd() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", docker_host()).stdin(Stdio::null());
    cmd
}

/// Runs `docker ARGS`; Ok(stdout, trimmed) or Err(a message with stderr).
pub fn docker_try(args: &[&str]) -> Result<String, String> {
    let out = docker_cmd()
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker ({e}); {SETUP_HINT}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker ARGS` and panics with its stderr when it fails.
fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks that the daemon answers, the host image exists and the apt repository is
/// served. The error says what is missing and how to set it up.
pub fn testbed_ready() -> Result<(), String> {
    let host = docker_host();
    docker_try(&["version", "--format", "{{.Server.Version}}"])
        .map_err(|e| format!("the docker daemon at {host} does not answer: {e}; {SETUP_HINT}"))?;
    docker_try(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .map_err(|_| format!("the image {IMAGE} does not exist at {host}; {SETUP_HINT}"))?;
    let port = apt_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        format!("the local apt repository does not answer on port {port} ({e}); {SETUP_HINT}")
    })?;
    Ok(())
}

/// For tests that need hosts: true when the testbed is ready. When it is not, fails the
/// test under CI (`CI` set), and otherwise prints why and returns false (skip the test).
pub fn require_testbed() -> bool {
    match testbed_ready() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => panic!("host testbed not ready: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: host testbed not ready: {why}");
            false
        }
    }
}

/// An ed25519 key pair without passphrase, in a temporary folder removed on drop.
pub struct SshKey {
    /// The private key file (mode 600), for `ssh -i`.
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA… comment`.
    pub public: String,
    dir: TempDir,
}

impl SshKey {
    pub fn generate() -> SshKey {
        let dir = tempfile::Builder::new()
            .prefix("pgform-sshkey")
            .tempdir()
            .expect("cannot create a temporary folder for an SSH key");
        let private = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "ed25519", "-C", "pgform-test", "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh-keygen ({e}); install openssh-client"));
        assert!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .expect("ssh-keygen wrote no public key")
            .trim()
            .to_string();
        SshKey {
            private,
            public,
            dir,
        }
    }

    /// The folder that holds the key files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A user-defined bridge network with its own /24 from 10.232.0.0/16; removed on drop,
/// with any container still on it.
pub struct Network {
    /// Docker's name for it (unique per test process and call).
    pub name: String,
    /// e.g. `10.232.7.0/24`.
    pub subnet: String,
    third: u8,
}

impl Network {
    /// Creates the network on the first /24 of 10.232.0.0/16 that no network uses.
    /// Race-safe across threads and processes: the daemon refuses an overlapping subnet
    /// ("Pool overlaps"), and then the next /24 is tried.
    pub fn create(name_prefix: &str) -> Network {
        sweep_stale();
        let name = unique(name_prefix);
        let used = used_subnets();
        // Start at a per-process offset so that concurrent test binaries rarely collide.
        let start = (std::process::id() % 250) as u16;
        let mut last_err = String::new();
        for i in 0..256u16 {
            let third = ((start + i) % 256) as u8;
            let subnet = format!("10.232.{third}.0/24");
            if used.contains(&subnet) {
                continue;
            }
            let gateway = format!("10.232.{third}.1");
            let pid_label = format!("{PID_LABEL}={}", std::process::id());
            match docker_try(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--label",
                LABEL,
                "--label",
                &pid_label,
                &name,
            ]) {
                Ok(_) => {
                    return Network {
                        name,
                        subnet,
                        third,
                    };
                }
                Err(e) if e.contains("overlaps") => last_err = e, // taken meanwhile
                Err(e) => panic!("cannot create network {name}: {e}"),
            }
        }
        panic!("no free /24 left in 10.232.0.0/16 for network {name}: {last_err}")
    }

    /// The network's gateway: this machine's address on the network (x.y.z.1).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.third, 1)
    }

    /// The address of host number `host_number` (2..=254) on this network.
    pub fn ip(&self, host_number: u8) -> Ipv4Addr {
        assert!(
            (2..=254).contains(&host_number),
            "host number {host_number} is not in 2..=254 (1 is the gateway)"
        );
        Ipv4Addr::new(10, 232, self.third, host_number)
    }

    /// The local apt repository as the hosts see it: `http://GATEWAY:PORT`. Use it as
    /// `deb [trusted=yes] MIRROR ./` (a flat repository without Release file).
    pub fn apt_mirror(&self) -> String {
        format!("http://{}:{}", self.gateway(), apt_port())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove_network(&self.name);
    }
}

/// Removes a network after the containers on it. Errors are printed, not raised: this
/// runs in Drop, possibly while a failed test unwinds.
fn remove_network(name: &str) {
    let filter = format!("network={name}");
    if let Ok(ids) = docker_try(&["ps", "-aq", "--filter", &filter]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            let _ = docker_try(&args);
        }
    }
    // The daemon may still be releasing endpoints of containers just removed.
    for attempt in 1..=5 {
        match docker_try(&["network", "rm", name]) {
            Ok(_) => return,
            Err(e) if e.contains("No such network") || e.contains("not found") => return,
            Err(e) if attempt == 5 => eprintln!("warning: cannot remove network {name}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Subnets of all networks the daemon has.
fn used_subnets() -> Vec<String> {
    let ids = docker(&["network", "ls", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids);
    // A network removed between `ls` and `inspect` makes inspect fail: the overlap check
    // in `create` covers that case.
    docker_try(&args)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes the containers and networks of test processes that died before their Drops.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let pid_of = |kind: &str| -> Vec<(String, u32)> {
            let format = format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
            let filter = format!("label={PID_LABEL}");
            let mut args = vec![kind, "ls", "--filter", filter.as_str(), "--format"];
            args.push(&format);
            if kind == "container" {
                args.insert(2, "-a");
            }
            docker_try(&args)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (id, pid) = l.split_once(' ')?;
                    Some((id.to_string(), pid.trim().parse().ok()?))
                })
                .collect()
        };
        let dead = |pid: u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
        for (id, pid) in pid_of("container") {
            if dead(pid) {
                let _ = docker_try(&["rm", "-f", "-v", &id]);
            }
        }
        for (id, pid) in pid_of("network") {
            if dead(pid) {
                remove_network(&id);
            }
        }
    });
}

/// A Debian 12 host: a container running sshd, with root's authorized key set.
/// Removed (`docker rm -f`) on drop.
pub struct Host {
    /// The container's name (unique); the host name inside is the `name` given to start.
    pub container: String,
    /// The host name given to `start`.
    pub name: String,
    ip: Ipv4Addr,
    key: PathBuf,
    /// The ProxyCommand that reaches this host through its bastion, when it accepts SSH
    /// only from one.
    proxy: Option<String>,
}

impl Host {
    /// Starts a host at `net.ip(host_number)`, named `name` (its hostname, and a name
    /// the other hosts on `net` resolve), and waits (up to 30 s) until `ssh root@IP` works
    /// with `key`.
    pub fn start(net: &Network, name: &str, host_number: u8, key: &SshKey) -> Host {
        Host::start_with(net, name, host_number, key, None, (IMAGE, &[]))
    }

    /// Like [`Host::start`], on a host that boots systemd (as cloud images do): sshd,
    /// and whatever is enabled, are systemd's units, and they come back when the
    /// container starts again. Panics with the setup hint when the image is missing.
    pub fn start_systemd(net: &Network, name: &str, host_number: u8, key: &SshKey) -> Host {
        if docker_try(&["image", "inspect", "--format", "{{.Id}}", SYSTEMD_IMAGE]).is_err() {
            panic!("the image {SYSTEMD_IMAGE} does not exist; {SETUP_HINT}");
        }
        let image = (SYSTEMD_IMAGE, SYSTEMD_RUN_ARGS);
        Host::start_with(net, name, host_number, key, None, image)
    }

    /// `count` hosts `pg0`, `pg1`, ... (host numbers from 11), started in parallel.
    pub fn start_many(net: &Network, count: u8, key: &SshKey) -> Vec<Host> {
        std::thread::scope(|s| {
            let starts: Vec<_> = (0..count)
                .map(|i| s.spawn(move || Host::start(net, &format!("pg{i}"), 11 + i, key)))
                .collect();
            starts
                .into_iter()
                .map(|h| h.join().expect("host"))
                .collect()
        })
    }

    /// Like [`Host::start`], with a block `device` of this machine (a [`LoopDevice`])
    /// that the host can format and mount (CAP_SYS_ADMIN), as an attached disk.
    pub fn start_with_disk(
        net: &Network,
        name: &str,
        host_number: u8,
        key: &SshKey,
        device: &str,
    ) -> Host {
        let extra = ["--device", device, "--cap-add", "SYS_ADMIN"];
        Host::start_with(net, name, host_number, key, None, (IMAGE, &extra))
    }

    /// Like [`Host::start`], but sshd accepts root only from `bastion`'s address
    /// (`AllowUsers root@BASTION`): reaching it takes a hop through the bastion, as for
    /// hosts on a private subnet. The helpers here (`ssh`, waiting) go through it.
    pub fn start_behind(
        net: &Network,
        name: &str,
        host_number: u8,
        key: &SshKey,
        bastion: &Host,
    ) -> Host {
        Host::start_with(net, name, host_number, key, Some(bastion), (IMAGE, &[]))
    }

    fn start_with(
        net: &Network,
        name: &str,
        host_number: u8,
        key: &SshKey,
        bastion: Option<&Host>,
        (image, extra_run_args): (&str, &[&str]),
    ) -> Host {
        let ip = net.ip(host_number);
        let container = unique(name);
        let ip_s = ip.to_string();
        let keys = format!("SSH_AUTHORIZED_KEYS={}", key.public);
        let pid_label = format!("{PID_LABEL}={}", std::process::id());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &net.name,
            // Docker's DNS on the network answers this name: hosts resolve each other.
            "--network-alias",
            name,
            "--ip",
            &ip_s,
            "--label",
            LABEL,
            "--label",
            &pid_label,
            "-e",
            &keys,
        ];
        args.extend(extra_run_args);
        args.push(image);
        // The image's own start, after one more sshd rule (rerun on `docker start`).
        let behind = bastion.map(|b| {
            format!(
                "echo 'AllowUsers root@{}' >> /etc/ssh/sshd_config && exec /usr/local/sbin/pgform-host-init",
                b.ip
            )
        });
        if let Some(script) = &behind {
            args.extend(["sh", "-c", script.as_str()]);
        }
        docker(&args);
        // From here on, Drop removes the container even if waiting fails.
        let host = Host {
            container,
            name: name.to_string(),
            ip,
            key: key.private.clone(),
            proxy: bastion.map(Host::hop_command),
        };
        host.wait_ssh();
        host
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A ProxyCommand through this host (itself reached through its own bastion, if it
    /// has one): ssh expands `%h:%p` to the host behind, so this level's own proxy gets
    /// its `%` doubled and is quoted for the shell that runs the command.
    fn hop_command(&self) -> String {
        let inner = self
            .proxy
            .as_ref()
            .map(|p| {
                let p = p.replace('%', "%%").replace('\'', r"'\''");
                format!("-o 'ProxyCommand={p}' ")
            })
            .unwrap_or_default();
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=5 \
             -o LogLevel=ERROR {inner}-W %h:%p root@{}",
            self.key.display(),
            self.ip
        )
    }

    /// The `ssh` command line to reach this host as root (no command yet): batch mode,
    /// host keys neither checked nor remembered; through its bastion if it has one.
    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        if let Some(proxy) = &self.proxy {
            cmd.arg("-o").arg(format!("ProxyCommand={proxy}"));
        }
        cmd.arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ServerAliveInterval=10",
            ])
            .arg(format!("root@{}", self.ip))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` (a shell command line) on the host as root; for test assertions.
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_command()
            .arg(cmd)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh ({e}); install openssh-client"))
    }

    /// Like [`Host::ssh`], but panics unless the command succeeds; returns its stdout.
    pub fn ssh_ok(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        assert!(
            out.status.success(),
            "on {} ({}): `{cmd}` failed ({})\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.ip,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the container: every process on the host ends (sshd gets SIGTERM, the rest
    /// are killed), like a power cut.
    pub fn stop(&self) {
        docker(&["stop", "-t", "5", &self.container]);
    }

    /// Kills every process on the host at once, init included: a power cut even for a
    /// host that boots systemd (whose `stop` is a clean shutdown).
    pub fn kill(&self) {
        docker(&["kill", &self.container]);
    }

    /// Starts a stopped container again and waits until sshd answers. Nothing else
    /// starts on the plain image (no init system); on [`Host::start_systemd`]'s, systemd
    /// starts what is enabled. (Not `start`: that name is the constructor's.)
    pub fn start_again(&self) {
        docker(&["start", &self.container]);
        self.wait_ssh();
    }

    /// Freezes every process on the host: connections hang instead of failing.
    pub fn pause(&self) {
        docker(&["pause", &self.container]);
    }

    pub fn unpause(&self) {
        docker(&["unpause", &self.container]);
    }

    /// Waits until port 22 accepts and `ssh … true` succeeds, or panics after 30 s with
    /// the container's log.
    fn wait_ssh(&self) {
        let deadline = Instant::now() + SSH_TIMEOUT;
        let addr = SocketAddr::from((self.ip, 22));
        let mut last = String::from("port 22 never accepted");
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                let out = self.ssh("true");
                if out.status.success() {
                    return;
                }
                last = format!(
                    "ssh failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        let logs = docker_cmd()
            .args(["logs", "--tail", "30", &self.container])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default();
        panic!(
            "host {} ({}, container {}) did not accept ssh within {SSH_TIMEOUT:?}: {last}\n\
             container log:\n{logs}",
            self.name, self.ip, self.container
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // -f also removes a paused container.
        if let Err(e) = docker_try(&["rm", "-f", "-v", &self.container])
            && !e.contains("No such container")
        {
            eprintln!("warning: cannot remove container {}: {e}", self.container);
        }
    }
}

/// A sparse file attached as a loop device on this machine: a disk for a container host
/// (`Host::start_with_disk`). Detached and removed on drop, whatever happened.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: String,
    file: PathBuf,
}

impl LoopDevice {
    /// A `size_mib` MiB disk, empty (no filesystem, no partition table).
    pub fn new(size_mib: u32) -> LoopDevice {
        let file = std::env::temp_dir().join(format!("{}.img", unique("pgform-disk")));
        let f = std::fs::File::create(&file).expect("disk image file");
        f.set_len(u64::from(size_mib) << 20).expect("sparse file");
        drop(f);
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup runs (util-linux; root)");
        if !out.status.success() {
            let _ = std::fs::remove_file(&file);
            panic!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        LoopDevice {
            path: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            file,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Runs `cmd` (a shell command line) as root on the host at `ip` with `key`, for hosts
/// that pgform's providers made (no [`Host`] handle).
pub fn ssh_root(key: &SshKey, ip: &str, cmd: &str) -> Output {
    Command::new("ssh")
        .arg("-i")
        .arg(&key.private)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{ip}"))
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh ({e}); install openssh-client"))
}

/// `/usr/bin/psql` on this machine with a conninfo string (password in PGPASSWORD, never
/// an argument), running `sql`; the output as it is (success or not).
pub fn psql_here(conninfo: &str, password: &str, sql: &str) -> Output {
    Command::new("/usr/bin/psql")
        .args(["-X", "-A", "-t", "-w", "-c", sql, conninfo])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/psql: {e}"))
}

/// The pid of the host's etcd (a restart changes it), for test assertions.
pub const ETCD_PID: &str = "pgrep -x etcd";

/// Linearizable reads of etcd, from `hosts[0]`, until [`QuorumProbe::finish`]: the
/// DCS has its quorum while one member at least serves one.
pub struct QuorumProbe(std::process::Child);

impl QuorumProbe {
    pub fn start(hosts: &[Host]) -> QuorumProbe {
        let endpoints: Vec<String> = hosts
            .iter()
            .map(|h| format!("http://{}:2379", h.ip()))
            .collect();
        let script = format!(
            "rm -f /tmp/probe-stop; while ! test -e /tmp/probe-stop; do ok=0; \
         for e in {}; do if ETCDCTL_API=3 etcdctl --endpoints=$e --dial-timeout=2s \
         --command-timeout=2s get --consistency=l pgform-probe >/dev/null 2>&1; \
         then ok=1; break; fi; done; \
         if test $ok = 0; then date +%T.%N; fi; sleep 0.1; done",
            endpoints.join(" ")
        );
        let child = hosts[0]
            .ssh_command()
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ssh runs");
        // The loop has begun before the run it watches.
        std::thread::sleep(Duration::from_millis(500));
        QuorumProbe(child)
    }

    /// Stops the probe; the times at which no member served a read.
    pub fn finish(self, host: &Host) -> Vec<String> {
        host.ssh_ok("touch /tmp/probe-stop");
        let out = self.0.wait_with_output().expect("the probe ends");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}
