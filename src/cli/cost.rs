//! `pgform cost`, `pgform pricing refresh` and the plan's cost section: load prices,
//! call `cost`, print.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{CostArgs, Global, Outcome};
use crate::cost::{self, PlanCost, PriceTable};
use crate::graph;
use crate::plan::Plan;
use crate::spec::{ClusterSpec, ProviderKind};

/// `--prices`, else the spec's `[cost] prices` (relative to the spec file), over the
/// embedded table.
fn prices(g: &Global, spec: &ClusterSpec, flag: Option<&Path>) -> Result<PriceTable> {
    let file: Option<PathBuf> = match (flag, &spec.cost.prices) {
        (Some(f), _) => Some(f.to_path_buf()),
        (None, Some(p)) => {
            let p = crate::spec::expand_home(p);
            Some(match g.file.parent() {
                Some(base) if p.is_relative() => base.join(p),
                _ => p,
            })
        }
        (None, None) => None,
    };
    PriceTable::load(&spec.region, file.as_deref())
        .context("cannot load prices (spec field `cost.prices` or --prices)")
}

/// Why a provider bills nothing, or None for one that does.
fn not_billed(spec: &ClusterSpec) -> Option<&'static str> {
    match spec.provider {
        ProviderKind::Aws => None,
        ProviderKind::Docker => Some("local Docker containers"),
        ProviderKind::Hosts => Some("machines you listed; pgform makes no cloud resources"),
    }
}

pub fn cost(g: &Global, spec: &ClusterSpec, args: CostArgs) -> Result<Outcome> {
    if let Some(why) = not_billed(spec) {
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
    let prices = prices(g, spec, args.prices.as_deref())?;
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

/// The plan's cost section, for providers that bill.
pub fn plan_cost(g: &Global, spec: &ClusterSpec, plan: &Plan) -> Result<Option<PlanCost>> {
    if not_billed(spec).is_some() {
        return Ok(None);
    }
    let prices = prices(g, spec, None)?;
    Ok(Some(cost::plan_cost(plan, &spec.region, &prices)))
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
