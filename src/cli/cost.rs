//! `pgform cost`, `pgform pricing refresh` and the plan's cost section: load prices,
//! call `cost`, print.

use std::path::Path;

use anyhow::{Context, Result};

use super::{CostArgs, Outcome};
use crate::cost;
use crate::graph;
use crate::ops::Cluster;

pub fn cost(cluster: &Cluster, args: CostArgs) -> Result<Outcome> {
    let spec = &cluster.spec;
    if let Some(why) = cost::not_billed(spec) {
        if args.json {
            let doc = serde_json::json!({
                "provider": spec.provider.name(),
                "billed": false,
                "reason": why,
                "currency": cost::CURRENCY,
                "period": "monthly",
                "lines": [],
                "totals": {"compute": 0.0, "storage": 0.0, "networking": 0.0, "total": 0.0,
                           "complete": true, "unknown_items": 0, "usage_based_items": 0},
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!(
                "Nothing is billed: cluster {} runs on {why} (provider {}).",
                spec.name,
                spec.provider.name()
            );
        }
        return Ok(Outcome::Ok);
    }
    let prices = cluster.prices(args.prices.as_deref())?;
    // The cluster as the spec describes it; what was looked up in the cloud (images,
    // an existing subnet) does not change a price.
    let graph = graph::build(spec, &graph::Lookups::default())?;
    let estimate = cost::estimate(&cost::from_graph(&graph), &spec.region, &prices);
    if args.json {
        let mut doc = serde_json::to_value(&estimate)?;
        doc["provider"] = spec.provider.name().into();
        doc["billed"] = true.into();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", cost::render(&estimate, &spec.name));
    }
    Ok(Outcome::Ok)
}

pub fn refresh(from: &Path, out: &Path) -> Result<Outcome> {
    let (text, table) = cost::refresh::refresh_dir(from)?;
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "Wrote {} ({} prices). Use it with `pgform cost --prices {0}` or `[cost] prices` in the spec.",
        out.display(),
        table.len()
    );
    Ok(Outcome::Ok)
}
