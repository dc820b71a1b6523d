//! `pgform export` end to end, as the old API's generate-code flow used it: Terraform and
//! Ansible for a cluster that does not exist yet, then the Ansible inventory from what
//! Terraform made. Checked with the real tools: `terraform fmt` and `terraform output`
//! (which reads a state without providers), `ansible-inventory`, `ansible-playbook
//! --syntax-check` and ansible-lint's production profile; and against pgform's own
//! state-based inventory for a cluster applied on the EC2 emulator.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::Work;
use common::{Moto, infra_only, tools};
use serde_json::{Value, json};

const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJm5v3vS0PeU5cV9Kc1y9o0Qm0bq0wA9Y8q5mHk1u2v test";

/// The old API's flat payload: an existing subnet and key, two replicas.
const PAYLOAD: &str = r#"{"instance_type": "t3a.medium", "num_replicas": 2, "aws_region": "us-east-1",
 "ssh_key_name": "stag-key", "subnet_id": "subnet-0d2b0680f68dca9f4", "postgres_version": "15",
 "max_connections": 100, "shared_buffers": "50MB", "replication_user": "reptile"}"#;

/// An aws spec with a created network (public addresses by default).
fn aws_spec(name: &str, replicas: u32) -> String {
    format!(
        r#"name = "{name}"
region = "us-east-1"
[network]
vpc_cidr = "10.40.0.0/16"
subnet_cidr = "10.40.1.0/24"
[ssh]
public_key_file = "k.pub"
[access]
admin_cidrs = ["203.0.113.0/24"]
client_cidrs = ["10.40.0.0/16", "198.51.100.0/24"]
[postgres]
replicas = {replicas}
"#
    )
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Terraform state holding only the `pgform_nodes` output: what `terraform apply` of
/// the exported files leaves for `terraform output` to read.
fn write_terraform_state(dir: &Path, nodes: &Value) {
    let state = json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": 1,
        "lineage": "pgform-test",
        "outputs": {
            "pgform_nodes": {
                "value": nodes,
                "type": ["list", ["object", {
                    "name": "string", "role": "string",
                    "private_address": "string", "public_address": "string"
                }]]
            }
        },
        "resources": [],
        "check_results": null
    });
    std::fs::write(dir.join("terraform.tfstate"), state.to_string()).unwrap();
}

/// `ansible-inventory --list`: groups' hosts and every host's variables.
fn inventory_list(bin: &Path, dir: &Path, inventory: &str) -> (BTreeMap<String, Value>, Value) {
    let text = run(
        Command::new(bin)
            .current_dir(dir)
            .args(["-i", inventory, "--list"])
            // A failing inventory source is an error, not a warning and an empty list.
            .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
            .env("ANSIBLE_INVENTORY_ENABLED", "script,ini"),
        "ansible-inventory",
    );
    let v: Value = serde_json::from_str(&text).expect("ansible-inventory prints JSON");
    let groups = ["primary", "replicas"]
        .iter()
        .map(|g| (g.to_string(), v[*g]["hosts"].clone()))
        .collect();
    (groups, v["_meta"]["hostvars"].clone())
}

#[test]
fn export_all_before_apply_writes_terraform_and_an_inventory_that_reads_it() {
    let work = Work::new("pgform-export-", vec![]);
    work.write("payload.json", PAYLOAD);
    let out = work.pgform(&["export", "all", "out", "-f", "payload.json"]);
    out.expect(0)
        .stdout_has("Inventory: inventory.py reads the hosts from `terraform -chdir=../terraform");
    let tf = work.path("out/terraform");
    let ans = work.path("out/ansible");

    // The Terraform files are what the library renders (export_terraform checks their
    // parity with the graph), formatted, with the nodes output the inventory reads.
    let spec = pgform::spec::load_file(&work.path("payload.json"))
        .expect("payload")
        .spec;
    for (name, text) in pgform::export::terraform::export(&spec).expect("render") {
        assert_eq!(
            std::fs::read_to_string(tf.join(&name)).unwrap(),
            text,
            "{name:?}"
        );
        let _: hcl::Body = hcl::from_str(&text).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    let outputs = std::fs::read_to_string(tf.join("outputs.tf")).unwrap();
    assert!(outputs.contains("output \"pgform_nodes\""), "{outputs}");
    if let Some(terraform) = tools::require("terraform", "the machine image has terraform") {
        run(
            Command::new(terraform)
                .args(["fmt", "-check", "-diff"])
                .arg(&tf),
            "terraform fmt -check",
        );
    }

    // The Ansible side: an executable inventory script, lint-clean.
    let script = ans.join("inventory.py");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "inventory.py is not executable");
    assert!(!ans.join("inventory.ini").exists());
    tools::assert_ansible_lint_production(&ans);

    // After `terraform apply` (its outputs, in the state `terraform output` reads).
    let Some(inventory) = tools::require("ansible-inventory", "pip install ansible") else {
        return;
    };
    if tools::find("terraform").is_none() {
        return;
    }
    let nodes = json!([
        {"name": "primary", "role": "primary", "private_address": "10.0.1.4", "public_address": "192.0.2.4"},
        {"name": "replica-0", "role": "replica", "private_address": "10.0.1.5", "public_address": "192.0.2.5"},
        {"name": "replica-1", "role": "replica", "private_address": "10.0.1.6", "public_address": "192.0.2.6"},
    ]);
    write_terraform_state(&tf, &nodes);
    let (groups, hostvars) = inventory_list(&inventory, &ans, "inventory.py");
    assert_eq!(groups["primary"], json!(["primary"]));
    assert_eq!(groups["replicas"], json!(["replica-0", "replica-1"]));
    // SSH goes to the public addresses (network.public defaults to true), peers use
    // the private ones.
    assert_eq!(hostvars["replica-1"]["ansible_host"], "192.0.2.6");
    assert_eq!(hostvars["replica-1"]["private_address"], "10.0.1.6");
    assert_eq!(hostvars["replica-1"]["node_name"], "replica-1");
    assert_eq!(hostvars["primary"]["replication_user"], "reptile");
    let playbook = tools::find("ansible-playbook").expect("ansible-playbook with ansible");
    run(
        Command::new(playbook).current_dir(&ans).args([
            "-i",
            "inventory.py",
            "site.yml",
            "--syntax-check",
        ]),
        "ansible-playbook --syntax-check",
    );
}

#[test]
fn inventory_from_terraform_outputs_equals_the_state_inventory() {
    let Some(inventory) = tools::require("ansible-inventory", "pip install ansible") else {
        return;
    };
    let Some(_) = tools::require("terraform", "the machine image has terraform") else {
        return;
    };
    let moto = Moto::start();
    let work = Work::new("pgform-export-aws-", moto.env());
    work.write("k.pub", PUBLIC_KEY);
    work.write("cluster.toml", &aws_spec("export-parity", 2));
    work.pgform(&infra_only(&["apply", "--auto-approve"]))
        .expect(0);

    // From the state: inventory.ini.
    work.pgform(&["export", "ansible", "from-state"])
        .expect(0)
        .stdout_has("Inventory: inventory.ini lists 3 host(s)");
    // Before apply (no state): inventory.py over Terraform's outputs.
    work.pgform(&["export", "all", "planned", "--state", "none.json"])
        .expect(0)
        .stdout_has("Inventory: inventory.py");

    // What Terraform's pgform_nodes output holds for the machines moto made.
    let state = pgform::state::read(&work.path("cluster.pgstate.json"))
        .expect("state")
        .expect("a state file");
    let node = |addr: &str, name: &str, role: &str| {
        let r = &state.resources[&addr.parse().unwrap()];
        let out = |k: &str| {
            r.outputs
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        json!({"name": name, "role": role,
               "private_address": out("private_ip"), "public_address": out("public_ip")})
    };
    let nodes = json!([
        node("aws_instance.primary", "primary", "primary"),
        node("aws_instance.replica[0]", "replica-0", "replica"),
        node("aws_instance.replica[1]", "replica-1", "replica"),
    ]);
    assert_ne!(
        nodes[0]["public_address"], "",
        "moto gave no public address: {nodes}"
    );
    write_terraform_state(&work.path("planned/terraform"), &nodes);

    let from_state = inventory_list(&inventory, &work.path("from-state"), "inventory.ini");
    let from_terraform = inventory_list(&inventory, &work.path("planned/ansible"), "inventory.py");
    assert_eq!(from_terraform, from_state);
    assert_eq!(from_state.0["replicas"], json!(["replica-0", "replica-1"]));
    // Everything but the inventory itself is the same export.
    for rel in [
        "site.yml",
        "group_vars/all/main.yml",
        "host_vars/replica-1.yml",
    ] {
        let a = std::fs::read_to_string(work.path("from-state").join(rel)).unwrap();
        let b = std::fs::read_to_string(work.path("planned/ansible").join(rel)).unwrap();
        let strip = |t: &str| t.replace("inventory.py", "inventory.ini");
        assert_eq!(strip(&b), strip(&a), "{rel}");
    }
}

#[test]
fn a_failed_export_writes_nothing_and_a_rerun_keeps_other_files() {
    let work = Work::new("pgform-export-fail-", vec![]);
    // Docker: no Terraform export, so `export all` writes neither half.
    work.write(
        "local.toml",
        "name = \"loc\"\nprovider = \"docker\"\n[ssh]\npublic_key_file = \"k.pub\"\n\
         [postgres]\nreplicas = 1\n",
    );
    work.write("k.pub", PUBLIC_KEY);
    work.pgform(&["export", "all", "out", "-f", "local.toml"])
        .expect(1)
        .stdout_lacks("Wrote");
    assert!(!work.path("out").exists(), "a failed export left files");
    let run = work.pgform(&["export", "terraform", "tf", "-f", "local.toml"]);
    run.expect(1);
    assert!(run.stderr.contains("provider \"aws\" only"), "{run}");
    // Ansible for docker needs the machines in the state.
    let run = work.pgform(&["export", "ansible", "ans", "-f", "local.toml"]);
    run.expect(1);
    assert!(run.stderr.contains("pgform apply"), "{run}");
    assert!(!work.path("ans").exists());

    // A second export over the first replaces pgform's files and keeps Terraform's.
    work.write("payload.json", PAYLOAD);
    work.pgform(&["export", "all", "out", "-f", "payload.json"])
        .expect(0);
    work.write("out/terraform/terraform.tfstate", "{}");
    std::fs::write(work.path("out/terraform/main.tf"), "# edited").unwrap();
    work.pgform(&["export", "all", "out", "-f", "payload.json"])
        .expect(0);
    assert_eq!(work.read("out/terraform/terraform.tfstate"), "{}");
    assert!(
        work.read("out/terraform/main.tf")
            .contains("resource \"aws_instance\"")
    );
    let leftovers: Vec<_> = std::fs::read_dir(work.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 2, "staging folders left: {leftovers:?}");
}
