//! The EC2 provider on its own, against the moto EC2 emulator: lookups, batched refresh,
//! adoption of an interrupted create by its tags, in-place updates, idempotent deletes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Moto;
use pgform::graph::{ADDRESS_TAG, Address, Attrs, CLUSTER_TAG, Kind, Value};
use pgform::provider::aws::{AwsProvider, Timeouts};
use pgform::provider::{Lookup, Provider, ProviderError};

fn tags(cluster: &str, address: &Address) -> Value {
    let mut m = BTreeMap::new();
    m.insert(CLUSTER_TAG.to_string(), Value::str(cluster));
    m.insert(ADDRESS_TAG.to_string(), Value::str(address.to_string()));
    Value::Map(m)
}

fn attrs(pairs: Vec<(&str, Value)>) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn rule(port: i64, cidr: &str) -> Value {
    let mut m = BTreeMap::new();
    m.insert("port".to_string(), Value::Int(port));
    m.insert("cidr".to_string(), Value::str(cidr));
    Value::Map(m)
}

fn self_rule(port: i64) -> Value {
    let mut m = BTreeMap::new();
    m.insert("port".to_string(), Value::Int(port));
    m.insert("self".to_string(), Value::Bool(true));
    Value::Map(m)
}

async fn provider(moto: &Moto) -> AwsProvider {
    AwsProvider::new(moto.ec2().await)
}

/// Creates an instance through the provider in `subnet`, with `sg`.
async fn make_instance(
    p: &AwsProvider,
    cluster: &str,
    address: &Address,
    subnet: &str,
    sg: &str,
) -> String {
    let a = attrs(vec![
        ("ami", Value::str(common::AMI_AMD64_NEWEST)),
        ("instance_type", Value::str("t3.micro")),
        ("subnet_id", Value::str(subnet)),
        ("vpc_security_group_ids", Value::List(vec![Value::str(sg)])),
        ("key_name", Value::str("k")),
        ("root_volume_size", Value::Int(30)),
        ("root_volume_type", Value::str("gp3")),
        ("data_volume_size", Value::Int(50)),
        ("data_volume_type", Value::str("gp2")),
        ("associate_public_ip_address", Value::Bool(false)),
        ("tags", tags(cluster, address)),
    ]);
    let made = p
        .create(address, &a, &format!("{cluster}-{address}"), &|_| {})
        .await
        .expect("create instance");
    // Everything the graph sets and EC2 reports comes back with the same shape.
    for key in [
        "ami",
        "instance_type",
        "subnet_id",
        "vpc_security_group_ids",
        "root_volume_size",
        "root_volume_type",
        "data_volume_size",
        "data_volume_type",
        "tags",
    ] {
        assert_eq!(
            made.attrs.get(key),
            a.get(key),
            "observed `{key}` of {address}"
        );
    }
    assert!(
        made.outputs.contains_key("private_ip"),
        "{:?}",
        made.outputs
    );
    // The host layer finds the data disk by these.
    let out = |k: &str| made.outputs.get(k).and_then(Value::as_str).unwrap_or("");
    assert!(
        out("data_volume_id").starts_with("vol-"),
        "{:?}",
        made.outputs
    );
    assert_eq!(out("data_volume_device"), "/dev/sdf");
    made.id
}

async fn make_group(p: &AwsProvider, cluster: &str, vpc: &str, ingress: Vec<Value>) -> String {
    let address = Address::new(Kind::SecurityGroup, "main");
    let a = attrs(vec![
        ("name", Value::str(format!("{cluster}-postgres"))),
        ("description", Value::str("test group")),
        ("vpc_id", Value::str(vpc)),
        ("ingress", Value::List(ingress.clone())),
        ("tags", tags(cluster, &address)),
    ]);
    let made = p
        .create(&address, &a, "sg", &|_| {})
        .await
        .expect("create group");
    let mut sorted = ingress;
    pgform::graph::sort_rules(&mut sorted);
    assert_eq!(made.attrs["ingress"], Value::List(sorted));
    made.id
}

#[tokio::test]
async fn image_lookup_takes_the_newest_amd64_image() {
    let moto = Moto::start();
    let p = provider(&moto).await;
    let ami = p
        .lookup_image(common::DEBIAN_OWNER, "debian-12-amd64-*")
        .await
        .unwrap();
    assert_eq!(ami, common::AMI_AMD64_NEWEST);
    // The arm64 image is the newest of all: a lookup without the architecture filter
    // would pick it.
    let ami = p
        .lookup_image(common::DEBIAN_OWNER, "debian-12-*")
        .await
        .unwrap();
    assert_eq!(ami, common::AMI_AMD64_NEWEST);
    let none = p
        .lookup_image(common::DEBIAN_OWNER, "ubuntu-*")
        .await
        .unwrap_err();
    assert!(matches!(none, ProviderError::NotFound(_)), "{none}");
}

#[tokio::test]
async fn subnet_lookup_reports_vpc_and_missing_subnets() {
    let moto = Moto::start();
    let (vpc, subnet) = moto.make_subnet("10.7.0.0/16", "10.7.1.0/24").await;
    let p = provider(&moto).await;
    let info = p.lookup_subnet(&subnet).await.unwrap();
    assert_eq!(
        (info.vpc_id.as_str(), info.vpc_cidr.as_str()),
        (vpc.as_str(), "10.7.0.0/16")
    );
    assert!(!info.availability_zone.is_empty());
    let err = p
        .lookup_subnet("subnet-0123456789abcdef0")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn refresh_batches_by_kind_not_by_resource() {
    let moto = Moto::start();
    let (vpc, subnet) = moto.make_subnet("10.8.0.0/16", "10.8.0.0/20").await;
    let p = provider(&moto).await;
    let sg = make_group(&p, "batch", &vpc, vec![self_rule(5432)]).await;
    let mut lookups = vec![Lookup {
        cluster: "batch".into(),
        address: Address::new(Kind::SecurityGroup, "main"),
        id: Some(sg.clone()),
    }];
    for i in 0..12 {
        let address = Address::indexed(Kind::Instance, "replica", i);
        let id = make_instance(&p, "batch", &address, &subnet, &sg).await;
        lookups.push(Lookup {
            cluster: "batch".into(),
            address,
            id: Some(id),
        });
    }
    // A recorded id that no longer exists, and one of another kind.
    lookups.push(Lookup {
        cluster: "batch".into(),
        address: Address::indexed(Kind::Instance, "replica", 99),
        id: Some("i-0000000000000dead".into()),
    });

    let before = p.api_calls();
    let found = p.refresh(&lookups).await.unwrap();
    let calls = p.api_calls() - before;
    assert_eq!(found.len(), lookups.len());
    assert!(
        found[..13].iter().all(Option::is_some),
        "every existing resource is found"
    );
    assert!(found[13].is_none(), "a gone id is reported gone");
    // Security groups, instances, their root volumes: one call each for 13 resources.
    assert_eq!(calls, 3, "refresh of 13 resources took {calls} API calls");
}

#[tokio::test]
async fn an_interrupted_create_is_found_by_its_tags() {
    let moto = Moto::start();
    let (vpc, subnet) = moto.make_subnet("10.9.0.0/16", "10.9.1.0/24").await;
    let p = provider(&moto).await;
    let sg = make_group(&p, "adopt", &vpc, vec![]).await;
    let address = Address::new(Kind::Instance, "primary");
    let id = make_instance(&p, "adopt", &address, &subnet, &sg).await;
    // The state lost the id (the process died before saving it): tags find it.
    let lookup = |cluster: &str| Lookup {
        cluster: cluster.into(),
        address: address.clone(),
        id: None,
    };
    let found = p
        .refresh(&[lookup("adopt"), lookup("other")])
        .await
        .unwrap();
    assert_eq!(found[0].as_ref().map(|o| o.id.as_str()), Some(id.as_str()));
    assert!(
        found[1].is_none(),
        "another cluster's address does not match"
    );

    let discovered = p.discover("adopt").await.unwrap();
    let kinds: Vec<String> = discovered.keys().map(|a| a.to_string()).collect();
    assert_eq!(kinds, ["aws_security_group.main", "aws_instance.primary"]);
}

#[tokio::test]
async fn updates_rules_tags_and_instance_type_in_place() {
    let moto = Moto::start();
    let (vpc, subnet) = moto.make_subnet("10.10.0.0/16", "10.10.1.0/24").await;
    let p = provider(&moto).await;
    let address = Address::new(Kind::SecurityGroup, "main");
    let before_rules = vec![
        self_rule(5432),
        rule(22, "198.51.100.0/24"),
        rule(5432, "10.10.0.0/16"),
    ];
    let sg = make_group(&p, "upd", &vpc, before_rules.clone()).await;
    let current = p
        .refresh(&[Lookup {
            cluster: "upd".into(),
            address: address.clone(),
            id: Some(sg.clone()),
        }])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let mut after = current.attrs.clone();
    let mut new_rules = vec![
        self_rule(5432),
        rule(22, "198.51.100.0/24"),
        rule(5432, "192.0.2.0/24"),
    ];
    pgform::graph::sort_rules(&mut new_rules);
    after.insert("ingress".into(), Value::List(new_rules.clone()));
    let mut t = after["tags"].as_map().unwrap().clone();
    t.insert("Name".into(), Value::str("renamed"));
    after.insert("tags".into(), Value::Map(t));
    let updated = p
        .update(&address, &sg, &current.attrs, &after)
        .await
        .unwrap();
    assert_eq!(updated.id, sg, "same group");
    assert_eq!(updated.attrs["ingress"], Value::List(new_rules));
    assert_eq!(updated.attrs["tags"], after["tags"]);

    let instance = Address::new(Kind::Instance, "primary");
    let id = make_instance(&p, "upd", &instance, &subnet, &sg).await;
    let current = p
        .refresh(&[Lookup {
            cluster: "upd".into(),
            address: instance.clone(),
            id: Some(id.clone()),
        }])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let mut after = current.attrs.clone();
    after.insert("instance_type".into(), Value::str("t3.large"));
    let updated = p
        .update(&instance, &id, &current.attrs, &after)
        .await
        .unwrap();
    assert_eq!(updated.id, id);
    assert_eq!(updated.attrs["instance_type"], Value::str("t3.large"));
    assert_eq!(updated.outputs.get("state"), Some(&Value::str("running")));

    // Something that cannot change in place is refused, not half-done.
    let mut after = current.attrs.clone();
    after.insert("ami".into(), Value::str(common::AMI_AMD64_OLDER));
    let err = p
        .update(&instance, &id, &current.attrs, &after)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ami"), "{err}");
}

#[tokio::test]
async fn deletes_are_idempotent_and_wait_out_dependants() {
    let moto = Moto::start();
    let p = provider(&moto).await.with_timeouts(Timeouts {
        dependency: Duration::from_secs(3),
        ..Timeouts::default()
    });
    let vpc_address = Address::new(Kind::Vpc, "main");
    let vpc = p
        .create(
            &vpc_address,
            &attrs(vec![
                ("cidr_block", Value::str("10.11.0.0/16")),
                ("tags", tags("del", &vpc_address)),
            ]),
            "vpc",
            &|_| {},
        )
        .await
        .unwrap()
        .id;
    let subnet_address = Address::new(Kind::Subnet, "main");
    let subnet = p
        .create(
            &subnet_address,
            &attrs(vec![
                ("vpc_id", Value::str(&vpc)),
                ("cidr_block", Value::str("10.11.1.0/24")),
                ("tags", tags("del", &subnet_address)),
            ]),
            "subnet",
            &|_| {},
        )
        .await
        .unwrap()
        .id;
    // The VPC still holds the subnet: EC2 answers DependencyViolation until the
    // timeout, which is then reported as such.
    let err = p.delete(&vpc_address, &vpc).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("DependencyViolation"), "{err}");

    p.delete(&subnet_address, &subnet).await.unwrap();
    p.delete(&vpc_address, &vpc).await.unwrap();
    // Deleting what is already gone succeeds.
    p.delete(&subnet_address, &subnet).await.unwrap();
    p.delete(&vpc_address, &vpc).await.unwrap();
    p.delete(
        &Address::new(Kind::Instance, "primary"),
        "i-0000000000000dead",
    )
    .await
    .unwrap();
    assert_eq!(
        moto.count_tagged("del").await,
        0,
        "{:?}",
        moto.tagged("del").await
    );
}
