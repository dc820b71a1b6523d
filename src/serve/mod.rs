//! `pgform serve`: the cluster operations as an HTTP service. Runs (plan, confirm,
//! apply, destroy) are kept in a [`store::Store`] with their event log, executed by a
//! worker (one run per cluster at a time, a global cap), and survive restarts.
//!
//! - [`store`]: the database (SQLite by default); [`pgstore`]: PostgreSQL, shared by
//!   several service processes.
//! - [`run`]: a run and its state machine.
//! - [`exec`]: the cluster operations the worker calls.
//! - [`api`]: the HTTP API under `/v1`, its errors and its OpenAPI document.
//! - [`auth`]: bearer tokens, roles, and the idempotency and audit layer.
//! - [`compat`]: the old API's endpoints as adapters over runs.

pub mod api;
pub mod auth;
pub mod compat;
pub mod exec;
pub mod pgstates;
pub mod pgstore;
pub mod run;
pub mod store;
#[doc(hidden)]
pub mod store_cases;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, broadcast};

use crate::engine::Interrupt;
use run::{Run, RunKind, RunState};
use store::{ClusterRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {0} with no token: anyone who can reach it could change clusters\n    \
         fix: create one with `pgform token create --role admin`, or listen on 127.0.0.1"
    )]
    OpenBeyondLoopback(SocketAddr),
}

pub struct Config {
    pub data: PathBuf,
    /// A PostgreSQL connection string (`postgres://USER@HOST:PORT/DB`); `None`: the
    /// SQLite file in `data`.
    pub store: Option<String>,
    pub listen: SocketAddr,
    /// At most this many runs execute at once (over all clusters).
    pub max_running: usize,
}

/// The running service: the store, the worker's bookkeeping, and the channel that tells
/// event streams a run has news.
pub struct Service {
    pub store: Arc<dyn Store>,
    pub data: PathBuf,
    max_running: usize,
    /// Runs with news, for the streams.
    pub news: broadcast::Sender<News>,
    wake: Notify,
    /// Clusters with a run executing now.
    busy: Mutex<HashSet<String>>,
    /// Runs executing now, and how to stop them.
    interrupts: Mutex<HashMap<String, Interrupt>>,
    stopping: AtomicBool,
    /// Who executes runs here (`pid@host`), recorded in each claimed run's events.
    pub owner: String,
}

/// News of a run for its event streams: an event just stored (its number and text), or
/// `None` when only the run's row changed. Streams that are caught up take the event from
/// here rather than reading the store again.
#[derive(Debug, Clone)]
pub struct News {
    pub run: String,
    pub event: Option<(i64, Arc<str>)>,
}

impl News {
    fn event(run: &str, seq: i64, text: String) -> News {
        News {
            run: run.to_string(),
            event: Some((seq, text.into())),
        }
    }
}

/// The database's file in the data folder.
pub fn db_path(data: &Path) -> PathBuf {
    data.join("pgform.db")
}

impl Service {
    /// Opens the store: PostgreSQL when `store` names one, else the SQLite file in
    /// `data`.
    pub fn open(
        data: &Path,
        store: Option<&str>,
        max_running: usize,
    ) -> Result<Arc<Service>, ServeError> {
        for dir in [data.to_path_buf(), data.join("states"), data.join("specs")] {
            std::fs::create_dir_all(&dir).map_err(|source| ServeError::Io { path: dir, source })?;
        }
        let store: Arc<dyn Store> = match store {
            Some(url) => Arc::new(pgstore::PgStore::open(url)?),
            None => Arc::new(store::SqliteStore::open(&db_path(data))?),
        };
        Ok(Arc::new(Service {
            store,
            data: data.to_path_buf(),
            max_running: max_running.max(1),
            news: broadcast::channel(1024).0,
            wake: Notify::new(),
            busy: Mutex::new(HashSet::new()),
            interrupts: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            owner: format!("{}@{}", std::process::id(), crate::state::hostname()),
        }))
    }

    pub fn state_path(&self, cluster: &str) -> PathBuf {
        self.data
            .join("states")
            .join(format!("{cluster}.pgstate.json"))
    }

    /// Where a cluster's submitted document is written to be loaded (relative paths in it
    /// start in that folder).
    pub fn spec_path(&self, cluster: &str, format: &str) -> PathBuf {
        self.data.join("specs").join(format!("{cluster}.{format}"))
    }

    /// Loads the cluster's stored spec as the operations need it.
    pub fn load_cluster(&self, row: &ClusterRow) -> Result<exec::Cluster, exec::ExecError> {
        let path = self.spec_path(&row.name, &row.format);
        // Written whole then renamed: another service on the same folder may read it.
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, &row.spec_text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| exec::ExecError::from(format!("cannot write {}: {e}", path.display())))?;
        let (cluster, _) = exec::load(&path, &self.state_path(&row.name))?;
        Ok(cluster.with_states(self.states(&row.name)))
    }

    /// Where a cluster's state and its lock are kept: in the store when it keeps them
    /// (PostgreSQL), else as a file in the service's folder.
    pub fn states(&self, cluster: &str) -> Arc<dyn crate::state::Backend> {
        self.store
            .states(cluster)
            .unwrap_or_else(|| Arc::new(crate::state::FileStates::new(&self.state_path(cluster))))
    }

    /// Stores an event for the run (with the time), then tells the streams.
    pub fn event(&self, run: &str, mut event: serde_json::Value) {
        if let Some(map) = event.as_object_mut() {
            map.insert("at".into(), store::now().into());
        }
        let text = event.to_string();
        match self.store.append_event(run, &text) {
            Ok(seq) => drop(self.news.send(News::event(run, seq, text))),
            Err(e) => tracing::error!("cannot store an event of {run}: {e}"),
        }
    }

    /// Saves the run and records its new state as an event.
    pub fn save_run(&self, run: &Run) -> Result<(), StoreError> {
        self.event(
            &run.id,
            serde_json::json!({"event": "state", "state": run.state, "error": run.error}),
        );
        self.store.update_run(run)?;
        let _ = self.news.send(News {
            run: run.id.clone(),
            event: None,
        });
        Ok(())
    }

    pub fn wake_worker(&self) {
        self.wake.notify_one();
    }

    /// Interrupts the run if it executes now; `true` if it did.
    pub fn interrupt(&self, run: &str) -> bool {
        let map = self.interrupts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(run).map(|i| i.trigger()).is_some()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Runs whose executing process is gone (at start, this process's own from before
    /// a crash; with a shared store, any dead process's): runs that were planning plan
    /// again; runs that were applying are interrupted (the state lock died with the
    /// process).
    pub fn recover(&self) -> Result<(), StoreError> {
        for state in [RunState::Planning, RunState::Applying] {
            let runs = self.store.runs(&store::RunFilter {
                state: Some(state),
                limit: usize::MAX >> 1,
                ..Default::default()
            })?;
            for run in runs {
                if self.executes(&run.id) {
                    continue;
                }
                // Held while the run is fixed; `None`: its process is alive.
                let Some(_lease) = self.store.take_orphan(&run.id)? else {
                    continue;
                };
                // Read again under the lease: it may have finished meanwhile.
                let Some(mut run) = self.store.run(&run.id)?.filter(|r| r.state == state) else {
                    continue;
                };
                if state == RunState::Planning {
                    run.state = RunState::Queued;
                } else {
                    run.error = Some(
                        "the service stopped while this run applied; what was made is recorded \
                         in the state: retry to plan again and finish"
                            .into(),
                    );
                    run.finish(RunState::Interrupted);
                    // The lock died with the process; clear who it names, so that the
                    // lock endpoint and the CLI do not show a holder that is gone.
                    drop(self.states(&run.cluster).lock("serve recovery"));
                }
                self.save_run(&run)?;
            }
        }
        Ok(())
    }

    /// Whether this process executes the run now.
    fn executes(&self, run: &str) -> bool {
        self.interrupts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(run)
    }

    /// Interrupts the runs executing here whose cancel was asked for elsewhere (another
    /// process on the same store).
    fn poll_cancels(&self) -> Result<(), StoreError> {
        let running: Vec<(String, Interrupt)> = self
            .interrupts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, i)| (id.clone(), i.clone()))
            .collect();
        for (id, interrupt) in running {
            if !interrupt.is_triggered() && self.store.run(&id)?.is_some_and(|r| r.cancel_requested)
            {
                interrupt.trigger();
            }
        }
        Ok(())
    }

    /// Picks queued runs whose cluster is free, up to the cap, until stopped.
    /// Also, each second, stops runs canceled elsewhere, and every few seconds recovers
    /// the runs of processes that died (other services on a shared store).
    pub async fn worker(self: Arc<Self>) {
        let mut tick = 0u32;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    tick = tick.wrapping_add(1);
                    if let Err(e) = self.poll_cancels() {
                        tracing::error!("the worker cannot read the runs: {e}");
                    }
                    if tick.is_multiple_of(RECOVER_EVERY) && let Err(e) = self.recover() {
                        tracing::error!("the worker cannot recover runs: {e}");
                    }
                }
            }
            if self.is_stopping() {
                return;
            }
            if let Err(e) = self.start_queued() {
                tracing::error!("the worker cannot read the queue: {e}");
            }
        }
    }

    fn start_queued(self: &Arc<Self>) -> Result<(), StoreError> {
        loop {
            let skip: Vec<String> = {
                let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if busy.len() >= self.max_running {
                    return Ok(());
                }
                busy.iter().cloned().collect()
            };
            let Some((run, lease)) = self.store.claim_next(&skip, &store::now())? else {
                return Ok(());
            };
            self.busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run.cluster.clone());
            let interrupt = Interrupt::default();
            self.interrupts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run.id.clone(), interrupt.clone());
            let svc = self.clone();
            tokio::spawn(async move {
                let (id, cluster) = (run.id.clone(), run.cluster.clone());
                if let Err(e) = svc.execute(run, interrupt).await {
                    tracing::error!("run {id}: {e}");
                }
                // Released once the run is final (or left for recovery).
                drop(lease);
                svc.interrupts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                svc.busy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&cluster);
                svc.wake_worker();
            });
        }
    }

    /// Plans the run (unless it was planned and confirmed), then applies it when it is
    /// approved.
    /// The run was claimed: it is `planning` or `applying`.
    async fn execute(&self, mut run: Run, interrupt: Interrupt) -> Result<(), StoreError> {
        let needs_plan = run.state == RunState::Planning;
        self.event(
            &run.id,
            serde_json::json!({"event": "state", "state": run.state, "by": self.owner}),
        );
        let Some(row) = self.store.cluster(&run.cluster)? else {
            let message = format!("the cluster `{}` has no spec", run.cluster);
            return self.fail(run, message);
        };
        let cluster = match self.load_cluster(&row) {
            Ok(c) => c,
            Err(e) => return self.fail(run, e.message),
        };
        let sink = self.sink(&run.id);
        if needs_plan {
            let planned = exec::plan(&cluster, run.kind == RunKind::Destroy, run.only, &sink).await;
            // A cancel asked for while planning wins over the plan.
            if let Some(r) = self.store.run(&run.id)? {
                run.cancel_requested = r.cancel_requested;
            }
            let planned = match planned {
                _ if run.cancel_requested => {
                    run.finish(RunState::Canceled);
                    return self.save_run(&run);
                }
                Ok(p) => p,
                Err(e) => return self.fail(run, e.message),
            };
            let text = planned.json.to_string();
            run.plan_hash = Some(hex::encode(Sha256::digest(text.as_bytes())));
            run.plan = Some(text);
            run.total = planned.steps;
            if !planned.has_changes {
                run.finish(RunState::NoChanges);
                return self.save_run(&run);
            }
            if !run.approved {
                run.state = RunState::Planned;
                return self.save_run(&run);
            }
        }
        let Some(saved) = run.plan.as_deref().and_then(exec::infra_plan) else {
            return self.fail(run, "the run has no infrastructure plan to apply".into());
        };
        if run.state != RunState::Applying {
            run.state = RunState::Applying;
            self.save_run(&run)?;
        }
        let result = exec::apply(&cluster, saved, run.only, interrupt.clone(), &sink).await;
        if let Some(r) = self.store.run(&run.id)? {
            run.cancel_requested = r.cancel_requested;
            run.done = r.done;
        }
        match result {
            Ok(result) => {
                run.result = Some(result);
                run.done = run.total;
                run.finish(RunState::Applied);
            }
            Err(e) => {
                run.error = Some(e.message);
                run.finish(if run.cancel_requested {
                    RunState::Canceled
                } else if interrupt.is_triggered() {
                    RunState::Interrupted
                } else {
                    RunState::Errored
                });
            }
        }
        self.save_run(&run)
    }

    fn fail(&self, mut run: Run, message: String) -> Result<(), StoreError> {
        run.error = Some(message);
        run.finish(RunState::Errored);
        self.save_run(&run)
    }

    /// The operations' events: stored, streamed, and counted for progress.
    fn sink(&self, run: &str) -> exec::Sink {
        let store = self.store.clone();
        let news = self.news.clone();
        let id = run.to_string();
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        Arc::new(move |mut event: serde_json::Value| {
            let kind = event["event"].as_str().unwrap_or_default().to_string();
            if let Some(map) = event.as_object_mut() {
                map.insert("at".into(), store::now().into());
            }
            let text = event.to_string();
            let stored = store.append_event(&id, &text);
            if let Err(e) = &stored {
                tracing::error!("cannot store an event of {id}: {e}");
            }
            if matches!(kind.as_str(), "finished" | "failed" | "skipped") {
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = store.set_progress(&id, n);
            }
            if let Ok(seq) = stored {
                let _ = news.send(News::event(&id, seq, text));
            }
        })
    }

    /// SIGTERM: take no new run, interrupt running applies (running steps finish and
    /// are recorded) and wait for them to be marked.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let running: Vec<Interrupt> = self
            .interrupts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for i in &running {
            i.trigger();
        }
        for _ in 0..600 {
            if self
                .interrupts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every so many worker ticks (seconds), runs whose process died are recovered.
const RECOVER_EVERY: u32 = 5;

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Runs the service until SIGTERM or Ctrl-C. Prints the address it listens on first
/// (`listening on http://ADDR`), so a port of 0 can be used.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let svc = Service::open(&config.data, config.store.as_deref(), config.max_running)?;
    let has_tokens = svc.store.tokens()?.iter().any(|t| !t.revoked);
    if !has_tokens && !is_loopback(&config.listen) {
        return Err(ServeError::OpenBeyondLoopback(config.listen));
    }
    svc.recover()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Io {
            path: PathBuf::from(config.listen.to_string()),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        path: PathBuf::from(config.listen.to_string()),
        source,
    })?;
    println!("listening on http://{addr}");
    let worker = tokio::spawn(svc.clone().worker());
    svc.wake_worker();
    let app = api::router(svc.clone());
    let stopper = svc.clone();
    let shutdown = async move {
        wait_for_signal().await;
        // No new run starts; running applies are interrupted and marked; then the
        // server stops accepting and closes.
        stopper.stop().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Io {
            path: PathBuf::from(addr.to_string()),
            source,
        })?;
    worker.abort();
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel asked through another service only sets the run's flag in the shared
    /// store: the executor's worker reads it and interrupts the run.
    #[test]
    fn a_cancel_flagged_in_the_store_interrupts_the_executing_run() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Service::open(dir.path(), None, 1).unwrap();
        let mut run = Run::new("c", RunKind::Apply, None);
        svc.store.create_run(&mut run).unwrap();
        let (claimed, _lease) = svc.store.claim_next(&[], "t").unwrap().unwrap();
        let interrupt = Interrupt::default();
        svc.interrupts
            .lock()
            .unwrap()
            .insert(claimed.id.clone(), interrupt.clone());
        svc.poll_cancels().unwrap();
        assert!(!interrupt.is_triggered());
        assert!(svc.store.request_cancel(&run.id, "t").unwrap());
        svc.poll_cancels().unwrap();
        assert!(interrupt.is_triggered());
        // Recovery leaves a run this process executes alone.
        svc.recover().unwrap();
        assert_eq!(
            svc.store.run(&run.id).unwrap().unwrap().state,
            RunState::Planning
        );
    }
}
