//! A dependency walker that knows nothing of resources: it runs a closure per node once
//! all the node's dependencies have succeeded, at most `parallelism` at a time. A failed
//! node's dependants are skipped; independent nodes still run. Once `stop` says so, no
//! new node starts; running ones finish.

use std::collections::VecDeque;
use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

/// What a walk ended with: which nodes failed (with their errors), which were skipped
/// because something they depend on failed, and which never started because the walk
/// was stopped.
#[derive(Debug)]
pub struct WalkReport<E> {
    pub succeeded: Vec<NodeIndex>,
    pub failed: Vec<(NodeIndex, E)>,
    pub skipped: Vec<NodeIndex>,
    pub not_started: Vec<NodeIndex>,
}

impl<E> WalkReport<E> {
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && self.not_started.is_empty()
    }
}

/// Walks `dag` (edges point from a dependency to its dependant).
pub async fn walk<'g, N, E, F, Fut>(
    dag: &'g DiGraph<N, ()>,
    parallelism: usize,
    run: F,
) -> WalkReport<E>
where
    F: Fn(NodeIndex, &'g N) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    walk_until(dag, parallelism, || false, run).await
}

/// Like [`walk`], but starts no new node once `stop()` returns true.
pub async fn walk_until<'g, N, E, S, F, Fut>(
    dag: &'g DiGraph<N, ()>,
    parallelism: usize,
    stop: S,
    run: F,
) -> WalkReport<E>
where
    S: Fn() -> bool,
    F: Fn(NodeIndex, &'g N) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let parallelism = parallelism.max(1);
    let mut waiting_on: Vec<usize> = dag
        .node_indices()
        .map(|n| dag.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: VecDeque<NodeIndex> = dag
        .node_indices()
        .filter(|n| waiting_on[n.index()] == 0)
        .collect();
    let mut skipped = vec![false; dag.node_count()];
    let mut report = WalkReport {
        succeeded: Vec::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
        not_started: Vec::new(),
    };
    let mut running = FuturesUnordered::new();

    loop {
        while running.len() < parallelism && !stop() {
            let Some(node) = ready.pop_front() else { break };
            let fut = run(node, &dag[node]);
            running.push(async move { (node, fut.await) });
        }
        let Some((node, result)) = running.next().await else {
            break;
        };
        match result {
            Ok(()) => {
                report.succeeded.push(node);
                for next in dag.neighbors_directed(node, Direction::Outgoing) {
                    let w = &mut waiting_on[next.index()];
                    *w -= 1;
                    if *w == 0 && !skipped[next.index()] {
                        ready.push_back(next);
                    }
                }
            }
            Err(e) => {
                report.failed.push((node, e));
                let mut stack: Vec<NodeIndex> =
                    dag.neighbors_directed(node, Direction::Outgoing).collect();
                while let Some(n) = stack.pop() {
                    if !std::mem::replace(&mut skipped[n.index()], true) {
                        report.skipped.push(n);
                        stack.extend(dag.neighbors_directed(n, Direction::Outgoing));
                    }
                }
            }
        }
    }
    let mut done = vec![false; dag.node_count()];
    let finished = report
        .succeeded
        .iter()
        .chain(report.failed.iter().map(|(n, _)| n));
    for n in finished.chain(report.skipped.iter()) {
        done[n.index()] = true;
    }
    report.not_started = dag.node_indices().filter(|n| !done[n.index()]).collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn chain_and_fork() -> DiGraph<&'static str, ()> {
        // a -> b -> c, a -> d ; e alone
        let mut g = DiGraph::new();
        let a = g.add_node("a");
        let b = g.add_node("b");
        let c = g.add_node("c");
        let d = g.add_node("d");
        g.add_node("e");
        g.add_edge(a, b, ());
        g.add_edge(b, c, ());
        g.add_edge(a, d, ());
        g
    }

    #[tokio::test]
    async fn runs_dependencies_first() {
        let g = chain_and_fork();
        let order = Mutex::new(Vec::new());
        let report = walk(&g, 4, |_, n| {
            order.lock().unwrap().push(*n);
            async { Ok::<(), ()>(()) }
        })
        .await;
        assert!(report.is_ok());
        let order = order.into_inner().unwrap();
        let pos = |x| order.iter().position(|n| *n == x).unwrap();
        assert!(pos("a") < pos("b") && pos("b") < pos("c") && pos("a") < pos("d"));
        assert_eq!(order.len(), 5);
    }

    #[tokio::test]
    async fn failure_skips_dependants_only() {
        let g = chain_and_fork();
        let ran = Mutex::new(Vec::new());
        let report = walk(&g, 2, |_, n| {
            ran.lock().unwrap().push(*n);
            let fail = *n == "b";
            async move { if fail { Err("boom") } else { Ok(()) } }
        })
        .await;
        let names = |v: &[NodeIndex]| v.iter().map(|i| g[*i]).collect::<Vec<_>>();
        assert_eq!(report.failed.len(), 1);
        assert_eq!(g[report.failed[0].0], "b");
        assert_eq!(names(&report.skipped), vec!["c"]);
        let ran = ran.into_inner().unwrap();
        assert!(ran.contains(&"d") && ran.contains(&"e") && !ran.contains(&"c"));
    }

    #[tokio::test]
    async fn parallelism_is_bounded() {
        let mut g: DiGraph<(), ()> = DiGraph::new();
        for _ in 0..20 {
            g.add_node(());
        }
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        walk(&g, 3, |_, _| async {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<(), ()>(())
        })
        .await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn stop_lets_running_nodes_finish_and_starts_no_more() {
        let g = chain_and_fork();
        let stopped = std::sync::atomic::AtomicBool::new(false);
        let ran = Mutex::new(Vec::new());
        // Parallelism 1: "a" runs and asks to stop; nothing else starts.
        let report = walk_until(
            &g,
            1,
            || stopped.load(Ordering::SeqCst),
            |_, n| {
                ran.lock().unwrap().push(*n);
                stopped.store(true, Ordering::SeqCst);
                async { Ok::<(), ()>(()) }
            },
        )
        .await;
        assert_eq!(ran.into_inner().unwrap(), vec!["a"]);
        assert_eq!(report.succeeded.len(), 1);
        assert_eq!(report.not_started.len(), 4);
        assert!(!report.is_ok());
    }
}
