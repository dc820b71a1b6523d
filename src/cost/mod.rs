//! What a cluster costs per month, from public prices (`prices`), offline: one line per
//! billed item of the resource graph or the state, totals by compute, storage and
//! networking, and the before/after of a plan. 730 hours a month, USD, on-demand. A
//! price that is not known is "unknown", never $0, and totals say how many they lack.
//! Pure: no I/O (the price file is read by `PriceTable::load`).

pub mod prices;
pub mod refresh;

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use serde::{Serialize, Serializer};

use crate::graph::{Address, Attrs, Kind, ResourceGraph, Value};
use crate::plan::{Action, Plan};
use crate::state::ResourceState;

pub use prices::{PriceError, PriceKind, PriceTable};

pub const HOURS_PER_MONTH: f64 = 730.0;
pub const CURRENCY: &str = "USD";
/// gp3 includes 3,000 IOPS and 125 MB/s; only what is provisioned above is billed.
pub const GP3_INCLUDED_IOPS: i64 = 3000;
pub const GP3_INCLUDED_THROUGHPUT: i64 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Compute,
    Storage,
    Networking,
}

/// A monthly amount (or a unit price): known, unknown (no price), or usage-based.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Known(f64),
    Unknown,
    Usage,
}

impl Amount {
    pub fn known(self) -> Option<f64> {
        match self {
            Amount::Known(v) => Some(v),
            _ => None,
        }
    }
}

/// Cents, as the amounts are printed.
fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn money(v: f64) -> String {
    format!("${:.2}", cents(v))
}

/// A signed difference, `+$40.17` / `-$3.65`.
fn signed(v: f64) -> String {
    let v = cents(v);
    if v < 0.0 {
        format!("-${:.2}", -v)
    } else {
        format!("+${v:.2}")
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Known(v) => s.serialize_f64(cents(*v)),
            Amount::Unknown => s.serialize_str("unknown"),
            Amount::Usage => s.serialize_str("usage-based"),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Known(v) => f.write_str(&money(*v)),
            Amount::Unknown => f.write_str("unknown"),
            Amount::Usage => f.write_str("usage-based"),
        }
    }
}

fn ser_cents<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(cents(*v))
}

/// One billed item of one resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub address: Address,
    pub item: String,
    pub category: Category,
    /// None for a usage-based item.
    pub quantity: Option<f64>,
    pub unit: &'static str,
    /// Per `unit`; None when not known.
    pub unit_price: Option<f64>,
    pub monthly: Amount,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A resource as the estimate reads it: its attributes (graph or state) and, from the
/// state, its outputs (an instance's public address).
#[derive(Debug, Clone, Copy)]
pub struct Priced<'a> {
    pub address: &'a Address,
    pub attrs: &'a Attrs,
    pub outputs: Option<&'a Attrs>,
}

/// The resources of a graph (what the spec makes).
pub fn from_graph(graph: &ResourceGraph) -> Vec<Priced<'_>> {
    graph
        .in_order()
        .map(|r| Priced {
            address: &r.address,
            attrs: &r.attrs,
            outputs: None,
        })
        .collect()
}

/// The resources of a state (what exists, as last seen).
pub fn from_state(resources: &BTreeMap<Address, ResourceState>) -> Vec<Priced<'_>> {
    resources
        .iter()
        .map(|(address, r)| Priced {
            address,
            attrs: &r.attrs,
            outputs: Some(&r.outputs),
        })
        .collect()
}

fn priced_line(
    address: &Address,
    item: String,
    category: Category,
    quantity: f64,
    kind: PriceKind,
    price: Option<f64>,
    missing: impl FnOnce() -> String,
) -> Line {
    Line {
        address: address.clone(),
        item,
        category,
        quantity: Some(quantity),
        unit: kind.unit(),
        unit_price: price,
        monthly: price.map_or(Amount::Unknown, |p| Amount::Known(p * quantity)),
        note: price.is_none().then(missing),
    }
}

/// An EBS volume as it is billed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Volume<'a> {
    pub volume_type: &'a str,
    pub size_gb: i64,
    /// Provisioned IOPS and MB/s, when set (gp3 includes 3,000 and 125).
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
}

/// The lines of one EBS volume: its GB-months and what it provisions above what the
/// type includes (gp3: IOPS above 3,000 and MB/s above 125; io1/io2: every IOPS).
pub fn volume_lines(
    address: &Address,
    label: &str,
    v: Volume<'_>,
    region: &str,
    prices: &PriceTable,
) -> Vec<Line> {
    let Volume {
        volume_type,
        size_gb,
        iops,
        throughput,
    } = v;
    let missing = |what: &str| {
        let what = what.to_string();
        let region = region.to_string();
        move || format!("no {what} price for {volume_type} in {region}")
    };
    let mut out = vec![priced_line(
        address,
        format!("{label} {volume_type}"),
        Category::Storage,
        size_gb as f64,
        PriceKind::Ebs,
        prices.get(PriceKind::Ebs, region, volume_type),
        missing("storage"),
    )];
    let (extra_iops, extra_throughput) = match volume_type {
        "gp3" => (
            iops.map(|i| i - GP3_INCLUDED_IOPS),
            throughput.map(|t| t - GP3_INCLUDED_THROUGHPUT),
        ),
        // Every provisioned IOPS is billed; unset, EC2 refuses the volume anyway.
        "io1" | "io2" => (Some(iops.unwrap_or(0)), None),
        _ => (None, None),
    };
    if let Some(n) = extra_iops.filter(|n| *n > 0) {
        out.push(priced_line(
            address,
            format!("{label} {volume_type} IOPS"),
            Category::Storage,
            n as f64,
            PriceKind::EbsIops,
            prices.get(PriceKind::EbsIops, region, volume_type),
            missing("IOPS"),
        ));
    }
    if let Some(n) = extra_throughput.filter(|n| *n > 0) {
        out.push(priced_line(
            address,
            format!("{label} {volume_type} throughput"),
            Category::Storage,
            n as f64,
            PriceKind::EbsThroughput,
            prices.get(PriceKind::EbsThroughput, region, volume_type),
            missing("throughput"),
        ));
    }
    out
}

/// The billed items of one resource. Only instances are billed: the network, security
/// group and key pair cost nothing; the volumes and public address are the instance's.
pub fn resource_lines(r: Priced<'_>, region: &str, prices: &PriceTable) -> Vec<Line> {
    if r.address.kind != Kind::Instance {
        return Vec::new();
    }
    let text = |k: &str| {
        r.attrs
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let int = |k: &str| r.attrs.get(k).and_then(Value::as_int);
    let mut out = Vec::new();
    let ty = text("instance_type").unwrap_or("(not known)");
    out.push(priced_line(
        r.address,
        format!("instance {ty}"),
        Category::Compute,
        HOURS_PER_MONTH,
        PriceKind::Ec2,
        prices.instance_hour(region, ty),
        || format!("no price for {ty} in {region}"),
    ));
    for (label, prefix) in [
        ("root volume", "root_volume"),
        ("data volume", "data_volume"),
    ] {
        if let Some(size) = int(&format!("{prefix}_size")) {
            let volume = Volume {
                volume_type: text(&format!("{prefix}_type")).unwrap_or("gp3"),
                size_gb: size,
                iops: int(&format!("{prefix}_iops")),
                throughput: int(&format!("{prefix}_throughput")),
            };
            out.extend(volume_lines(r.address, label, volume, region, prices));
        }
    }
    // A launch setting in the graph; in the state, the address the instance has.
    let public = r
        .attrs
        .get("associate_public_ip_address")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || r.outputs.is_some_and(|o| o.contains_key("public_ip"));
    if public {
        out.push(priced_line(
            r.address,
            "public IPv4 address".into(),
            Category::Networking,
            HOURS_PER_MONTH,
            PriceKind::Ipv4,
            prices.get(PriceKind::Ipv4, region, "public"),
            || format!("no public IPv4 price for {region}"),
        ));
    }
    if r.address.name == "replica" {
        let inter_region = prices
            .get(PriceKind::Transfer, region, "inter-region")
            .map(|p| format!("; to another region ${p}/GB"))
            .unwrap_or_default();
        out.push(Line {
            address: r.address.clone(),
            item: "replication traffic".into(),
            category: Category::Networking,
            quantity: None,
            unit: PriceKind::Transfer.unit(),
            unit_price: None,
            monthly: Amount::Usage,
            note: Some(format!(
                "billed per GB of WAL sent; free within one availability zone over private addresses (the cluster's subnet){inter_region}"
            )),
        });
    }
    out
}

/// Sums of known amounts, and how many items they leave out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    #[serde(serialize_with = "ser_cents")]
    pub compute: f64,
    #[serde(serialize_with = "ser_cents")]
    pub storage: f64,
    #[serde(serialize_with = "ser_cents")]
    pub networking: f64,
    #[serde(serialize_with = "ser_cents")]
    pub total: f64,
    /// False when some item's price is unknown: the total is then a lower bound.
    pub complete: bool,
    pub unknown_items: usize,
    /// Items billed by use (not included).
    pub usage_based_items: usize,
}

impl Totals {
    fn of(lines: &[Line]) -> Totals {
        let mut t = Totals::default();
        for l in lines {
            match l.monthly {
                Amount::Known(v) => {
                    match l.category {
                        Category::Compute => t.compute += v,
                        Category::Storage => t.storage += v,
                        Category::Networking => t.networking += v,
                    }
                    t.total += v;
                }
                Amount::Unknown => t.unknown_items += 1,
                Amount::Usage => t.usage_based_items += 1,
            }
        }
        t.complete = t.unknown_items == 0;
        t
    }

    /// `$106.85`, or `$60.74 + 1 item of unknown price`.
    pub fn total_text(&self) -> String {
        match self.unknown_items {
            0 => money(self.total),
            1 => format!("{} + 1 item of unknown price", money(self.total)),
            n => format!("{} + {n} items of unknown price", money(self.total)),
        }
    }
}

/// A cluster's monthly cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub currency: &'static str,
    pub period: &'static str,
    pub hours_per_month: f64,
    pub region: String,
    pub lines: Vec<Line>,
    pub totals: Totals,
    /// Resources by kind, plus EBS volumes and public IPv4 addresses.
    pub resource_counts: BTreeMap<String, usize>,
    /// The price tables used, the embedded one first.
    pub price_sources: Vec<String>,
}

pub fn estimate(resources: &[Priced<'_>], region: &str, prices: &PriceTable) -> Estimate {
    let mut lines = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // By address (primary, then replicas in order), not in dependency order.
    let mut resources = resources.to_vec();
    resources.sort_by(|a, b| a.address.cmp(b.address));
    for r in &resources {
        *counts.entry(r.address.kind.to_string()).or_default() += 1;
        lines.extend(resource_lines(*r, region, prices));
    }
    for l in &lines {
        if l.unit == PriceKind::Ebs.unit() {
            *counts.entry("ebs_volume".into()).or_default() += 1;
        } else if l.item == "public IPv4 address" {
            *counts.entry("public_ipv4".into()).or_default() += 1;
        }
    }
    Estimate {
        currency: CURRENCY,
        period: "monthly",
        hours_per_month: HOURS_PER_MONTH,
        region: region.to_string(),
        totals: Totals::of(&lines),
        lines,
        resource_counts: counts,
        price_sources: prices.sources.clone(),
    }
}

fn unit_price_text(l: &Line) -> String {
    match (l.unit_price, l.monthly) {
        (_, Amount::Usage) => format!("per {}", l.unit),
        (Some(p), _) => format!("${p}/{}", l.unit),
        (None, _) => "unknown".into(),
    }
}

fn quantity_text(l: &Line) -> String {
    match l.quantity {
        None => "usage-based".into(),
        Some(q) => {
            let unit = match l.unit {
                "hour" => "hours",
                u => u,
            };
            format!("{q} {unit}")
        }
    }
}

/// The estimate as a table, totals and counts.
pub fn render(e: &Estimate, cluster: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Monthly cost of cluster {cluster} in {} ({}, on-demand, {} hours a month):\n",
        e.region, e.currency, e.hours_per_month
    );
    let rows: Vec<[String; 5]> = e
        .lines
        .iter()
        .map(|l| {
            [
                l.address.to_string(),
                l.item.clone(),
                quantity_text(l),
                unit_price_text(l),
                l.monthly.to_string(),
            ]
        })
        .collect();
    let head = ["RESOURCE", "ITEM", "QUANTITY", "UNIT PRICE", "MONTHLY"].map(String::from);
    let mut w = [0; 5];
    for row in std::iter::once(&head).chain(&rows) {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut last = String::new();
    for (n, row) in std::iter::once(&head).chain(&rows).enumerate() {
        // The resource is named once, on its first line.
        let resource = if n > 0 && row[0] == last { "" } else { &row[0] };
        last = row[0].clone();
        let _ = writeln!(
            out,
            "  {:<a$}  {:<b$}  {:<c$}  {:<d$}  {:>e$}",
            resource,
            row[1],
            row[2],
            row[3],
            row[4],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        );
    }
    // A note shared by several resources (replication traffic) is printed once.
    let mut notes: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for l in &e.lines {
        if let Some(note) = &l.note {
            match notes
                .iter_mut()
                .find(|(i, n, _)| *i == l.item && *n == note)
            {
                Some((_, _, addresses)) => addresses.push(l.address.to_string()),
                None => notes.push((&l.item, note, vec![l.address.to_string()])),
            }
        }
    }
    for (item, note, addresses) in notes {
        let _ = writeln!(out, "  note: {item} of {}: {note}", addresses.join(", "));
    }
    let t = &e.totals;
    let _ = writeln!(out);
    for (name, v) in [
        ("Compute", t.compute),
        ("Storage", t.storage),
        ("Networking", t.networking),
    ] {
        let _ = writeln!(out, "  {name:<11} {:>10}", money(v));
    }
    let _ = writeln!(out, "  {:<11} {:>10}", "Total", t.total_text());
    if t.unknown_items > 0 {
        let _ = writeln!(
            out,
            "  The total leaves out {} of unknown price: it is at least {}.",
            plural(t.unknown_items, "item"),
            money(t.total)
        );
    }
    if t.usage_based_items > 0 {
        let _ = writeln!(
            out,
            "  Not included: {} billed by use.",
            plural(t.usage_based_items, "item")
        );
    }
    let counts: Vec<String> = e
        .resource_counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let _ = writeln!(out, "  Resources: {}.", counts.join(", "));
    let _ = writeln!(out, "  Prices: {}.", e.price_sources.join(", then "));
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// One resource's monthly cost before and after a plan (None: it does not exist then).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceCost {
    pub address: Address,
    pub before: Option<Amount>,
    pub after: Option<Amount>,
    pub difference: Amount,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanTotals {
    #[serde(serialize_with = "ser_cents")]
    pub before: f64,
    #[serde(serialize_with = "ser_cents")]
    pub after: f64,
    #[serde(serialize_with = "ser_cents")]
    pub difference: f64,
    /// False when an item's price is unknown (before or after): the sums leave it out.
    pub complete: bool,
    pub unknown_items_before: usize,
    pub unknown_items_after: usize,
}

/// A plan's monthly cost: per billed resource and in total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanCost {
    pub currency: &'static str,
    pub hours_per_month: f64,
    pub resources: Vec<ResourceCost>,
    pub total: PlanTotals,
}

/// The resource's monthly sum: unknown when one of its items is.
fn resource_amount(lines: &[Line]) -> Amount {
    lines
        .iter()
        .try_fold(Amount::Known(0.0), |acc, l| match (acc, l.monthly) {
            (_, Amount::Unknown) => None,
            (Amount::Known(a), Amount::Known(v)) => Some(Amount::Known(a + v)),
            (acc, _) => Some(acc),
        })
        .unwrap_or(Amount::Unknown)
}

/// Why a provider bills nothing, or None for one that does.
pub fn not_billed(spec: &crate::spec::ClusterSpec) -> Option<&'static str> {
    use crate::spec::ProviderKind;
    match spec.provider {
        ProviderKind::Aws => None,
        ProviderKind::Docker => Some("local Docker containers"),
        ProviderKind::Hosts => Some("machines you listed; pgform makes no cloud resources"),
    }
}

/// Before: the plan's refreshed state. After: that state with the plan's changes made
/// (what is deleted gone, what is created or changed as the plan makes it).
pub fn plan_cost(plan: &Plan, region: &str, prices: &PriceTable) -> PlanCost {
    let before = from_state(&plan.prior);
    let mut after: BTreeMap<&Address, Priced<'_>> =
        before.iter().map(|p| (p.address, *p)).collect();
    for c in &plan.changes {
        match (&c.action, &c.desired) {
            (Action::Delete, _) => {
                after.remove(&c.address);
            }
            (_, Some(d)) => {
                after.insert(
                    &c.address,
                    Priced {
                        address: &c.address,
                        attrs: &d.attrs,
                        outputs: None,
                    },
                );
            }
            (_, None) => {}
        }
    }
    let lines_of = |set: &[Priced<'_>]| -> BTreeMap<Address, Vec<Line>> {
        let mut m: BTreeMap<Address, Vec<Line>> = BTreeMap::new();
        for r in set {
            let lines = resource_lines(*r, region, prices);
            if !lines.is_empty() {
                m.insert(r.address.clone(), lines);
            }
        }
        m
    };
    let before_lines = lines_of(&before);
    let after_set: Vec<Priced<'_>> = after.into_values().collect();
    let after_lines = lines_of(&after_set);
    let mut addresses: Vec<&Address> = before_lines.keys().chain(after_lines.keys()).collect();
    addresses.sort();
    addresses.dedup();
    let resources = addresses
        .into_iter()
        .map(|a| {
            let b = before_lines.get(a).map(|l| resource_amount(l));
            let n = after_lines.get(a).map(|l| resource_amount(l));
            let value = |x: Option<Amount>| match x {
                None => Some(0.0),
                Some(x) => x.known(),
            };
            let difference = match (value(b), value(n)) {
                (Some(b), Some(n)) => Amount::Known(n - b),
                _ => Amount::Unknown,
            };
            ResourceCost {
                address: a.clone(),
                before: b,
                after: n,
                difference,
            }
        })
        .collect();
    let all = |m: &BTreeMap<Address, Vec<Line>>| {
        Totals::of(&m.values().flatten().cloned().collect::<Vec<_>>())
    };
    let (tb, ta) = (all(&before_lines), all(&after_lines));
    PlanCost {
        currency: CURRENCY,
        hours_per_month: HOURS_PER_MONTH,
        resources,
        total: PlanTotals {
            before: tb.total,
            after: ta.total,
            difference: ta.total - tb.total,
            complete: tb.complete && ta.complete,
            unknown_items_before: tb.unknown_items,
            unknown_items_after: ta.unknown_items,
        },
    }
}

/// The plan's cost section: each billed resource's before -> after and difference.
pub fn render_plan_cost(c: &PlanCost) -> String {
    let mut out = format!(
        "\nMonthly cost ({}, on-demand, {} hours a month; `pgform cost` lists the items):\n",
        c.currency, c.hours_per_month
    );
    let show = |a: Option<Amount>| a.map_or("-".to_string(), |a| a.to_string());
    let mut rows: Vec<[String; 4]> = c
        .resources
        .iter()
        .map(|r| {
            [
                r.address.to_string(),
                show(r.before),
                show(r.after),
                match r.difference {
                    Amount::Known(v) => signed(v),
                    other => other.to_string(),
                },
            ]
        })
        .collect();
    let t = &c.total;
    let with_unknown = |v: f64, n: usize| match n {
        0 => money(v),
        _ => format!("{} + unknown", money(v)),
    };
    rows.push([
        "Total".into(),
        with_unknown(t.before, t.unknown_items_before),
        with_unknown(t.after, t.unknown_items_after),
        if t.complete {
            signed(t.difference)
        } else {
            format!("{} (known items)", signed(t.difference))
        },
    ]);
    let mut w = [0; 4];
    for row in &rows {
        for (i, x) in row.iter().enumerate() {
            w[i] = w[i].max(x.len());
        }
    }
    for row in &rows {
        let _ = writeln!(
            out,
            "  {:<a$}  {:>b$} -> {:<c$}  {:>d$}",
            row[0],
            row[1],
            row[2],
            row[3],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3]
        );
    }
    if !t.complete {
        let _ = writeln!(
            out,
            "  Some items have no known price (see `pgform cost`): the totals leave them out."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(ty: &str, public: bool) -> Attrs {
        let mut a = Attrs::new();
        a.insert("instance_type".into(), Value::str(ty));
        a.insert("root_volume_size".into(), Value::Int(20));
        a.insert("root_volume_type".into(), Value::str("gp3"));
        a.insert("associate_public_ip_address".into(), Value::Bool(public));
        a
    }

    fn one(address: &Address, attrs: &Attrs, region: &str) -> Estimate {
        let r = [Priced {
            address,
            attrs,
            outputs: None,
        }];
        estimate(&r, region, &PriceTable::embedded())
    }

    #[test]
    fn known_public_prices_per_month() {
        let a = Address::new(Kind::Instance, "primary");
        let e = one(&a, &instance("t3.medium", false), "us-east-1");
        assert_eq!(e.lines[0].unit_price, Some(0.0416));
        assert_eq!(e.lines[0].monthly.to_string(), "$30.37");
        assert_eq!(e.lines[1].item, "root volume gp3");
        assert_eq!(e.lines[1].unit_price, Some(0.08));
        assert_eq!(e.lines[1].monthly.to_string(), "$1.60");
        assert_eq!(e.totals.compute, 0.0416 * 730.0);
        assert_eq!(money(e.totals.total), "$31.97");
        assert!(e.totals.complete);
        for (ty, region, hourly) in [
            ("t3a.large", "us-east-1", 0.0752),
            ("m6i.large", "eu-west-1", 0.107),
        ] {
            let e = one(&a, &instance(ty, false), region);
            assert_eq!(e.lines[0].unit_price, Some(hourly), "{ty} {region}");
            assert_eq!(e.lines[0].monthly, Amount::Known(hourly * 730.0));
        }
    }

    #[test]
    fn gp3_bills_only_what_is_above_its_included_iops_and_throughput() {
        let a = Address::new(Kind::Instance, "primary");
        let p = PriceTable::embedded();
        let lines = volume_lines(
            &a,
            "data volume",
            Volume {
                volume_type: "gp3",
                size_gb: 100,
                iops: Some(4000),
                throughput: Some(125),
            },
            "us-east-1",
            &p,
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1].quantity, Some(1000.0));
        assert_eq!(lines[1].monthly, Amount::Known(1000.0 * 0.005));
        assert_eq!(lines[1].monthly.to_string(), "$5.00");
        let lines = volume_lines(
            &a,
            "data volume",
            Volume {
                volume_type: "gp3",
                size_gb: 100,
                iops: Some(3000),
                throughput: Some(250),
            },
            "us-east-1",
            &p,
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].item, "data volume gp3 throughput");
        assert_eq!(lines[1].quantity, Some(125.0));
        // io1 bills every IOPS.
        let lines = volume_lines(
            &a,
            "data volume",
            Volume {
                volume_type: "io1",
                size_gb: 100,
                iops: Some(1000),
                throughput: None,
            },
            "us-east-1",
            &p,
        );
        assert_eq!(lines[1].monthly, Amount::Known(65.0));
    }

    #[test]
    fn unknown_prices_are_unknown_and_the_total_says_so() {
        let a = Address::new(Kind::Instance, "primary");
        let e = one(&a, &instance("t9.huge", true), "us-east-1");
        assert_eq!(e.lines[0].monthly, Amount::Unknown);
        assert_eq!(e.lines[0].monthly.to_string(), "unknown");
        assert!(
            e.lines[0]
                .note
                .as_deref()
                .unwrap()
                .contains("t9.huge in us-east-1")
        );
        assert!(!e.totals.complete);
        assert_eq!(e.totals.unknown_items, 1);
        assert_eq!(e.totals.total_text(), "$5.25 + 1 item of unknown price");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["lines"][0]["monthly"], "unknown");
        assert_eq!(json["lines"][0]["unit_price"], serde_json::Value::Null);
        let text = render(&e, "demo");
        assert!(
            text.contains("leaves out 1 item of unknown price"),
            "{text}"
        );
        // An unknown region: every price unknown, nothing is $0.
        let e = one(&a, &instance("t3.medium", true), "mars-north-1");
        assert!(e.lines.iter().all(|l| l.monthly == Amount::Unknown));
        assert_eq!(e.totals.unknown_items, 3);
    }

    #[test]
    fn replicas_list_replication_traffic_as_usage_based() {
        let a = Address::indexed(Kind::Instance, "replica", 0);
        let e = one(&a, &instance("t3.medium", true), "us-east-1");
        let l = e.lines.last().unwrap();
        assert_eq!(l.monthly, Amount::Usage);
        assert_eq!(l.quantity, None);
        assert_eq!(e.totals.usage_based_items, 1);
        assert!(e.totals.complete);
        assert_eq!(e.lines[2].item, "public IPv4 address");
        assert_eq!(e.totals.networking, 0.005 * 730.0);
        assert_eq!(e.resource_counts["public_ipv4"], 1);
        assert_eq!(e.resource_counts["ebs_volume"], 1);
    }

    #[test]
    fn spec_graph_estimate_has_every_instance_and_free_network() {
        let spec = crate::spec::parse_str(
            "name = \"c\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"k\"\n[instances]\ntype = \"t3.medium\"\ndata_volume_size = 50\n[postgres]\nreplicas = 2\n",
            std::path::Path::new("c.toml"),
        )
        .unwrap()
        .spec;
        let g = crate::graph::build(&spec, &Default::default()).unwrap();
        let e = estimate(&from_graph(&g), "us-east-1", &PriceTable::embedded());
        assert_eq!(e.resource_counts["aws_instance"], 3);
        assert_eq!(e.resource_counts["ebs_volume"], 6);
        let compute: Vec<_> = e
            .lines
            .iter()
            .filter(|l| l.category == Category::Compute)
            .collect();
        assert_eq!(compute.len(), 3);
        assert!((e.totals.compute - 3.0 * 30.368).abs() < 1e-9);
        // 3 x (20 + 50) GB of gp3.
        assert!((e.totals.storage - 210.0 * 0.08).abs() < 1e-9);
    }

    #[test]
    fn plan_cost_shows_what_a_change_adds() {
        use crate::plan::{Change, PLAN_FORMAT_VERSION};
        let primary = Address::new(Kind::Instance, "primary");
        let replica = Address::indexed(Kind::Instance, "replica", 0);
        let mut prior = BTreeMap::new();
        prior.insert(
            primary.clone(),
            ResourceState {
                id: Some("i-1".into()),
                attrs: instance("t3.medium", false),
                outputs: Default::default(),
                depends_on: Default::default(),
                client_token: None,
            },
        );
        let mut bigger = instance("t3a.large", false);
        bigger.remove("associate_public_ip_address");
        let plan = Plan {
            format_version: PLAN_FORMAT_VERSION,
            cluster: "c".into(),
            lineage: "l".into(),
            serial: 1,
            destroy: false,
            drift: vec![],
            changes: vec![Change {
                address: replica.clone(),
                action: Action::Create,
                reason: String::new(),
                id: None,
                attrs: vec![],
                desired: Some(crate::graph::Resource::new(replica.clone(), bigger, &[])),
            }],
            prior,
        };
        let c = plan_cost(&plan, "us-east-1", &PriceTable::embedded());
        assert_eq!(c.resources.len(), 2);
        assert_eq!(c.resources[0].before, c.resources[0].after);
        assert_eq!(c.resources[0].difference, Amount::Known(0.0));
        let r = &c.resources[1];
        assert_eq!(r.before, None);
        let added = 0.0752 * 730.0 + 20.0 * 0.08;
        assert_eq!(r.difference.known().map(cents), Some(cents(added)));
        assert_eq!(cents(c.total.difference), cents(added));
        let text = render_plan_cost(&c);
        assert!(text.contains("aws_instance.replica[0]"), "{text}");
        assert!(text.contains("+$56.50"), "{text}");
        // Deleting it takes the same amount off.
        let mut destroy = plan.clone();
        destroy.prior.insert(
            replica.clone(),
            ResourceState {
                id: Some("i-2".into()),
                attrs: plan.changes[0].desired.as_ref().unwrap().attrs.clone(),
                outputs: Default::default(),
                depends_on: Default::default(),
                client_token: None,
            },
        );
        destroy.changes[0].action = Action::Delete;
        destroy.changes[0].desired = None;
        let c = plan_cost(&destroy, "us-east-1", &PriceTable::embedded());
        assert_eq!(cents(c.total.difference), -cents(added));
        assert_eq!(c.resources[1].after, None);
    }
}
