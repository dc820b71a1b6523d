//! The Terraform export: canonical for `terraform fmt`, parses as HCL, and is the same
//! resource graph pgform applies natively (parity), without the password in any file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use hcl::eval::{Context, Evaluate};
use pgform::export::terraform::{export, lookup_expression, offline_lookups, render};
use pgform::export::{ExportError, Files, write_files};
use pgform::graph::{self, Address, Kind, Value};
use pgform::spec::{ClusterSpec, parse_str};

const PASSWORD_ENV: &str = "pgform-env-secret-8c1f2a";
const PASSWORD_FILE: &str = "pgform-file-secret-77d0e9";
const PASSWORD_INLINE: &str = "pgform-inline-secret-31b4c6";

/// A TOML body under a fixed name and region, or a whole flat JSON payload (the old
/// API's) as it is.
fn spec(body: &str) -> ClusterSpec {
    let (text, path) = if body.starts_with('{') {
        (body.to_string(), "payload.json")
    } else {
        (
            format!("name = \"tfx\"\nregion = \"eu-west-1\"\n{body}"),
            "cluster.toml",
        )
    };
    match parse_str(&text, Path::new(path)) {
        Ok(loaded) => loaded.spec,
        Err(e) => panic!("test spec does not load: {e}\n{text}"),
    }
}

/// The specs under test: (name, spec body).
fn cases(password_file: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "new public network, key file, 3 replicas, data volume, client/admin CIDRs",
            "[network]\nvpc_cidr = \"10.20.0.0/16\"\nsubnet_cidr = \"10.20.1.0/24\"\n\
             availability_zone = \"eu-west-1a\"\n\
             [instances]\ntype = \"t3.large\"\nreplica_type = \"t3.medium\"\n\
             data_volume_size = 100\ndata_volume_type = \"st1\"\n\
             [ssh]\npublic_key_file = \"keys/id_ed25519.pub\"\n\
             [access]\nclient_cidrs = [\"10.0.0.0/16\", \"192.0.2.0/24\"]\n\
             admin_cidrs = [\"203.0.113.0/24\"]\n[postgres]\nreplicas = 3\n"
                .to_string(),
        ),
        (
            "existing subnet, key name, 1 replica, allow_vpc, password file",
            format!(
                "[network]\nsubnet_id = \"subnet-0abc123\"\n[ssh]\nkey_name = \"ops\"\n\
                 [access]\nallow_vpc = true\nadmin_cidrs = [\"198.51.100.0/24\"]\n\
                 [postgres]\nreplicas = 1\nreplication_password_file = \"{}\"\n",
                password_file.display()
            ),
        ),
        (
            "private new network, pinned AMI, 0 replicas, inline password",
            format!(
                "[network]\npublic = false\n[instances]\nami = \"ami-0123456789abcdef0\"\n\
                 root_volume_size = 40\n[ssh]\nkey_name = \"ops\"\n\
                 [postgres]\nreplicas = 0\nreplication_password = \"{PASSWORD_INLINE}\"\n"
            ),
        ),
        (
            "the old API's flat payload (existing subnet and key, 2 replicas)",
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flat-payload.json"),
            )
            .expect("examples/flat-payload.json"),
        ),
        (
            "defaults with a key file (2 replicas)",
            "[ssh]\npublic_key_file = \"~/.ssh/id.pub\"\n".to_string(),
        ),
        (
            "Patroni + etcd (2 replicas): member ports, a leader-following connection",
            "[ssh]\npublic_key_file = \"~/.ssh/id.pub\"\n[ha]\nmode = \"patroni\"\n".to_string(),
        ),
    ]
}

#[test]
fn export_is_formatted_parses_and_matches_the_graph() {
    // SAFETY: set before any thread of this test binary reads the environment.
    unsafe { std::env::set_var("PGFORM_REPLICATION_PASSWORD", PASSWORD_ENV) };
    let tmp = tempfile::tempdir().unwrap();
    let password_file = tmp.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD_FILE}\n")).unwrap();
    for (i, (name, body)) in cases(&password_file).into_iter().enumerate() {
        let spec = spec(&body);
        let files = export(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let dir = tmp.path().join(format!("case{i}"));
        write_files(&dir, &files).unwrap();
        assert_eq!(
            files
                .keys()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
            ["main.tf", "outputs.tf", "variables.tf", "versions.tf"],
            "{name}"
        );
        for (path, text) in &files {
            for secret in [PASSWORD_ENV, PASSWORD_FILE, PASSWORD_INLINE] {
                assert!(
                    !text.contains(secret),
                    "{name}: {} contains the password",
                    path.display()
                );
            }
        }
        terraform_fmt_check(&dir, name);
        let outputs = &files[Path::new("outputs.tf")];
        assert_eq!(
            outputs.contains("target_session_attrs=read-write"),
            spec.ha.patroni(),
            "{name}: under Patroni (only) primary_connection names every node\n{outputs}"
        );
        let parsed: BTreeMap<String, hcl::Body> = files
            .iter()
            .map(|(p, text)| {
                let body = hcl::parse(text).unwrap_or_else(|e| {
                    panic!("{name}: {} does not parse: {e}\n{text}", p.display())
                });
                (p.display().to_string(), body)
            })
            .collect();
        check_static(&spec, &parsed, name);
        parity(&spec, &parsed, name);
    }
}

/// `terraform fmt -check -diff`: skipped with a reason when the binary is missing,
/// unless CI is set.
fn terraform_fmt_check(dir: &Path, name: &str) {
    let out = match Command::new("terraform")
        .args(["fmt", "-check", "-diff"])
        .arg(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("terraform is required when CI is set: {e}");
            }
            eprintln!("skipping terraform fmt -check: cannot run terraform ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{name}: terraform fmt -check -diff failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixed parts: versions, variables (password sensitive, no default), outputs.
fn check_static(spec: &ClusterSpec, parsed: &BTreeMap<String, hcl::Body>, name: &str) {
    let versions = &parsed["versions.tf"];
    let tf = versions
        .blocks()
        .find(|b| b.identifier() == "terraform")
        .expect("terraform block");
    let text = hcl::format::to_string(tf).unwrap();
    assert!(text.contains(">= 1.5"), "{name}: {text}");
    assert!(
        text.contains("hashicorp/aws") && text.contains("~> 5.0"),
        "{name}: {text}"
    );
    let provider = versions
        .blocks()
        .find(|b| b.identifier() == "provider")
        .expect("provider block");
    assert_eq!(provider.labels()[0].as_str(), "aws");

    let vars = variables(&parsed["variables.tf"]);
    assert_eq!(vars["region"], hcl::Value::from(spec.region.as_str()));
    assert_eq!(vars["cluster_name"], hcl::Value::from(spec.name.as_str()));
    assert_eq!(
        vars["replica_count"],
        hcl::Value::from(spec.postgres.replicas)
    );
    let pw = parsed["variables.tf"]
        .blocks()
        .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == "replication_password")
        .unwrap_or_else(|| panic!("{name}: no replication_password variable"));
    let attrs: BTreeMap<&str, &hcl::Expression> = pw
        .body()
        .attributes()
        .map(|a| (a.key(), a.expr()))
        .collect();
    assert_eq!(attrs.get("sensitive"), Some(&&hcl::Expression::Bool(true)));
    assert!(
        !attrs.contains_key("default"),
        "{name}: password has a default"
    );

    let outputs: BTreeSet<&str> = parsed["outputs.tf"]
        .blocks()
        .filter(|b| b.identifier() == "output")
        .map(|b| b.labels()[0].as_str())
        .collect();
    for o in [
        "primary_private_ip",
        "primary_public_ip",
        "primary_connection",
        "replica_private_ips",
        "replica_public_ips",
        "vpc_id",
        "subnet_id",
        "security_group_id",
    ] {
        assert!(outputs.contains(o), "{name}: output {o} missing");
    }
}

/// Variable defaults, evaluated.
fn variables(body: &hcl::Body) -> BTreeMap<String, hcl::Value> {
    let ctx = Context::new();
    body.blocks()
        .filter(|b| b.identifier() == "variable")
        .filter_map(|b| {
            let default = b.body().attributes().find(|a| a.key() == "default")?;
            Some((
                b.labels()[0].as_str().to_string(),
                default.expr().evaluate(&ctx).unwrap(),
            ))
        })
        .collect()
}

/// A graph value in the form the HCL evaluates to: references (and lookups left to
/// Terraform) become `=<expression>`.
fn expected(v: &Value) -> hcl::Value {
    match v {
        Value::Ref { target } => hcl::Value::from(format!("={target}.id")),
        Value::Unknown { .. } => hcl::Value::from("=data.aws_ami.default.id"),
        Value::Bool(b) => hcl::Value::from(*b),
        Value::Int(i) => hcl::Value::from(*i),
        Value::Str(s) => match lookup_expression(s) {
            Some(e) => hcl::Value::from(format!("={e}")),
            None => hcl::Value::from(s.as_str()),
        },
        Value::List(l) => l.iter().map(expected).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), expected(v))).collect(),
    }
}

/// An evaluation context: variables at their defaults, `count.index`, every resource
/// and data source's attributes as `=<type>.<name>.<attr>` markers.
fn context(
    vars: &BTreeMap<String, hcl::Value>,
    main: &hcl::Body,
    index: Option<u32>,
) -> Context<'static> {
    let mut ctx = Context::new();
    ctx.declare_var(
        "var",
        vars.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<hcl::Value>(),
    );
    if let Some(i) = index {
        ctx.declare_var(
            "count",
            [("index", hcl::Value::from(i))]
                .into_iter()
                .collect::<hcl::Value>(),
        );
    }
    let mut types: BTreeMap<String, BTreeMap<String, hcl::Value>> = BTreeMap::new();
    let mut data: BTreeMap<String, BTreeMap<String, hcl::Value>> = BTreeMap::new();
    for b in main.blocks() {
        let (ty, name) = (b.labels()[0].as_str(), b.labels()[1].as_str());
        let prefix = if b.identifier() == "data" {
            format!("data.{ty}.{name}")
        } else {
            format!("{ty}.{name}")
        };
        let attrs: hcl::Value = [
            "id",
            "vpc_id",
            "cidr_block",
            "availability_zone",
            "key_name",
        ]
        .into_iter()
        .map(|a| (a, hcl::Value::from(format!("={prefix}.{a}"))))
        .collect();
        let target = if b.identifier() == "data" {
            &mut data
        } else {
            &mut types
        };
        target
            .entry(ty.to_string())
            .or_default()
            .insert(name.to_string(), attrs);
    }
    for (ty, names) in types {
        ctx.declare_var(ty, names.into_iter().collect::<hcl::Value>());
    }
    ctx.declare_var(
        "data",
        data.into_iter()
            .map(|(ty, names)| (ty, names.into_iter().collect::<hcl::Value>()))
            .collect::<hcl::Value>(),
    );
    ctx
}

fn eval(expr: &hcl::Expression, ctx: &Context, what: &str) -> hcl::Value {
    expr.evaluate(ctx)
        .unwrap_or_else(|e| panic!("{what}: cannot evaluate {expr}: {e}"))
}

fn attr<'a>(body: &'a hcl::Body, key: &str) -> Option<&'a hcl::Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// Every graph resource is an HCL resource of the same type and name (indexed ones
/// counted), with the same attributes, tags, references and dependencies; the HCL has
/// nothing else but route table associations.
fn parity(spec: &ClusterSpec, parsed: &BTreeMap<String, hcl::Body>, name: &str) {
    let graph = graph::build(spec, &offline_lookups(spec)).unwrap();
    let vars = variables(&parsed["variables.tf"]);
    let main = &parsed["main.tf"];
    let blocks: BTreeMap<(String, String), &hcl::Block> = main
        .blocks()
        .filter(|b| b.identifier() == "resource")
        .map(|b| {
            (
                (
                    b.labels()[0].as_str().to_string(),
                    b.labels()[1].as_str().to_string(),
                ),
                b,
            )
        })
        .collect();

    // The same resources, instances counted.
    let mut graph_counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in graph.in_order() {
        *graph_counts
            .entry((r.address.kind.to_string(), r.address.name.clone()))
            .or_default() += 1;
    }
    let mut hcl_counts = BTreeMap::new();
    for (key, b) in &blocks {
        if key.0 == "aws_route_table_association" {
            continue;
        }
        let n = match attr(b.body(), "count") {
            Some(e) => match eval(e, &context(&vars, main, None), "count") {
                hcl::Value::Number(n) => n.as_u64().unwrap(),
                other => panic!("{name}: count is {other}"),
            },
            None => 1,
        };
        if n > 0 {
            hcl_counts.insert(key.clone(), n);
        }
    }
    assert_eq!(hcl_counts, graph_counts, "{name}: resources differ");

    let refs_in = |text: &str| -> BTreeSet<Address> {
        graph
            .in_order()
            .map(|r| r.address.clone())
            .filter(|a| a.index.is_none())
            .filter(|a| {
                let t = format!("{}.{}", a.kind, a.name);
                text.match_indices(&t).any(|(p, _)| {
                    !text[..p].ends_with("data.")
                        && !text[p + t.len()..]
                            .starts_with(|c: char| c.is_alphanumeric() || c == '_')
                })
            })
            .collect()
    };

    for r in graph.in_order() {
        let what = format!("{name}: {}", r.address);
        let key = (r.address.kind.to_string(), r.address.name.clone());
        let b = blocks
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: no HCL block"));
        let body = b.body();
        let ctx = context(&vars, main, r.address.index);
        let nested = |kind: &str| -> Vec<&hcl::Body> {
            body.blocks()
                .filter(|b| b.identifier() == kind)
                .map(|b| b.body())
                .collect()
        };
        for (k, v) in &r.attrs {
            let want = expected(v);
            match (r.address.kind, k.as_str()) {
                (Kind::Instance, "root_volume_size" | "root_volume_type") => {
                    let root = nested("root_block_device");
                    assert_eq!(root.len(), 1, "{what}");
                    let field = k.replace("root_", "");
                    assert_eq!(
                        eval(attr(root[0], &field).unwrap(), &ctx, &what),
                        want,
                        "{what}.{k}"
                    );
                }
                (Kind::Instance, "data_volume_size" | "data_volume_type") => {
                    let ebs = nested("ebs_block_device");
                    assert_eq!(ebs.len(), 1, "{what}");
                    assert_eq!(
                        eval(attr(ebs[0], "device_name").unwrap(), &ctx, &what),
                        hcl::Value::from("/dev/sdf")
                    );
                    let field = k.replace("data_", "");
                    assert_eq!(
                        eval(attr(ebs[0], &field).unwrap(), &ctx, &what),
                        want,
                        "{what}.{k}"
                    );
                }
                (Kind::SecurityGroup, "ingress") => {
                    let want: BTreeSet<String> = v
                        .as_list()
                        .iter()
                        .map(|rule| {
                            let m = rule.as_map().unwrap();
                            let port = m["port"].as_int().unwrap();
                            match m.get("cidr") {
                                Some(c) => format!("{port} {}", expected(c)),
                                None => format!("{port} self"),
                            }
                        })
                        .collect();
                    // A block may carry a list of CIDRs (the spec's lists are
                    // variables): one rule per CIDR.
                    let got: BTreeSet<String> = nested("ingress")
                        .into_iter()
                        .flat_map(|rule| {
                            let from = eval(attr(rule, "from_port").unwrap(), &ctx, &what);
                            let to = eval(attr(rule, "to_port").unwrap(), &ctx, &what);
                            assert_eq!(from, to, "{what}: port range");
                            assert_eq!(
                                eval(attr(rule, "protocol").unwrap(), &ctx, &what),
                                hcl::Value::from("tcp")
                            );
                            match attr(rule, "cidr_blocks") {
                                Some(c) => match eval(c, &ctx, &what) {
                                    hcl::Value::Array(a) if !a.is_empty() => {
                                        a.iter().map(|c| format!("{from} {c}")).collect()
                                    }
                                    other => panic!("{what}: cidr_blocks {other}"),
                                },
                                None => {
                                    assert_eq!(
                                        attr(rule, "self").map(|e| eval(e, &ctx, &what)),
                                        Some(hcl::Value::from(true))
                                    );
                                    vec![format!("{from} self")]
                                }
                            }
                        })
                        .collect();
                    assert_eq!(got, want, "{what}: ingress rules");
                    assert!(want.iter().any(|r| r == "5432 self"), "{what}");
                }
                (Kind::RouteTable, "gateway_id") => {
                    let route = nested("route");
                    assert_eq!(route.len(), 1, "{what}");
                    assert_eq!(
                        eval(attr(route[0], "gateway_id").unwrap(), &ctx, &what),
                        want
                    );
                    assert_eq!(
                        eval(attr(route[0], "cidr_block").unwrap(), &ctx, &what),
                        hcl::Value::from("0.0.0.0/0")
                    );
                }
                (Kind::RouteTable, "subnet_id") => {
                    let assoc = blocks[&(
                        "aws_route_table_association".to_string(),
                        r.address.name.clone(),
                    )]
                        .body();
                    assert_eq!(eval(attr(assoc, "subnet_id").unwrap(), &ctx, &what), want);
                    assert_eq!(
                        eval(attr(assoc, "route_table_id").unwrap(), &ctx, &what),
                        hcl::Value::from(format!("={}.id", r.address))
                    );
                }
                (Kind::KeyPair, "public_key") => {
                    assert_eq!(v.as_str(), Some(""), "{what}: offline lookups read no key");
                    assert_eq!(
                        attr(body, "public_key").unwrap().to_string(),
                        "file(var.public_key_file)"
                    );
                }
                _ => {
                    let e =
                        attr(body, k).unwrap_or_else(|| panic!("{what}: attribute {k} missing"));
                    assert_eq!(eval(e, &ctx, &what), want, "{what}.{k}");
                }
            }
        }
        // Key tags, spelled out.
        let tags = eval(attr(body, "tags").unwrap(), &ctx, &what);
        let tags = match tags {
            hcl::Value::Object(m) => m,
            other => panic!("{what}: tags {other}"),
        };
        assert_eq!(
            tags["pgform:cluster"],
            hcl::Value::from(spec.name.as_str()),
            "{what}"
        );
        assert_eq!(
            tags["pgform:address"],
            hcl::Value::from(r.address.to_string()),
            "{what}"
        );

        // References and dependencies: every Ref edge is a reference in the HCL, and the
        // HCL depends on exactly what the graph node depends on.
        let mut refs = BTreeSet::new();
        for v in r.attrs.values() {
            v.refs(&mut refs);
        }
        let mut text = hcl::format::to_string(*b).unwrap();
        // A route table's subnet reference lives in its association.
        if r.address.kind == Kind::RouteTable {
            let assoc = &blocks[&(
                "aws_route_table_association".to_string(),
                r.address.name.clone(),
            )];
            text.push_str(&hcl::format::to_string(*assoc).unwrap());
        }
        for target in &refs {
            assert!(
                text.contains(&format!("{target}.id")),
                "{what}: reference to {target} missing in\n{text}"
            );
        }
        let mut deps = refs_in(&text);
        deps.remove(&r.address);
        assert_eq!(deps, r.depends_on, "{what}: dependencies\n{text}");
    }

    // Data sources where the graph needed a lookup.
    let data: BTreeSet<String> = main
        .blocks()
        .filter(|b| b.identifier() == "data")
        .map(|b| format!("{}.{}", b.labels()[0].as_str(), b.labels()[1].as_str()))
        .collect();
    assert_eq!(
        data.contains("aws_ami.default"),
        spec.instances.ami.is_none(),
        "{name}"
    );
    assert_eq!(
        data.contains("aws_subnet.existing"),
        spec.network.subnet_id.is_some(),
        "{name}"
    );
}

#[test]
fn docker_and_hosts_are_refused_with_a_fix() {
    for (provider, extra) in [
        ("docker", "[ssh]\npublic_key_file = \"k.pub\"\n"),
        (
            "hosts",
            "[[hosts]]\naddress = \"10.0.0.5\"\nrole = \"primary\"\n",
        ),
    ] {
        let spec = spec(&format!("provider = \"{provider}\"\n{extra}"));
        match export(&spec) {
            Err(ExportError::Input(msg)) => {
                assert!(msg.contains("provider = \"aws\""), "{msg}");
                assert!(msg.contains(provider), "{msg}");
            }
            other => panic!("{provider}: expected an input error, got {other:?}"),
        }
    }
}

#[test]
fn render_with_real_lookups_writes_literals() {
    let keyed = spec("[ssh]\npublic_key_file = \"k.pub\"\n[postgres]\nreplicas = 1\n");
    let lookups = graph::Lookups {
        default_ami: Some("ami-0fedcba9876543210".into()),
        public_key: Some("ssh-ed25519 AAAAC3Nza test@host".into()),
        ..graph::Lookups::default()
    };
    let files: Files = render(&keyed, &lookups).unwrap();
    let main = &files[Path::new("main.tf")];
    assert!(main.contains("ami-0fedcba9876543210"), "{main}");
    assert!(!main.contains("data \"aws_ami\""), "{main}");
    assert!(
        main.contains("\"ssh-ed25519 AAAAC3Nza test@host\""),
        "{main}"
    );
    assert!(main.contains("count = var.replica_count"), "{main}");
    hcl::parse(main).unwrap();

    // An existing subnet the caller did not look up is left to Terraform's data source.
    let existing = spec("[network]\nsubnet_id = \"subnet-0abc\"\n[ssh]\nkey_name = \"k\"\n");
    let files = render(&existing, &graph::Lookups::default()).unwrap();
    let main = &files[Path::new("main.tf")];
    assert!(
        main.contains("subnet_id                   = data.aws_subnet.existing.id"),
        "{main}"
    );
    assert!(
        main.contains("vpc_id      = data.aws_subnet.existing.vpc_id"),
        "{main}"
    );
}
