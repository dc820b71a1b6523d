//! Terraform export: the resource graph as HCL (versions.tf, variables.tf, main.tf, outputs.tf).
//!
//! The HCL is generated from the very [`ResourceGraph`] the AWS provider applies: every
//! graph resource becomes a Terraform resource of the same type and name, with the same
//! attributes (through the small mapping table of [`resource_block`] where Terraform
//! spells an attribute differently), the same tags and the same dependencies
//! (`Value::Ref` becomes `<type>.<name>.id`; ordering-only dependencies become
//! `depends_on`). Nothing here does I/O: [`render`] and [`export`] return [`Files`].
//!
//! What Terraform needs beyond the graph:
//! - The route table's `gateway_id` becomes an inline `route` to 0.0.0.0/0 and its
//!   `subnet_id` an `aws_route_table_association` of the same name (the AWS provider
//!   makes the same route and association inside its route-table step).
//! - The security group gets an explicit allow-all `egress` block: Terraform removes
//!   AWS's default egress rule from groups it manages, pgform keeps it.
//! - Values only the cloud knows (lookups) become data sources: the newest image
//!   matching `ami_owner`/`ami_name` (`data.aws_ami.default`), an existing subnet and
//!   its VPC (`data.aws_subnet.existing`, `data.aws_vpc.existing`); the public key is
//!   `file(var.public_key_file)`.
//! - The replication password is a `sensitive` variable without a default: it never
//!   appears in the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::{ExportError, Files};
use crate::graph::{self, Address, Kind, Lookups, Resource, SubnetInfo, Value};
use crate::spec::{ClusterSpec, ProviderKind};

/// The aws provider's version constraint.
pub const AWS_PROVIDER_VERSION: &str = "~> 5.0";
/// The Terraform version constraint.
pub const TERRAFORM_VERSION: &str = ">= 1.5";
/// Where the data volume is attached (as the AWS provider does).
const DATA_DEVICE: &str = "/dev/sdf";
/// Name of the image data source (`data.aws_ami.default`).
const AMI_DATA: &str = "data.aws_ami.default.id";
/// Prefix marking a lookup value that is an HCL expression rather than a literal (see
/// [`offline_lookups`]). Starts with a control character that no AWS id contains.
const EXPR_MARK: &str = "\u{1}hcl:";

/// Terraform files for `spec` without any cloud call or file read: unknown lookups
/// become data sources, the public key `file(var.public_key_file)`.
pub fn export(spec: &ClusterSpec) -> Result<Files, ExportError> {
    render(spec, &offline_lookups(spec))
}

/// Lookups for an export without cloud access: the existing subnet's facts are HCL
/// expressions over `data.aws_subnet.existing` / `data.aws_vpc.existing`, the image is
/// left unknown (rendered as `data.aws_ami.default.id`), the public key is left empty
/// (rendered as `file(var.public_key_file)`).
pub fn offline_lookups(spec: &ClusterSpec) -> Lookups {
    let expr = |e: &str| format!("{EXPR_MARK}{e}");
    Lookups {
        subnet: spec.network.subnet_id.as_ref().map(|_| SubnetInfo {
            id: expr("data.aws_subnet.existing.id"),
            vpc_id: expr("data.aws_subnet.existing.vpc_id"),
            vpc_cidr: expr("data.aws_vpc.existing.cidr_block"),
            availability_zone: expr("data.aws_subnet.existing.availability_zone"),
        }),
        ..Lookups::default()
    }
}

/// The HCL expression a lookup value stands for, when it is one made by
/// [`offline_lookups`].
pub fn lookup_expression(value: &str) -> Option<&str> {
    value.strip_prefix(EXPR_MARK)
}

/// Renders the Terraform files of `spec`'s resource graph, built with `lookups`. Pure.
pub fn render(spec: &ClusterSpec, lookups: &Lookups) -> Result<Files, ExportError> {
    if spec.provider != ProviderKind::Aws {
        return Err(ExportError::Input(format!(
            "provider: the Terraform export covers provider \"aws\" only, and this spec uses \
             \"{}\"\n    fix: set provider = \"aws\" in the spec to export it as Terraform",
            spec.provider.name()
        )));
    }
    // An existing subnet the caller did not look up is read by Terraform instead.
    let offline;
    let lookups = if spec.network.subnet_id.is_some() && lookups.subnet.is_none() {
        offline = Lookups {
            subnet: offline_lookups(spec).subnet,
            ..lookups.clone()
        };
        &offline
    } else {
        lookups
    };
    let graph = graph::build(spec, lookups)
        .map_err(|e| ExportError::Input(format!("cannot build the resource graph: {e}")))?;
    let cx = Cx { spec };

    // Group indexed resources (`aws_instance.replica[i]`) by type and name.
    let mut groups: BTreeMap<(Kind, String), Vec<&Resource>> = BTreeMap::new();
    for r in graph.in_order().filter(|r| r.address.index.is_some()) {
        groups
            .entry((r.address.kind, r.address.name.clone()))
            .or_default()
            .push(r);
    }
    for members in groups.values_mut() {
        members.sort_by_key(|r| r.address.index);
    }
    // No replicas: the replica block is still written (with count = 0), from the graph
    // of the same spec with one replica, so that `replica_count` can scale it up.
    let template_graph;
    let replica = (Kind::Instance, "replica".to_string());
    if !groups.contains_key(&replica) {
        let mut one = spec.clone();
        one.postgres.replicas = 1;
        template_graph = graph::build(&one, lookups)
            .map_err(|e| ExportError::Input(format!("cannot build the resource graph: {e}")))?;
        if let Some(r) = template_graph.get(&Address::indexed(Kind::Instance, "replica", 0)) {
            groups.insert(replica.clone(), vec![r]);
        }
    }

    let mut main = String::new();
    let _ = writeln!(
        main,
        "# Generated by `pgform export terraform` from cluster \"{}\": the resources pgform's\n\
         # AWS provider makes, with the same addresses, attributes, tags and dependencies.",
        spec.name
    );
    for block in data_blocks(spec, &graph) {
        main.push('\n');
        write_node(&mut main, &block, 0);
    }
    // Resources in dependency order; each counted group where its first member is.
    let mut seen_groups = BTreeSet::new();
    for r in graph.in_order().chain(
        groups
            .get(&replica)
            .into_iter()
            .flatten()
            .copied()
            .filter(|r| graph.get(&r.address).is_none()),
    ) {
        let blocks = match r.address.index {
            None => resource_blocks(&cx, r, None)?,
            Some(_) => {
                let key = (r.address.kind, r.address.name.clone());
                if !seen_groups.insert(key.clone()) {
                    continue;
                }
                counted_blocks(&cx, &groups[&key])?
            }
        };
        for block in blocks {
            main.push('\n');
            write_node(&mut main, &block, 0);
        }
    }

    let mut files = Files::new();
    files.insert(PathBuf::from("versions.tf"), versions_tf());
    files.insert(PathBuf::from("variables.tf"), variables_tf(spec));
    files.insert(PathBuf::from("main.tf"), main);
    files.insert(PathBuf::from("outputs.tf"), outputs_tf(spec));
    Ok(files)
}

struct Cx<'a> {
    spec: &'a ClusterSpec,
}

/// How strings of one resource are turned into HCL: the cluster name becomes
/// `var.cluster_name`, and in a counted block the index becomes `count.index`.
#[derive(Clone, Copy)]
struct StrCx<'a> {
    cluster: &'a str,
    count: Option<(&'a str, u32)>,
}

// ---------------------------------------------------------------------------------------
// A tiny HCL model and its canonical (`terraform fmt`) writer.

#[derive(Debug, Clone, PartialEq)]
enum Val {
    /// A single-line expression, already HCL text.
    Line(String),
    /// A multi-line object constructor: keys (HCL text) and values.
    Object(Vec<(String, Val)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Attr(String, Val),
    Block(String, Vec<String>, Vec<Node>),
    Blank,
}

fn attr(name: &str, v: impl Into<String>) -> Node {
    Node::Attr(name.to_string(), Val::Line(v.into()))
}

fn block(kind: &str, labels: &[&str], body: Vec<Node>) -> Node {
    Node::Block(
        kind.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        body,
    )
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

/// Writes a body: runs of consecutive single-line attributes have their `=` aligned, as
/// `terraform fmt` does; a multi-line value, a block or a blank line ends a run.
fn write_body(out: &mut String, nodes: &[Node], indent: usize) {
    let mut i = 0;
    while i < nodes.len() {
        let run_end = nodes[i..]
            .iter()
            .position(|n| !matches!(n, Node::Attr(_, Val::Line(_))))
            .map_or(nodes.len(), |p| i + p);
        if run_end > i {
            let width = nodes[i..run_end]
                .iter()
                .map(|n| match n {
                    Node::Attr(k, _) => k.chars().count(),
                    _ => 0,
                })
                .max()
                .unwrap_or(0);
            for n in &nodes[i..run_end] {
                if let Node::Attr(k, Val::Line(v)) = n {
                    pad(out, indent);
                    let _ = writeln!(out, "{k:<width$} = {v}");
                }
            }
            i = run_end;
            continue;
        }
        write_node(out, &nodes[i], indent);
        i += 1;
    }
}

fn write_node(out: &mut String, node: &Node, indent: usize) {
    match node {
        Node::Blank => out.push('\n'),
        Node::Attr(k, Val::Line(v)) => {
            pad(out, indent);
            let _ = writeln!(out, "{k} = {v}");
        }
        Node::Attr(k, Val::Object(entries)) => {
            pad(out, indent);
            let _ = writeln!(out, "{k} = {{");
            let inner: Vec<Node> = entries
                .iter()
                .map(|(k, v)| Node::Attr(k.clone(), v.clone()))
                .collect();
            write_body(out, &inner, indent + 1);
            pad(out, indent);
            out.push_str("}\n");
        }
        Node::Block(kind, labels, body) => {
            pad(out, indent);
            out.push_str(kind);
            for l in labels {
                let _ = write!(out, " {}", quote(l));
            }
            out.push_str(" {\n");
            write_body(out, body, indent + 1);
            pad(out, indent);
            out.push_str("}\n");
        }
    }
}

/// A quoted HCL string literal (interpolation and directive markers escaped).
fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A string as an HCL expression: a lookup expression as is, the cluster name as
/// `var.cluster_name` (also as a `name-` prefix or ` name` suffix), a counted block's
/// `name[i]` / `name-i` as `count.index`; the rest a quoted literal.
fn string_expr(s: &str, cx: StrCx) -> String {
    if let Some(e) = lookup_expression(s) {
        return e.to_string();
    }
    if s == cx.cluster {
        return "var.cluster_name".into();
    }
    let mut head = String::new();
    let mut tail = String::new();
    let mut rest = s;
    let prefix = format!("{}-", cx.cluster);
    let suffix = format!(" {}", cx.cluster);
    if let Some(r) = rest.strip_prefix(&prefix) {
        head.push_str("${var.cluster_name}-");
        rest = r;
    } else if let Some(r) = rest.strip_suffix(&suffix) {
        tail.push_str(" ${var.cluster_name}");
        rest = r;
    }
    let mut body = escape(rest);
    if let Some((name, i)) = cx.count {
        for (from, to) in [
            (format!("{name}[{i}]"), format!("{name}[${{count.index}}]")),
            (format!("{name}-{i}"), format!("{name}-${{count.index}}")),
        ] {
            body = replace_whole(&body, &from, &to);
        }
    }
    format!("\"{head}{body}{tail}\"")
}

/// Replaces `from` where it is not followed by another digit (`replica-1` is not the
/// start of `replica-10`).
fn replace_whole(s: &str, from: &str, to: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find(from) {
        let after = &rest[p + from.len()..];
        out.push_str(&rest[..p]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn ref_expr(target: &Address, field: &str) -> String {
    match target.index {
        Some(i) => format!("{}.{}[{i}].{field}", target.kind, target.name),
        None => format!("{}.{}.{field}", target.kind, target.name),
    }
}

/// A graph value as HCL.
fn value(v: &Value, cx: StrCx, what: &str) -> Result<Val, ExportError> {
    Ok(match v {
        Value::Ref { target } => Val::Line(ref_expr(target, "id")),
        Value::Unknown { .. } => {
            return Err(ExportError::Input(format!(
                "{what}: the value is known only after apply and has no Terraform form"
            )));
        }
        Value::Bool(b) => Val::Line(b.to_string()),
        Value::Int(i) => Val::Line(i.to_string()),
        Value::Str(s) => Val::Line(string_expr(s, cx)),
        Value::List(l) => {
            let mut items = Vec::new();
            for item in l {
                match value(item, cx, what)? {
                    Val::Line(s) => items.push(s),
                    Val::Object(_) => {
                        return Err(ExportError::Input(format!(
                            "{what}: a list of objects has no inline Terraform form here"
                        )));
                    }
                }
            }
            Val::Line(format!("[{}]", items.join(", ")))
        }
        Value::Map(m) => {
            let mut entries = Vec::new();
            for (k, v) in m {
                let key = if is_identifier(k) {
                    k.clone()
                } else {
                    quote(k)
                };
                entries.push((key, value(v, cx, what)?));
            }
            Val::Object(entries)
        }
    })
}

// ---------------------------------------------------------------------------------------
// Graph resources to Terraform blocks: the mapping table.

/// Attributes that Terraform names the same as the graph, per kind. Anything else is
/// mapped explicitly in [`resource_block`]; an attribute in neither is an error, so a
/// new graph attribute cannot be dropped from the export silently.
fn same_name(kind: Kind, attr: &str) -> bool {
    match kind {
        Kind::Vpc => matches!(attr, "cidr_block"),
        Kind::Subnet => matches!(attr, "vpc_id" | "cidr_block" | "availability_zone"),
        Kind::InternetGateway => matches!(attr, "vpc_id"),
        Kind::RouteTable => matches!(attr, "vpc_id"),
        Kind::SecurityGroup => matches!(attr, "name" | "description" | "vpc_id"),
        Kind::KeyPair => matches!(attr, "key_name"),
        Kind::Instance => matches!(
            attr,
            "ami"
                | "subnet_id"
                | "vpc_security_group_ids"
                | "key_name"
                | "associate_public_ip_address"
        ),
        Kind::DockerNetwork | Kind::DockerContainer | Kind::DockerVolume => false,
    }
}

/// One graph resource as Terraform blocks (the resource, plus a route table's
/// association). `count` is `(count expression, name, index)` for a counted block.
fn resource_block(
    cx: &Cx,
    r: &Resource,
    count: Option<(&str, u32)>,
    label: &str,
) -> Result<Vec<Node>, ExportError> {
    let kind = r.address.kind;
    let scx = StrCx {
        cluster: &cx.spec.name,
        count: count.map(|(_, i)| (r.address.name.as_str(), i)),
    };
    let what = |a: &str| format!("{}.{a}", r.address);
    let get = |a: &str| r.attrs.get(a);
    let mut head = Vec::new();
    let mut body = Vec::new();
    let mut blocks = Vec::new();
    let mut extra = Vec::new();
    if let Some((expr, _)) = count {
        head.push(attr("count", expr));
        head.push(Node::Blank);
    }
    for (name, v) in &r.attrs {
        let name = name.as_str();
        if name == "tags" {
            continue;
        }
        if same_name(kind, name) {
            let val = match (kind, name, v) {
                (Kind::Instance, "ami", Value::Unknown { .. }) => Val::Line(AMI_DATA.into()),
                (Kind::Vpc, "cidr_block", _) => Val::Line("var.vpc_cidr".into()),
                (Kind::Subnet, "cidr_block", _) if cx.spec.network.subnet_id.is_none() => {
                    Val::Line("var.subnet_cidr".into())
                }
                _ => value(v, scx, &what(name))?,
            };
            body.push(Node::Attr(name.to_string(), val));
            continue;
        }
        match (kind, name) {
            (Kind::Instance, "instance_type") => {
                let var = if r.address.index.is_some() {
                    "var.replica_instance_type"
                } else {
                    "var.instance_type"
                };
                body.push(attr("instance_type", var));
            }
            (Kind::KeyPair, "public_key") => {
                let expr = match v.as_str() {
                    Some("") | None => "file(var.public_key_file)".to_string(),
                    Some(_) => match value(v, scx, &what(name))? {
                        Val::Line(s) => s,
                        Val::Object(_) => unreachable_object(&what(name))?,
                    },
                };
                body.push(attr("public_key", expr));
            }
            (Kind::RouteTable, "gateway_id") => {
                let gw = line(value(v, scx, &what(name))?, &what(name))?;
                blocks.push(block(
                    "route",
                    &[],
                    vec![
                        attr("cidr_block", quote("0.0.0.0/0")),
                        attr("gateway_id", gw),
                    ],
                ));
            }
            (Kind::RouteTable, "subnet_id") => {
                let subnet = line(value(v, scx, &what(name))?, &what(name))?;
                extra.push(block(
                    "resource",
                    &["aws_route_table_association", label],
                    vec![
                        attr("subnet_id", subnet),
                        attr("route_table_id", ref_expr(&r.address, "id")),
                    ],
                ));
            }
            (Kind::SecurityGroup, "ingress") => {
                // The spec's lists are variables, one block each; the other rules
                // (members, the VPC) follow one by one.
                let lists = [
                    (22, "var.admin_cidrs", &cx.spec.access.admin_cidrs),
                    (5432, "var.client_cidrs", &cx.spec.access.client_cidrs),
                ];
                for (port, var, cidrs) in lists {
                    if !cidrs.is_empty() {
                        blocks.push(ingress_block(port, attr("cidr_blocks", var)));
                    }
                }
                for rule in v.as_list() {
                    let from_list = rule.as_map().is_some_and(|m| {
                        lists.iter().any(|(port, _, cidrs)| {
                            m.get("port").and_then(Value::as_int) == Some(*port)
                                && m.get("cidr")
                                    .and_then(Value::as_str)
                                    .is_some_and(|c| cidrs.iter().any(|x| x.to_string() == c))
                        })
                    });
                    if !from_list {
                        blocks.push(ingress(rule, scx, &what(name))?);
                    }
                }
                // Terraform drops AWS's default egress rule from the groups it manages.
                blocks.push(block(
                    "egress",
                    &[],
                    vec![
                        attr("from_port", "0"),
                        attr("to_port", "0"),
                        attr("protocol", quote("-1")),
                        attr("cidr_blocks", "[\"0.0.0.0/0\"]"),
                    ],
                ));
            }
            (Kind::Instance, "root_volume_size" | "root_volume_type") => {
                if name == "root_volume_size" {
                    blocks.push(volume_block(r, "root", scx)?);
                }
            }
            (Kind::Instance, "data_volume_size" | "data_volume_type") => {
                if name == "data_volume_size" {
                    blocks.push(volume_block(r, "data", scx)?);
                }
            }
            _ => {
                return Err(ExportError::Input(format!(
                    "{}: attribute `{name}` has no Terraform mapping (pgform bug: extend \
                     export::terraform)",
                    r.address
                )));
            }
        }
    }
    // Terraform's order: count, arguments, nested blocks, tags, depends_on.
    let mut nodes = head;
    nodes.extend(body);
    if !blocks.is_empty() {
        nodes.push(Node::Blank);
        nodes.extend(blocks);
    }
    // An unpinned image is looked up for new instances only: existing ones keep theirs,
    // as pgform does natively, instead of being replaced on every new Debian image.
    if kind == Kind::Instance && matches!(get("ami"), Some(Value::Unknown { .. })) {
        nodes.push(Node::Blank);
        nodes.push(block(
            "lifecycle",
            &[],
            vec![attr("ignore_changes", "[ami]")],
        ));
    }
    if let Some(tags) = get("tags") {
        nodes.push(Node::Blank);
        nodes.push(Node::Attr("tags".into(), value(tags, scx, &what("tags"))?));
    }
    // Dependencies that are not references already: ordering only.
    let mut refs = BTreeSet::new();
    for v in r.attrs.values() {
        v.refs(&mut refs);
    }
    let order: Vec<String> = r
        .depends_on
        .difference(&refs)
        .map(|a| match a.index {
            Some(i) => format!("{}.{}[{i}]", a.kind, a.name),
            None => format!("{}.{}", a.kind, a.name),
        })
        .collect();
    if !order.is_empty() {
        nodes.push(Node::Blank);
        nodes.push(attr("depends_on", format!("[{}]", order.join(", "))));
    }
    let mut out = vec![Node::Block(
        "resource".into(),
        vec![kind.type_name().to_string(), label.to_string()],
        nodes,
    )];
    for e in extra {
        out.push(Node::Blank);
        out.push(e);
    }
    Ok(out)
}

fn unreachable_object(what: &str) -> Result<String, ExportError> {
    Err(ExportError::Input(format!(
        "{what}: expected a single value, found a map"
    )))
}

fn line(v: Val, what: &str) -> Result<String, ExportError> {
    match v {
        Val::Line(s) => Ok(s),
        Val::Object(_) => unreachable_object(what),
    }
}

/// `{port, cidr}` / `{port, self}` as an inline `ingress` block.
fn ingress(rule: &Value, cx: StrCx, what: &str) -> Result<Node, ExportError> {
    let bad = || ExportError::Input(format!("{what}: malformed ingress rule {rule}"));
    let m = rule.as_map().ok_or_else(bad)?;
    let port = m.get("port").and_then(Value::as_int).ok_or_else(bad)?;
    let source = if let Some(cidr) = m.get("cidr") {
        let c = line(value(cidr, cx, what)?, what)?;
        attr("cidr_blocks", format!("[{c}]"))
    } else if m.get("self").and_then(Value::as_bool) == Some(true) {
        attr("self", "true")
    } else {
        return Err(bad());
    };
    Ok(ingress_block(port, source))
}

fn ingress_block(port: i64, source: Node) -> Node {
    block(
        "ingress",
        &[],
        vec![
            attr("from_port", port.to_string()),
            attr("to_port", port.to_string()),
            attr("protocol", quote("tcp")),
            source,
        ],
    )
}

/// `root_block_device` / `ebs_block_device` (at [`DATA_DEVICE`]), encrypted and deleted
/// with the instance, as the AWS provider makes them.
fn volume_block(r: &Resource, which: &str, cx: StrCx) -> Result<Node, ExportError> {
    let size = r.attrs.get(&format!("{which}_volume_size"));
    let kind = r.attrs.get(&format!("{which}_volume_type"));
    let what = format!("{}.{which}_volume_size", r.address);
    let mut body = Vec::new();
    let name = if which == "root" {
        "root_block_device"
    } else {
        body.push(attr("device_name", quote(DATA_DEVICE)));
        "ebs_block_device"
    };
    if let Some(size) = size {
        body.push(attr("volume_size", line(value(size, cx, &what)?, &what)?));
    }
    if let Some(kind) = kind {
        body.push(attr("volume_type", line(value(kind, cx, &what)?, &what)?));
    }
    body.push(attr("encrypted", "true"));
    body.push(attr("delete_on_termination", "true"));
    Ok(block(name, &[], body))
}

fn resource_blocks(
    cx: &Cx,
    r: &Resource,
    count: Option<(&str, u32)>,
) -> Result<Vec<Node>, ExportError> {
    resource_block(cx, r, count, &r.address.name)
}

/// Indexed resources (`aws_instance.replica[0..n]`). They become one block with `count`
/// when they differ only by their index (always so today), so that Terraform's addresses
/// are pgform's (`aws_instance.replica[1]`, also the `pgform:address` tag) and
/// `replica_count` scales the cluster. Should members ever differ in more than their
/// index, each is written as its own block named `<name>_<index>`.
fn counted_blocks(cx: &Cx, members: &[&Resource]) -> Result<Vec<Node>, ExportError> {
    let Some(first) = members.first() else {
        return Ok(Vec::new());
    };
    let count_expr = if first.address.kind == Kind::Instance && first.address.name == "replica" {
        "var.replica_count".to_string()
    } else {
        members.len().to_string()
    };
    let contiguous = members
        .iter()
        .enumerate()
        .all(|(i, r)| r.address.index == Some(i as u32));
    let mut rendered = Vec::new();
    for r in members {
        let i = r.address.index.unwrap_or(0);
        rendered.push(resource_blocks(cx, r, Some((&count_expr, i)))?);
    }
    if contiguous && rendered.windows(2).all(|w| w[0] == w[1]) {
        return Ok(rendered.swap_remove(0));
    }
    let mut out = Vec::new();
    for r in members {
        let label = format!("{}_{}", r.address.name, r.address.index.unwrap_or(0));
        if !out.is_empty() {
            out.push(Node::Blank);
        }
        out.extend(resource_block(cx, r, None, &label)?);
    }
    Ok(out)
}

/// Data sources for what only the cloud knows: the default image when an instance has
/// no pinned one, the existing subnet and its VPC.
fn data_blocks(spec: &ClusterSpec, graph: &graph::ResourceGraph) -> Vec<Node> {
    let mut out = Vec::new();
    let unknown_ami = spec.instances.ami.is_none()
        && (graph.in_order().any(|r| {
            r.address.kind == Kind::Instance
                && matches!(r.attrs.get("ami"), Some(Value::Unknown { .. }))
        }));
    if unknown_ami {
        out.push(block(
            "data",
            &["aws_ami", "default"],
            vec![
                attr("most_recent", "true"),
                attr("owners", format!("[{}]", quote(&spec.instances.ami_owner))),
                Node::Blank,
                block(
                    "filter",
                    &[],
                    vec![
                        attr("name", quote("name")),
                        attr("values", format!("[{}]", quote(&spec.instances.ami_name))),
                    ],
                ),
            ],
        ));
    }
    if let Some(id) = &spec.network.subnet_id {
        out.push(block(
            "data",
            &["aws_subnet", "existing"],
            vec![attr("id", quote(id))],
        ));
        out.push(block(
            "data",
            &["aws_vpc", "existing"],
            vec![attr("id", "data.aws_subnet.existing.vpc_id")],
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// versions.tf, variables.tf, outputs.tf

fn versions_tf() -> String {
    let mut out = String::new();
    let nodes = vec![
        block(
            "terraform",
            &[],
            vec![
                attr("required_version", quote(TERRAFORM_VERSION)),
                Node::Blank,
                block(
                    "required_providers",
                    &[],
                    vec![Node::Attr(
                        "aws".into(),
                        Val::Object(vec![
                            ("source".into(), Val::Line(quote("hashicorp/aws"))),
                            ("version".into(), Val::Line(quote(AWS_PROVIDER_VERSION))),
                        ]),
                    )],
                ),
            ],
        ),
        Node::Blank,
        block("provider", &["aws"], vec![attr("region", "var.region")]),
    ];
    write_body(&mut out, &nodes, 0);
    out
}

fn variable(name: &str, ty: &str, description: &str, default: Option<String>) -> Node {
    let mut body = vec![attr("description", quote(description)), attr("type", ty)];
    match default {
        Some(d) => body.push(attr("default", d)),
        // Secrets: no default, never shown by Terraform.
        None if name == "replication_password" => body.push(attr("sensitive", "true")),
        None => {}
    }
    block("variable", &[name], body)
}

fn variables_tf(spec: &ClusterSpec) -> String {
    use crate::spec::Role;
    let mut nodes = vec![
        variable(
            "region",
            "string",
            "AWS region of the cluster.",
            Some(quote(&spec.region)),
        ),
        variable(
            "cluster_name",
            "string",
            "Cluster name: prefixes resource names and tags every resource (pgform:cluster).",
            Some(quote(&spec.name)),
        ),
        variable(
            "instance_type",
            "string",
            "Instance type of the primary.",
            Some(quote(spec.instances.type_for(Role::Primary))),
        ),
        variable(
            "replica_instance_type",
            "string",
            "Instance type of the replicas.",
            Some(quote(spec.instances.type_for(Role::Replica))),
        ),
        variable(
            "replica_count",
            "number",
            "Number of streaming replicas.",
            Some(spec.postgres.replicas.to_string()),
        ),
        variable(
            "admin_cidrs",
            "list(string)",
            "CIDRs allowed to reach SSH (22). The rule exists when the list was not empty \
             at export.",
            Some(cidr_list(&spec.access.admin_cidrs)),
        ),
        variable(
            "client_cidrs",
            "list(string)",
            "CIDRs allowed to reach PostgreSQL (5432). The rule exists when the list was \
             not empty at export.",
            Some(cidr_list(&spec.access.client_cidrs)),
        ),
    ];
    if spec.network.subnet_id.is_none() {
        nodes.push(variable(
            "vpc_cidr",
            "string",
            "CIDR of the cluster's VPC.",
            Some(quote(&spec.network.vpc_cidr.to_string())),
        ));
        nodes.push(variable(
            "subnet_cidr",
            "string",
            "CIDR of the cluster's subnet, inside vpc_cidr.",
            Some(quote(&spec.network.subnet_cidr.to_string())),
        ));
    }
    if spec.ssh.key_name.is_none() {
        let path = spec
            .ssh
            .public_key_file
            .as_ref()
            .map(|p| quote(&p.display().to_string()));
        nodes.push(variable(
            "public_key_file",
            "string",
            "OpenSSH public key imported as the cluster's key pair.",
            path,
        ));
    }
    nodes.push(variable(
        "replication_password",
        "string",
        "Password of the replication role, for the host configuration (set it with \
         TF_VAR_replication_password; it is never written in these files).",
        None,
    ));
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_node(&mut out, n, 0);
    }
    out
}

fn cidr_list(cidrs: &[crate::spec::Cidr]) -> String {
    let items: Vec<String> = cidrs.iter().map(|c| quote(&c.to_string())).collect();
    format!("[{}]", items.join(", "))
}

fn output(name: &str, description: &str, value: &str) -> Node {
    block(
        "output",
        &[name],
        vec![
            attr("description", quote(description)),
            attr("value", value),
        ],
    )
}

fn outputs_tf(spec: &ClusterSpec) -> String {
    let (vpc, subnet) = match spec.network.subnet_id {
        Some(_) => (
            "data.aws_subnet.existing.vpc_id",
            "data.aws_subnet.existing.id",
        ),
        None => ("aws_vpc.main.id", "aws_subnet.main.id"),
    };
    let user = escape(&spec.postgres.replication_user);
    let nodes = [
        output(
            "primary_private_ip",
            "Private address of the primary.",
            "aws_instance.primary.private_ip",
        ),
        output(
            "primary_public_ip",
            "Public address of the primary (empty without one).",
            "aws_instance.primary.public_ip",
        ),
        if spec.ha.patroni() {
            // Any node may lead: every node, and libpq keeps the one that takes writes.
            output(
                "primary_connection",
                "Connection string of the leader (every node; libpq keeps the one that accepts writes), without a password.",
                &format!(
                    "\"postgresql://{user}@${{join(\",\", [for m in concat([aws_instance.primary], aws_instance.replica) : \"${{coalesce(m.public_ip, m.private_ip)}}:5432\"])}}/postgres?target_session_attrs=read-write\""
                ),
            )
        } else {
            output(
                "primary_connection",
                "Connection string of the primary, without a password.",
                &format!(
                    "\"postgresql://{user}@${{coalesce(aws_instance.primary.public_ip, aws_instance.primary.private_ip)}}:5432/postgres\""
                ),
            )
        },
        output(
            "replica_private_ips",
            "Private addresses of the replicas, by index.",
            "aws_instance.replica[*].private_ip",
        ),
        output(
            "replica_public_ips",
            "Public addresses of the replicas, by index.",
            "aws_instance.replica[*].public_ip",
        ),
        output("vpc_id", "The cluster's VPC.", vpc),
        output("subnet_id", "The cluster's subnet.", subnet),
        output(
            "security_group_id",
            "The cluster's security group.",
            "aws_security_group.main.id",
        ),
        output(
            crate::export::ansible::NODES_OUTPUT,
            "Every node (name, role, private and public address), primary first: the \
             Ansible export's inventory.py reads it.",
            &nodes_expr(),
        ),
    ];
    let mut out = String::new();
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        write_node(&mut out, n, 0);
    }
    out
}

/// The `pgform_nodes` output: the same names and roles as pgform's own inventory.
fn nodes_expr() -> String {
    let node = |name: &str, role: &str, r: &str| {
        format!(
            "{{ name = {name}, role = \"{role}\", private_address = {r}.private_ip, \
             public_address = {r}.public_ip }}"
        )
    };
    format!(
        "concat([{}], [for i, r in aws_instance.replica : {}])",
        node("\"primary\"", "primary", "aws_instance.primary"),
        node("\"replica-${i}\"", "replica", "r")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_and_template() {
        let cx = StrCx {
            cluster: "demo",
            count: Some(("replica", 1)),
        };
        assert_eq!(string_expr("demo", cx), "var.cluster_name");
        assert_eq!(
            string_expr("demo-replica-1", cx),
            "\"${var.cluster_name}-replica-${count.index}\""
        );
        assert_eq!(
            string_expr("aws_instance.replica[1]", cx),
            "\"aws_instance.replica[${count.index}]\""
        );
        assert_eq!(string_expr("replica-10", cx), "\"replica-10\"");
        assert_eq!(
            string_expr("pgform cluster demo", cx),
            "\"pgform cluster ${var.cluster_name}\""
        );
        assert_eq!(string_expr("a${b}%{c}\"\\", cx), "\"a$${b}%%{c}\\\"\\\\\"");
    }
}
