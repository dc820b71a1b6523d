//! Pure diff time for 10,000 resources in memory: the plan's CPU cost without the cloud.
//! `cargo bench --bench diff` measures; under `cargo test` it runs once, small, as a check.

use std::time::{Duration, Instant};

use pgform::graph::{Address, Attrs, Kind, Resource, ResourceGraph, Value};
use pgform::plan::diff;
use pgform::state::{ResourceState, State};

/// A graph of `n` resources: one VPC, one subnet, one security group, the rest instances
/// referring to them, each with a realistic set of attributes.
fn graph(n: usize) -> ResourceGraph {
    let vpc = Address::new(Kind::Vpc, "main");
    let subnet = Address::new(Kind::Subnet, "main");
    let sg = Address::new(Kind::SecurityGroup, "main");
    let attrs = |pairs: Vec<(&str, Value)>| -> Attrs {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    let mut out = vec![
        Resource::new(
            vpc.clone(),
            attrs(vec![("cidr_block", Value::str("10.0.0.0/16"))]),
            &[],
        ),
        Resource::new(
            subnet.clone(),
            attrs(vec![
                ("vpc_id", Value::reference(&vpc)),
                ("cidr_block", Value::str("10.0.0.0/20")),
            ]),
            &[],
        ),
        Resource::new(
            sg.clone(),
            attrs(vec![("vpc_id", Value::reference(&vpc))]),
            &[],
        ),
    ];
    for i in 0..n.saturating_sub(3) {
        let address = Address::indexed(Kind::Instance, "replica", i as u32);
        let tags = Value::Map(
            [
                ("Name", format!("bench-{i}")),
                ("pgform:address", address.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::Str(v)))
            .collect(),
        );
        out.push(Resource::new(
            address,
            attrs(vec![
                ("ami", Value::str("ami-0d12a0000000000a2")),
                ("instance_type", Value::str("t3.medium")),
                ("subnet_id", Value::reference(&subnet)),
                (
                    "vpc_security_group_ids",
                    Value::List(vec![Value::reference(&sg)]),
                ),
                ("root_volume_size", Value::Int(20)),
                ("tags", tags),
            ]),
            &[],
        ));
    }
    ResourceGraph::from_resources(out).expect("bench graph")
}

/// The state after applying `g` perfectly.
fn applied(g: &ResourceGraph) -> State {
    let mut s = State::new("bench");
    for r in g.in_order() {
        let id = |a: &Address| Some(format!("id-{a}"));
        s.resources.insert(
            r.address.clone(),
            ResourceState {
                id: id(&r.address),
                attrs: r
                    .attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.resolve(&id)))
                    .collect(),
                outputs: Default::default(),
                depends_on: r.depends_on.clone(),
                client_token: None,
            },
        );
    }
    s
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..runs {
        let t = Instant::now();
        n = std::hint::black_box(f());
        times.push(t.elapsed());
    }
    (median(times), n)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (n, runs) = if measuring { (10_000, 11) } else { (200, 1) };
    let g = graph(n);
    let converged = applied(&g);
    let (t_same, changes) = time(runs, || diff(&g, &converged).len());
    assert_eq!(changes, 0);
    let empty = State::new("bench");
    let (t_create, changes) = time(runs, || diff(&g, &empty).len());
    assert_eq!(changes, n);
    let mut drifted = converged.clone();
    for r in drifted.resources.values_mut() {
        r.attrs
            .insert("instance_type".into(), Value::str("t3.large"));
    }
    let (t_update, changes) = time(runs, || diff(&g, &drifted).len());
    assert_eq!(changes, n - 3);
    let (t_build, _) = time(runs, || graph(n).len());
    println!("diff of {n} resources (median of {runs} runs):");
    println!("  converged (no changes):  {t_same:?}");
    println!("  empty state (all create): {t_create:?}");
    println!("  all updated in place:     {t_update:?}");
    println!("  graph build + toposort:   {t_build:?}");
}
