//! `pgform serve` for end-to-end tests: the real binary on a free loopback port with a
//! data folder of its own, and a real HTTP client.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cli::{PASSWORD, PGFORM};
use super::hosts;

/// A running service; killed when dropped.
pub struct Server {
    pub url: String,
    pub data: PathBuf,
    child: Child,
    stderr: PathBuf,
}

impl Server {
    /// Starts `pgform serve --listen 127.0.0.1:0 --data DATA` and waits for its address.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    /// [`Server::start`] with more environment (e.g. a `DOCKER_HOST` that answers nothing).
    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_args(data, &[], env, "serve.stderr")
    }

    /// [`Server::start`] with more arguments (e.g. `--store URL`) and environment, its
    /// stderr in DATA/`stderr` (several services may share a data folder).
    pub fn start_args(data: &Path, args: &[&str], env: &[(&str, &str)], stderr: &str) -> Server {
        std::fs::create_dir_all(data).unwrap();
        let stderr = data.join(stderr);
        let mut child = Command::new(PGFORM)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("DOCKER_HOST", hosts::docker_host())
            .env("PGFORM_REPLICATION_PASSWORD", PASSWORD)
            .env("PGFORM_SSH_PERSIST", "0")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start pgform serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading so the service never blocks on a full pipe.
            let _ = reader.read_to_end(&mut Vec::new());
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let url = match line.trim().strip_prefix("listening on ") {
            Some(u) => u.to_string(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pgform serve did not start: {line:?}\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        Server {
            url,
            data: data.to_path_buf(),
            child,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the service and waits for it to exit (at most `wait`).
    pub fn signal(&mut self, signal: &str, wait: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn client(&self, token: Option<&str>) -> Api {
        Api {
            url: self.url.clone(),
            token: token.map(str::to_string),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgform token create` on a data folder; returns the token.
pub fn create_token(data: &Path, role: &str, cluster: Option<&str>) -> String {
    let mut cmd = Command::new(PGFORM);
    cmd.args(["token", "create", "--role", role, "--data"])
        .arg(data);
    if let Some(c) = cluster {
        cmd.args(["--cluster", c]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A client of the service, with a token or none.
pub struct Api {
    pub url: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// A status and a JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r.timeout(Duration::from_secs(60))
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Answer {
        let resp = r.send().await.expect("the service answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn put_spec(&self, cluster: &str, spec: &str) -> Answer {
        self.send(
            self.request(reqwest::Method::PUT, &format!("/v1/clusters/{cluster}"))
                .header("content-type", "application/toml")
                .body(spec.to_string()),
        )
        .await
    }

    /// Polls the run until `done(run)` holds; panics after `timeout` with the run and its log.
    pub async fn wait_run(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.get(&format!("/v1/runs/{id}")).await;
            assert_eq!(a.status, 200, "{a:?}");
            if done(&a.body) {
                return a.body;
            }
            if Instant::now() > deadline {
                let log = self.get(&format!("/v1/runs/{id}/log")).await;
                panic!(
                    "run {id} did not get there in time: {}\n{}",
                    a.body, log.text
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the run reaches `state` (or any final state, which fails the test
    /// unless it is `state`).
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let run = self
            .wait_run(id, timeout, |r| r["state"] == state || r["final"] == true)
            .await;
        if run["state"] != state {
            let log = self.get(&format!("/v1/runs/{id}/log")).await;
            panic!(
                "run {id} ended {} instead of {state}: {run}\n{}",
                run["state"], log.text
            );
        }
        run
    }

    /// The run's events over SSE from `last_event_id`, until the stream ends: (id, event).
    pub async fn events(&self, id: &str, last_event_id: Option<u64>) -> Vec<(u64, Value)> {
        let mut r = self
            .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
            .timeout(Duration::from_secs(900));
        if let Some(n) = last_event_id {
            r = r.header("Last-Event-ID", n.to_string());
        }
        let resp = r.send().await.expect("the event stream");
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.expect("the whole event stream");
        parse_sse(&text)
    }
}

/// Server-sent events: `id:` and `data:` lines, a blank line after each event.
pub fn parse_sse(text: &str) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let (mut id, mut data) = (None, String::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() {
            if let (Some(i), false) = (id.take(), data.is_empty()) {
                out.push((i, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            data.clear();
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Clusters on the Docker provider (the testbed's daemon)
// ---------------------------------------------------------------------------------

/// A cluster name and a free /24 in 10.235.0.0/16 (the service's tests' range), unique
/// to this process and call.
pub fn unique_cluster(prefix: &str) -> (String, u8) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ids = hosts::docker_try(&["network", "ls", "-q"]).unwrap_or_default();
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids.split_whitespace());
    let used = hosts::docker_try(&args).unwrap_or_default();
    let start = (pid.wrapping_mul(7).wrapping_add(n * 31)) % 250;
    let third = (0..250)
        .map(|i| ((start + i) % 250 + 2) as u8)
        .find(|t| !used.contains(&format!("10.235.{t}.0/24")))
        .expect("no free /24 in 10.235.0.0/16");
    (format!("{prefix}-{pid}-{n}"), third)
}

/// A spec like examples/local.toml on its own network, with `key`'s files; the
/// replication password comes from the service's environment.
pub fn docker_spec(cluster: &str, third: u8, key: &hosts::SshKey, replicas: u32) -> String {
    let private = key.private.display();
    let public = key.private.with_extension("pub");
    format!(
        r#"name = "{cluster}"
provider = "docker"

[docker]
network_cidr = "10.235.{third}.0/24"
image = "{image}"

[ssh]
public_key_file = "{public}"
private_key_file = "{private}"

[packages]
apt_mirror = "deb [trusted=yes] http://10.235.{third}.1:{port} ./"

[postgres]
version = 15
replicas = {replicas}
shared_buffers = "128MB"
"#,
        public = public.display(),
        image = hosts::IMAGE,
        port = hosts::apt_port(),
    )
}

/// Ids of the containers (all states) labelled with the cluster.
pub fn cluster_containers(cluster: &str) -> Vec<String> {
    let filter = format!("label={}={cluster}", super::CLUSTER_TAG);
    hosts::docker_try(&["ps", "-aq", "--filter", &filter])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes whatever carries the cluster's label when the test ends.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = cluster_containers(&self.0);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = hosts::docker_try(&args);
        }
        let filter = format!("label={}={}", super::CLUSTER_TAG, self.0);
        // The named volumes outlive their containers (`rm -v` removes anonymous ones).
        if let Ok(names) = hosts::docker_try(&["volume", "ls", "-q", "--filter", &filter]) {
            for name in names.split_whitespace() {
                let _ = hosts::docker_try(&["volume", "rm", "-f", name]);
            }
        }
        if let Ok(ids) = hosts::docker_try(&["network", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                for _ in 0..5 {
                    if hosts::docker_try(&["network", "rm", id]).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }
}
