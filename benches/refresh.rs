//! Refresh and plan cost for a state of many clusters against the EC2 emulator: API calls
//! and wall time. Shows that batched refresh calls grow with pages, not with resources.
//!
//! `cargo bench --bench refresh` (1,000 clusters, 5 resources each, on an existing
//! subnet); `cargo bench --bench refresh -- 100` for another size. Under `cargo test` it
//! runs once with 3 clusters, as a check. Needs `moto_server` on PATH (see .ci/run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use futures::stream::{self, StreamExt};
use pgform::engine::{self, ApplyOptions};
use pgform::graph::{self, Lookups};
use pgform::plan;
use pgform::provider::aws::AwsProvider;
use pgform::provider::{Lookup, Provider};
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::{State, StateStore};

fn spec(i: usize, subnet: &str) -> ClusterSpec {
    let text = format!(
        "name = \"bench-{i}\"\nregion = \"us-east-1\"\n[network]\nsubnet_id = \"{subnet}\"\n\
         [ssh]\nkey_name = \"bench\"\n[access]\nadmin_cidrs = [\"198.51.100.0/24\"]\n\
         [postgres]\nreplicas = 3\n"
    );
    parse_str(&text, std::path::Path::new("bench.toml"))
        .expect("bench spec")
        .spec
}

/// Applies one cluster through the engine, as `pgform apply` would.
async fn make_cluster(provider: &AwsProvider, spec: &ClusterSpec, dir: &std::path::Path) -> State {
    let path = dir.join(format!("{}.json", spec.name));
    let mut store = StateStore::lock(&path, "apply").expect("lock");
    let state = store.load_or_new(&spec.name).expect("state");
    let plan = engine::plan(provider, spec, &state, &engine::no_events())
        .await
        .expect("plan");
    let (state, _) = engine::apply(provider, &plan, &mut store, state, &ApplyOptions::default())
        .await
        .expect("apply");
    state
}

/// Clusters refreshed one by one for the per-cluster comparison.
const SAMPLE: usize = 50;

#[tokio::main]
async fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let clusters: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if measuring { 1000 } else { 3 });

    let moto = common::Moto::start();
    let client = moto.ec2().await;
    let (_, subnet) = moto.make_subnet("10.0.0.0/16", "10.0.0.0/18").await;
    let provider = AwsProvider::new(client);
    let dir = tempfile::tempdir().expect("tempdir");

    let t = Instant::now();
    let specs: Vec<ClusterSpec> = (0..clusters).map(|i| spec(i, &subnet)).collect();
    let states: Vec<State> = stream::iter(specs.iter())
        .map(|s| make_cluster(&provider, s, dir.path()))
        .buffered(8)
        .enumerate()
        .map(|(i, state)| {
            if (i + 1) % 100 == 0 {
                eprintln!("  {} clusters applied ({:.0?})", i + 1, t.elapsed());
            }
            state
        })
        .collect()
        .await;
    let resources: usize = states.iter().map(|s| s.resources.len()).sum();
    println!(
        "setup: {clusters} clusters, {resources} resources applied in {:.1?}",
        t.elapsed()
    );

    // 1. One batched refresh of every resource of every cluster.
    let lookups: Vec<Lookup> = states
        .iter()
        .flat_map(|s| {
            s.resources.iter().map(|(a, r)| Lookup {
                cluster: s.cluster.clone(),
                address: a.clone(),
                id: r.id.clone(),
            })
        })
        .collect();
    let calls = provider.api_calls();
    let t = Instant::now();
    let found = provider.refresh(&lookups).await.expect("batched refresh");
    let batched = (provider.api_calls() - calls, t.elapsed());
    assert_eq!(
        found.iter().filter(|f| f.is_some()).count(),
        resources,
        "every resource is found"
    );

    // 2. Refresh cluster by cluster, as one `pgform plan` per cluster does; on a sample,
    // since the emulator answers slowly once it holds thousands of instances.
    let sample = &states[..states.len().min(SAMPLE)];
    let calls = provider.api_calls();
    let t = Instant::now();
    for s in sample {
        engine::refresh(&provider, s, &engine::no_events())
            .await
            .expect("refresh");
    }
    let per_cluster = (provider.api_calls() - calls, t.elapsed());

    // 3. The whole plan of every cluster from that one refresh: merge, build, diff.
    let lookups_once = engine::lookups(&provider, &specs[0], &states[0])
        .await
        .expect("lookups");
    let t = Instant::now();
    let mut found = found.into_iter();
    let mut changes = 0;
    for (spec, state) in specs.iter().zip(&states) {
        let observations = state
            .resources
            .keys()
            .cloned()
            .zip(found.by_ref())
            .collect();
        let (refreshed, _) = plan::merge_observations(state, observations);
        let mut lookups = Lookups {
            subnet: lookups_once.subnet.clone(),
            ..Default::default()
        };
        for (a, r) in &refreshed.resources {
            if let Some(ami) = r.attrs.get("ami").and_then(|v| v.as_str()) {
                lookups.current_amis.insert(a.clone(), ami.to_string());
            }
        }
        let desired = graph::build(spec, &lookups).expect("graph");
        changes += plan::diff(&desired, &refreshed).len();
    }
    let pure = t.elapsed();
    assert_eq!(changes, 0, "the applied clusters are converged");

    println!("refresh of {resources} resources in {clusters} clusters:");
    let n = sample.len();
    println!(
        "  one batched refresh:          {:>6} API calls, {:.2?}",
        batched.0, batched.1
    );
    println!(
        "  one refresh per cluster ({n}): {:>6} API calls, {:.2?} ({:.1} calls per cluster)",
        per_cluster.0,
        per_cluster.1,
        per_cluster.0 as f64 / n as f64
    );
    println!("  merge + build + diff of all clusters (no I/O): {pure:.2?}");
    println!(
        "  plan of all clusters (batched refresh + diff): {:.2?}",
        batched.1 + pure
    );
}
