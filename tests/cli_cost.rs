//! `pgform cost`, `pgform pricing refresh` and the plan's cost section, end to end with
//! the real binary. `cost` makes no cloud call: its runs point the AWS endpoint at a
//! closed port. The plan test scales a cluster on moto from 2 to 3 replicas.

mod common;

use common::Moto;
use common::cli::Work;
use common::hosts::SshKey;
use serde_json::Value;

/// An AWS endpoint nothing listens on: a cloud call would fail the run.
fn no_cloud() -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn aws_spec(region: &str, replica_type: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"name = "costly"
region = "{region}"
{extra}
[network]
vpc_cidr = "10.42.0.0/16"
subnet_cidr = "10.42.1.0/24"

[instances]
type = "t3.medium"
replica_type = "{replica_type}"
data_volume_size = 50

[ssh]
public_key_file = "k.pub"

[access]
admin_cidrs = ["203.0.113.0/24"]

[postgres]
version = 15
replicas = {replicas}
"#
    )
}

fn work_with_key(prefix: &str, env: Vec<(String, String)>) -> (Work, SshKey) {
    let work = Work::new(prefix, env);
    let key = SshKey::generate();
    work.write("k.pub", &key.public);
    (work, key)
}

fn json(run: &common::cli::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON: {e}{run}"))
}

#[test]
fn cost_lists_each_billed_item_from_public_prices() {
    let (work, _key) = work_with_key("pgform-cost", no_cloud());
    work.write("cluster.toml", &aws_spec("us-east-1", "t3.medium", 2, ""));
    let run = work.pgform(&["cost"]);
    run.expect(0)
        .stdout_has(
            "Monthly cost of cluster costly in us-east-1 (USD, on-demand, 730 hours a month)",
        )
        .stdout_has("aws_instance.primary")
        .stdout_has("instance t3.medium")
        .stdout_has("$0.0416/hour")
        .stdout_has("$30.37")
        .stdout_has("data volume gp3")
        .stdout_has("$0.08/GB-month")
        .stdout_has("public IPv4 address")
        .stdout_has("replication traffic")
        .stdout_has("usage-based")
        .stdout_has("Total")
        .stdout_lacks("unknown");

    let doc = json(work.pgform(&["cost", "--json"]).expect(0));
    assert_eq!(doc["currency"], "USD");
    assert_eq!(doc["period"], "monthly");
    assert_eq!(doc["hours_per_month"], 730.0);
    assert_eq!(doc["billed"], true);
    let lines = doc["lines"].as_array().unwrap();
    // Per instance: the instance, the root and data volumes, the public address; per
    // replica the replication traffic.
    assert_eq!(lines.len(), 3 * 4 + 2, "{doc:#}");
    let first = &lines[0];
    assert_eq!(first["address"], "aws_instance.primary");
    assert_eq!(first["item"], "instance t3.medium");
    assert_eq!(first["quantity"], 730.0);
    assert_eq!(first["unit"], "hour");
    assert_eq!(first["unit_price"], 0.0416);
    assert_eq!(first["monthly"], 30.37);
    let t = &doc["totals"];
    // 3 x $30.368; 3 x (20 + 50) GB x $0.08; 3 x 730 h x $0.005.
    assert_eq!(t["compute"], 91.1);
    assert_eq!(t["storage"], 16.8);
    assert_eq!(t["networking"], 10.95);
    assert_eq!(t["total"], 118.85);
    assert_eq!(t["complete"], true);
    assert_eq!(t["usage_based_items"], 2);
    assert_eq!(doc["resource_counts"]["aws_instance"], 3);
    assert_eq!(doc["resource_counts"]["ebs_volume"], 6);
    assert_eq!(doc["resource_counts"]["aws_vpc"], 1);
}

#[test]
fn unknown_types_and_regions_print_unknown_and_still_succeed() {
    let (work, _key) = work_with_key("pgform-cost-unknown", no_cloud());
    work.write("cluster.toml", &aws_spec("us-east-1", "t9.huge", 1, ""));
    work.pgform(&["cost"])
        .expect(0)
        .stdout_has("instance t9.huge")
        .stdout_has("unknown")
        .stdout_has("no price for t9.huge in us-east-1")
        .stdout_has("The total leaves out 1 item of unknown price");
    let doc = json(work.pgform(&["cost", "--json"]).expect(0));
    let replica = doc["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"] == "instance t9.huge")
        .unwrap()
        .clone();
    assert_eq!(replica["monthly"], "unknown", "{doc:#}");
    assert_eq!(replica["unit_price"], Value::Null);
    assert_eq!(doc["totals"]["complete"], false);
    assert_eq!(doc["totals"]["unknown_items"], 1);

    // A region the table does not have: every price unknown, never $0.
    work.write("cluster.toml", &aws_spec("zz-east-9", "t3.medium", 1, ""));
    let doc = json(work.pgform(&["cost", "--json"]).expect(0));
    for l in doc["lines"].as_array().unwrap() {
        assert!(
            l["monthly"] == "unknown" || l["monthly"] == "usage-based",
            "{l}"
        );
    }
    assert_eq!(doc["totals"]["total"], 0.0);
    assert_eq!(doc["totals"]["complete"], false);
}

#[test]
fn docker_and_listed_hosts_bill_nothing() {
    let (work, _key) = work_with_key("pgform-cost-local", no_cloud());
    work.write(
        "cluster.toml",
        "name = \"loc\"\nprovider = \"docker\"\n[ssh]\npublic_key_file = \"k.pub\"\n",
    );
    work.pgform(&["cost"])
        .expect(0)
        .stdout_has("Nothing is billed")
        .stdout_has("provider docker");
    let doc = json(work.pgform(&["cost", "--json"]).expect(0));
    assert_eq!(doc["billed"], false);
    assert_eq!(doc["totals"]["total"], 0.0);
    work.write(
        "cluster.toml",
        "name = \"listed\"\nprovider = \"hosts\"\n[[hosts]]\naddress = \"10.0.0.1\"\nrole = \"primary\"\n",
    );
    work.pgform(&["cost"])
        .expect(0)
        .stdout_has("Nothing is billed")
        .stdout_has("provider hosts");
}

#[test]
fn a_refreshed_price_file_overrides_the_embedded_prices() {
    let (work, _key) = work_with_key("pgform-cost-refresh", no_cloud());
    // AWS's layout: one folder per region holding index.csv. t3.medium's shared price
    // is changed to tell the file's price from the embedded one.
    let fixture = include_str!("fixtures/aws-offer-us-east-1.csv");
    let changed = fixture.replacen(
        "\"Hrs\",\"0.0416000000\",\"USD\"",
        "\"Hrs\",\"0.0500000000\",\"USD\"",
        1,
    );
    assert_ne!(changed, fixture);
    std::fs::create_dir_all(work.path("offers/us-east-1")).unwrap();
    work.write("offers/us-east-1/index.csv", &changed);
    work.pgform(&[
        "pricing",
        "refresh",
        "--from",
        "offers",
        "--out",
        "prices/aws.tsv",
    ])
    .expect(1)
    .stderr_has("cannot write prices/aws.tsv");
    work.pgform(&["pricing", "refresh", "--from", "offers", "--out", "aws.tsv"])
        .expect(0)
        .stdout_has("Wrote aws.tsv (4 prices)");
    let file = work.read("aws.tsv");
    assert!(
        file.contains("ec2\tus-east-1\tt3.medium\t0.05\thour"),
        "{file}"
    );
    assert!(
        file.contains("publication date 2025-03-01T00:00:00Z"),
        "{file}"
    );

    work.write("cluster.toml", &aws_spec("us-east-1", "t3a.large", 1, ""));
    work.pgform(&["cost", "--prices", "aws.tsv"])
        .expect(0)
        .stdout_has("$0.05/hour")
        .stdout_has("$0.0752/hour")
        .stdout_has("Prices: embedded aws.tsv, then aws.tsv.");
    // The same through the spec, relative to the spec file.
    std::fs::create_dir_all(work.path("spec")).unwrap();
    std::fs::copy(work.path("aws.tsv"), work.path("spec/mine.tsv")).unwrap();
    work.write(
        "spec/cluster.toml",
        &aws_spec(
            "us-east-1",
            "t3a.large",
            1,
            "[cost]\nprices = \"mine.tsv\"\n",
        ),
    );
    std::fs::copy(work.path("k.pub"), work.path("spec/k.pub")).unwrap();
    work.pgform(&["-f", "spec/cluster.toml", "cost"])
        .expect(0)
        .stdout_has("$0.05/hour");

    // A bad price file is refused, naming the line and the fix.
    work.write("bad.tsv", "ec2\tus-east-1\tt3.medium\t0\thour\n");
    work.pgform(&["cost", "--prices", "bad.tsv"])
        .expect(1)
        .stderr_has("bad.tsv:1: the price of ec2 t3.medium in us-east-1 is `0`")
        .stderr_has("fix:");
    // Two rows for one price: an error naming the type and the region.
    let dup = fixture
        .lines()
        .find(|l| {
            l.contains("\"t3a.large\"") && l.contains("\"Used\"") && l.contains("\"OnDemand\"")
        })
        .unwrap();
    work.write("offers/us-east-1/index.csv", &format!("{fixture}{dup}\n"));
    work.pgform(&[
        "pricing",
        "refresh",
        "--from",
        "offers",
        "--out",
        "again.tsv",
    ])
    .expect(1)
    .stderr_has("2 rows price t3a.large in us-east-1");
    assert!(!work.path("again.tsv").exists());
}

#[test]
fn plan_of_a_third_replica_shows_what_it_costs() {
    let moto = Moto::start();
    let (work, _key) = work_with_key("pgform-cost-plan", moto.env());
    work.write("cluster.toml", &aws_spec("us-east-1", "t3.medium", 2, ""));
    work.pgform(&["apply", "--only", "infra", "--auto-approve"])
        .expect(0);
    work.write("cluster.toml", &aws_spec("us-east-1", "t3.medium", 3, ""));
    // One instance: t3.medium, 20 + 50 GB gp3, a public address = $39.62.
    let run = work.pgform(&["plan", "--only", "infra"]);
    run.expect(0)
        .stdout_has("Monthly cost (USD, on-demand, 730 hours a month")
        .stdout_has("Plan: 1 to add, 0 to change, 0 to destroy.");
    let line = |address: &str| {
        run.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(address) && l.contains("->"))
            .unwrap_or_else(|| panic!("no cost line for {address}{run}"))
            .to_string()
    };
    let third = line("aws_instance.replica[2]");
    assert!(
        third.contains("- -> $39.62") && third.ends_with("+$39.62"),
        "{third}"
    );
    let kept = line("aws_instance.replica[0]");
    assert!(
        kept.contains("$39.62 -> $39.62") && kept.ends_with("+$0.00"),
        "{kept}"
    );
    let total = line("Total");
    assert!(
        total.contains("$118.85 -> $158.47") && total.ends_with("+$39.62"),
        "{total}"
    );

    let doc = json(
        work.pgform(&["plan", "--only", "infra", "--json"])
            .expect(0),
    );
    let cost = &doc["cost"];
    assert_eq!(cost["currency"], "USD");
    assert_eq!(cost["total"]["before"], 118.85);
    assert_eq!(cost["total"]["after"], 158.47);
    assert_eq!(cost["total"]["difference"], 39.62);
    assert_eq!(cost["total"]["complete"], true);
    let third = cost["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "aws_instance.replica[2]")
        .unwrap_or_else(|| panic!("{cost:#}"));
    assert_eq!(third["before"], Value::Null);
    assert_eq!(third["after"], 39.62);
    assert_eq!(third["difference"], 39.62);
}
