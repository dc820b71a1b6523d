//! A fault-injecting HTTP/1.1 proxy in front of moto, for crash and "no request at all"
//! tests.
//!
//! ```ignore
//! let moto = common::Moto::start();
//! let proxy = Proxy::start(&moto.endpoint);
//! proxy.set_policy(|action| if action == "RunInstances" { Fault::HoldResponse } else { Fault::Forward });
//! Command::new(env!("CARGO_BIN_EXE_pgform")).envs(moto.env()).env("AWS_ENDPOINT_URL", &proxy.endpoint)...;
//! proxy.wait_until(Duration::from_secs(60), |log| log.iter().any(|x| x.answered));
//! ```
//!
//! Every request is read in full (Content-Length or chunked body; `Expect: 100-continue`
//! is answered), its EC2 Query action taken from the form body (`Action=RunInstances`),
//! else from the query string, else `METHOD /path`. The policy, called once per request in
//! arrival order, decides its [`Fault`]. A forwarded request goes to moto on a fresh
//! connection (`Connection: close`); moto's answer is read in full and sent back with a
//! Content-Length, so the client's keep-alive connection stays well framed.
//!
//! Held requests and responses are held until the proxy is dropped; then their
//! connections are closed without an answer.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A request's start line and headers.
type Head = (String, Vec<(String, String)>);

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it to moto and relay the answer.
    Forward,
    /// Forward it to moto (it takes effect) but never answer the client.
    HoldResponse,
    /// Never forward it, never answer.
    HoldRequest,
    /// Forward it to moto, then relay the answer only after this long (a slow call).
    DelayResponse(Duration),
}

/// One request the proxy received, in arrival order.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The EC2 action (`RunInstances`), or `METHOD /path` for other requests.
    pub action: String,
    pub fault: Fault,
    /// moto has answered it (its effect, if any, is done): true for forwarded requests
    /// once moto's response is read, whether or not the client gets it.
    pub answered: bool,
    /// moto's status code, once answered (502 when moto could not be reached).
    pub status: Option<u16>,
}

type Policy = Box<dyn FnMut(&str) -> Fault + Send>;

struct Shared {
    upstream: SocketAddr,
    policy: Mutex<Policy>,
    log: Mutex<Vec<Exchange>>,
    changed: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Vec<Exchange>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Blocks until the proxy is dropped.
    fn hold(&self) {
        let mut log = self.log();
        while !self.stopping() {
            log = self
                .changed
                .wait_timeout(log, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The proxy; it stops (and drops every held connection) when dropped.
pub struct Proxy {
    /// Base URL for AWS_ENDPOINT_URL, e.g. `http://127.0.0.1:41235`.
    pub endpoint: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`
    /// (`http://127.0.0.1:PORT`, e.g. [`super::Moto::endpoint`]). Forwards everything until
    /// a policy is set.
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("proxy upstream `{upstream}` is not http://IP:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has no address");
        let shared = Arc::new(Shared {
            upstream,
            policy: Mutex::new(Box::new(|_: &str| Fault::Forward)),
            log: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if accepting.stopping() {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = accepting.clone();
                thread::spawn(move || serve(&s, conn));
            }
        });
        Proxy {
            endpoint: format!("http://{addr}"),
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Decides the fault of each following request from its action; called in arrival
    /// order, one request at a time.
    pub fn set_policy(&self, policy: impl FnMut(&str) -> Fault + Send + 'static) {
        *self.shared.policy.lock().unwrap_or_else(|e| e.into_inner()) = Box::new(policy);
    }

    /// Everything received so far, in arrival order.
    pub fn log(&self) -> Vec<Exchange> {
        self.shared.log().clone()
    }

    /// The actions received so far, in arrival order.
    pub fn actions(&self) -> Vec<String> {
        self.shared.log().iter().map(|x| x.action.clone()).collect()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.shared.log().len()
    }

    /// Waits until `done(log)` holds; returns the log then, or None after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Exchange]) -> bool,
    ) -> Option<Vec<Exchange>> {
        let deadline = Instant::now() + timeout;
        let mut log = self.shared.log();
        loop {
            if done(&log) {
                return Some(log.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            log = self
                .shared
                .changed
                .wait_timeout(log, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// A parsed HTTP message: start line, headers, body (de-chunked).
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Serialises with a Content-Length body and the given Connection header.
    fn to_bytes(&self, connection: &str) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            let hop = [
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
                "expect",
            ];
            if !hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A buffered reader over a socket with a short read timeout, so that a blocked read
/// notices the proxy stopping.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: &'a Shared,
    /// Give up after this long without data (None: only when the proxy stops).
    idle_limit: Option<Duration>,
}

impl Conn<'_> {
    /// Reads more bytes into the buffer; Ok(false) at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let started = Instant::now();
        loop {
            if self.shared.stopping() {
                return Err(io::Error::other("proxy stopping"));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.idle_limit.is_some_and(|l| started.elapsed() > l) {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "peer idle"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).collect::<Vec<u8>>();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The start line and headers; None on a clean end of stream before any byte.
    fn head(&mut self) -> io::Result<Option<Head>> {
        while self.buf.is_empty() {
            if !self.fill()? {
                return Ok(None);
            }
        }
        let start = self.line()?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header line"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(Some((start, headers)))
    }

    /// The body framed by `headers`; `to_eof` reads to the end of the stream when there is
    /// neither a length nor chunking (responses only).
    fn body(&mut self, headers: &[(String, String)], to_eof: bool) -> io::Result<Vec<u8>> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size_line = self.line()?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                        })?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line()?.is_empty() {}
                    return Ok(body);
                }
                body.extend(self.take(size)?);
                self.take(2)?; // CRLF after the chunk
            }
        }
        if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            return self.take(len);
        }
        if to_eof {
            while self.fill()? {}
            return Ok(std::mem::take(&mut self.buf));
        }
        Ok(Vec::new())
    }
}

/// Serves one client connection: request after request (keep-alive).
fn serve(shared: &Shared, client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = client.set_nodelay(true);
    let Ok(writer) = client.try_clone() else {
        return;
    };
    let mut conn = Conn {
        stream: client,
        buf: Vec::new(),
        shared,
        idle_limit: None,
    };
    let mut writer = writer;
    while let Ok(Some((start, headers))) = conn.head() {
        let expects_continue = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue")
        });
        if expects_continue && writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
            break;
        }
        let Ok(body) = conn.body(&headers, false) else {
            break;
        };
        let request = Message {
            start,
            headers,
            body,
        };
        let client_closes = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let action = action_of(&request);

        let (index, fault) = {
            // Policy and log under one lock order: the policy sees arrival order.
            let mut policy = shared.policy.lock().unwrap_or_else(|e| e.into_inner());
            let fault = policy(&action);
            let mut log = shared.log();
            log.push(Exchange {
                action: action.clone(),
                fault,
                answered: false,
                status: None,
            });
            (log.len() - 1, fault)
        };
        shared.changed.notify_all();

        if fault == Fault::HoldRequest {
            shared.hold();
            break;
        }
        let response = forward(shared, &request).unwrap_or_else(|e| Message {
            start: "HTTP/1.1 502 Bad Gateway".into(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!("test proxy: cannot reach moto: {e}").into_bytes(),
        });
        let status = response
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok());
        {
            let mut log = shared.log();
            log[index].answered = true;
            log[index].status = status;
        }
        shared.changed.notify_all();

        if fault == Fault::HoldResponse {
            shared.hold();
            break;
        }
        if let Fault::DelayResponse(delay) = fault {
            thread::sleep(delay);
        }
        let connection = if client_closes { "close" } else { "keep-alive" };
        if writer.write_all(&response.to_bytes(connection)).is_err() || client_closes {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Sends `request` to moto on a fresh connection and reads the whole answer.
fn forward(shared: &Shared, request: &Message) -> io::Result<Message> {
    let upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))?;
    upstream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut writer = upstream.try_clone()?;
    writer.write_all(&request.to_bytes("close"))?;
    let mut conn = Conn {
        stream: upstream,
        buf: Vec::new(),
        shared,
        idle_limit: Some(Duration::from_secs(120)),
    };
    loop {
        let (start, headers) = conn.head()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "moto closed without answering",
            )
        })?;
        // Skip interim 1xx answers.
        if start
            .split_whitespace()
            .nth(1)
            .is_some_and(|s| s.starts_with('1'))
        {
            continue;
        }
        let is_head = request.start.starts_with("HEAD ");
        let no_body = is_head
            || start
                .split_whitespace()
                .nth(1)
                .is_some_and(|s| s == "204" || s == "304");
        let body = if no_body {
            Vec::new()
        } else {
            conn.body(&headers, true)?
        };
        return Ok(Message {
            start,
            headers,
            body,
        });
    }
}

/// The EC2 Query action of a request: `Action=` in a form body, else in the query
/// string, else `METHOD /path`.
fn action_of(request: &Message) -> String {
    let target = request.start.split_whitespace().nth(1).unwrap_or("");
    let from_query = |q: &str| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("Action="))
            .map(|a| a.to_string())
    };
    let body = String::from_utf8_lossy(&request.body);
    from_query(&body)
        .or_else(|| target.split_once('?').and_then(|(_, q)| from_query(q)))
        .unwrap_or_else(|| {
            let method = request.start.split_whitespace().next().unwrap_or("");
            format!("{method} {}", target.split('?').next().unwrap_or(""))
        })
}
