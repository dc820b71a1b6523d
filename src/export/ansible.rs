//! Ansible export: the embedded task list as an inventory, a playbook, templates and variables.
//!
//! [`export`] translates every play and task of `playbooks/site.yml` (same names, same
//! `when` expressions, handlers by `notify`) into Ansible modules with the same effect,
//! copies the Jinja templates byte for byte, and writes the per-host variables that
//! [`crate::hosts::vars`] gives the native run: the cluster-wide ones in
//! `group_vars/all/main.yml`, the node-specific ones in `host_vars/<node>.yml`. The
//! variables that depend on the machines' addresses (the primary's address, the pg_hba
//! lines of the members) are Jinja over the inventory, so the same files serve any
//! inventory: the state's hosts or the `hosts` list (`inventory.ini`), or, before
//! anything exists, Terraform's `pgform_nodes` output (`inventory.py`, which runs
//! `terraform output`). The replication password is never written:
//! `group_vars/all/vault.yml` reads it from the environment
//! (`PGFORM_REPLICATION_PASSWORD`), ready to be replaced by a vault value.
//!
//! The HA mode (`ha.mode = "patroni"`) translates `playbooks/patroni.yml` with the same
//! pieces: its address-dependent variables (etcd's members, Patroni's pg_hba lines) are
//! the native text with each address as inventory Jinja ([`addressed`]), the leader's
//! plays run on the node Patroni's REST API names ([`leader_play`]), pending restarts
//! follow the plays ([`restart_play`]), and Patroni's passwords are `ha_passwords` in
//! `vault.yml`, looked up from the spec's sources when the playbook runs.
//!
//! The output passes ansible-lint's `production` profile (tested).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_norway::{Mapping, Value as Y};

use super::{ExportError, Files, yaml};

#[path = "ansible_access.rs"]
mod access;
use crate::hosts::{self, Node};
use crate::remote::shell::quote;
use crate::spec::{ClusterSpec, ConnectVia, KnownHostsPolicy, ProviderKind, Role};
use crate::tasks::modules::{FileState, Meta, ServiceState};
use crate::tasks::{Action, Hosts, Order, Play, Playbook, Task};

/// The environment variable `group_vars/all/vault.yml` reads the password from.
pub const PASSWORD_ENV: &str = "PGFORM_REPLICATION_PASSWORD";

/// Packages the Ansible modules need on the hosts besides the native list:
/// psycopg2 for community.postgresql, acl for `become_user: postgres` from a non-root
/// login.
pub const EXTRA_PACKAGES: [&str; 2] = ["python3-psycopg2", "acl"];

/// The Terraform output the inventory script reads (see `terraform::outputs_tf`).
pub const NODES_OUTPUT: &str = "pgform_nodes";

/// Variables that belong to one node even when they happen to be equal on all.
const NODE_VARS: [&str; 4] = ["node_name", "role", "slot", "settings"];

/// Native variables that depend on addresses; the export computes them from the
/// inventory instead (see [`inventory_vars`], which adds `member_addresses`).
const ADDRESS_VARS: [&str; 2] = ["primary_address", "hba_block"];

/// libpq options for the SQL the primary play runs: commits must not wait for a
/// synchronous standby that is not seeded yet, and the password must not reach the
/// server log (as the native pg_role does with SET).
const PGOPTIONS: &str = "-c synchronous_commit=local -c log_statement=none";

/// The handler that refreshes apt's lists after a task changed the apt sources.
const APT_REFRESH: &str = "Refresh the apt cache";

/// Where the exported playbook finds its hosts.
#[derive(Debug, Clone)]
pub enum Inventory {
    /// Known machines (from the state or the `hosts` list): a static `inventory.ini`.
    Hosts(Vec<Node>),
    /// Machines Terraform will make: `inventory.py` runs `terraform -chdir=DIR output`
    /// (DIR relative to the Ansible directory unless absolute). The nodes carry names
    /// and roles; their addresses come from Terraform.
    Terraform { dir: String, nodes: Vec<Node> },
}

impl Inventory {
    fn nodes(&self) -> &[Node] {
        match self {
            Inventory::Hosts(n) | Inventory::Terraform { nodes: n, .. } => n,
        }
    }

    /// One line for the user: where the playbook's hosts come from.
    pub fn describe(&self) -> String {
        match self {
            Inventory::Hosts(n) => format!("inventory.ini lists {} host(s)", n.len()),
            Inventory::Terraform { dir, .. } => format!(
                "inventory.py reads the hosts from `terraform -chdir={dir} output -json \
                 {NODES_OUTPUT}` (run `terraform apply` there first)"
            ),
        }
    }
}

/// Where the playbook's hosts come from, in order: the state's machines, the spec's
/// `hosts` list, otherwise (provider aws, nothing applied yet) Terraform's outputs in
/// `terraform_dir` (relative to the Ansible directory).
pub fn choose_inventory(
    spec: &ClusterSpec,
    state: &crate::state::State,
    terraform_dir: &str,
) -> Result<Inventory, ExportError> {
    match hosts::inventory(spec, state) {
        Ok(nodes) => Ok(Inventory::Hosts(nodes)),
        Err(_) if spec.provider == ProviderKind::Aws => Ok(Inventory::Terraform {
            dir: terraform_dir.to_string(),
            nodes: hosts::planned_nodes(spec),
        }),
        Err(e) => Err(ExportError::Input(format!(
            "{e}\n    (the Ansible export of a {} cluster takes its hosts from the state; only \
             an aws cluster can take them from Terraform)",
            spec.provider.name()
        ))),
    }
}

/// The cluster as an Ansible project: inventory, playbook, templates, variables. Pure.
/// The HA mode's task list (`playbooks/patroni.yml`) is translated the same way; its
/// leader's plays run on the node Patroni names (see [`leader_play`]).
pub fn export(spec: &ClusterSpec, inventory: &Inventory) -> Result<Files, ExportError> {
    let patroni = spec.ha.patroni();
    let nodes = inventory.nodes();
    check_nodes(nodes, matches!(inventory, Inventory::Hosts(_)))?;
    let book = if patroni {
        Playbook::embedded_file(crate::tasks::PATRONI)
    } else {
        Playbook::embedded()
    }
    .map_err(|e| ExportError::Input(e.to_string()))?;
    let mut files = Files::new();
    let inventory_file = match inventory {
        Inventory::Hosts(nodes) => {
            files.insert("inventory.ini".into(), inventory_ini(spec, nodes)?);
            "inventory.ini"
        }
        Inventory::Terraform { dir, .. } => {
            files.insert("inventory.py".into(), inventory_script(spec, dir)?);
            "inventory.py"
        }
    };
    files.insert(
        "ansible.cfg".into(),
        ANSIBLE_CFG.replace("INVENTORY", inventory_file),
    );
    files.insert("site.yml".into(), site(spec, &book, inventory_file)?);
    for (path, bytes) in Playbook::files() {
        if let Some(name) = path.strip_prefix("templates/") {
            let text = std::str::from_utf8(bytes).map_err(|_| {
                ExportError::Input(format!("embedded template {path} is not UTF-8"))
            })?;
            files.insert(PathBuf::from("templates").join(name), text.to_string());
        }
    }
    let (common, per_node) = variables(spec, nodes)?;
    let mut main = Mapping::new();
    for (k, v) in &common {
        main.insert(Y::String(k.clone()), vars_value(v));
    }
    // The HA mode's address-dependent variables are Jinja already (see `variables`).
    if !patroni {
        for (k, v) in inventory_vars(spec) {
            main.insert(Y::String(k.into()), Y::String(v));
        }
    }
    for (k, v) in tls_vars(spec) {
        main.insert(
            Y::String(k.into()),
            vars_value(&serde_json::Value::String(v)),
        );
    }
    for (k, v) in access::variables(spec) {
        main.insert(s(k), vars_value(&v));
    }
    if let Some(key) = &spec.ssh.private_key_file {
        main.insert(
            s("ansible_ssh_private_key_file"),
            vars_value(&serde_json::Value::String(key.to_string_lossy().into())),
        );
    }
    if let Some(proxy) = proxy_command(spec) {
        main.insert(
            s("ansible_ssh_common_args"),
            vars_value(&serde_json::Value::String(format!(
                "-o {}",
                quote(&format!("ProxyCommand={proxy}"))
            ))),
        );
    }
    files.insert(
        "group_vars/all/main.yml".into(),
        format!(
            "{}# Cluster-wide variables, generated by pgform from the cluster spec (the same\n\
             # values pgform's own run uses). Node-specific ones are in host_vars/.\n{}",
            "---\n",
            yaml::document(&Y::Mapping(main)).trim_start_matches("---\n")
        ),
    );
    files.insert(
        "group_vars/all/vault.yml".into(),
        format!(
            "---\n\
             # The replication password, read from the environment of ansible-playbook.\n\
             # Ready to be replaced by an ansible-vault encrypted value:\n\
             #   ansible-vault encrypt_string --name replication_password\n\
             replication_password: \"{{{{ lookup('env', '{PASSWORD_ENV}') }}}}\"\n{}",
            yaml::document(&vault_secrets(spec)).trim_start_matches("---\n")
        ),
    );
    for (name, vars) in per_node {
        let mut m = Mapping::new();
        for (k, v) in &vars {
            m.insert(Y::String(k.clone()), vars_value(v));
        }
        let body = yaml::document(&Y::Mapping(m));
        files.insert(
            PathBuf::from("host_vars").join(format!("{name}.yml")),
            format!(
                "---\n# Variables of node {name}, generated by pgform.\n{}",
                body.trim_start_matches("---\n")
            ),
        );
    }
    Ok(files)
}

const ANSIBLE_CFG: &str = "\
# Used when ansible-playbook runs from this directory.
[defaults]
interpreter_python = auto_silent
inventory = INVENTORY

[ssh_connection]
pipelining = True
";

/// Node names become inventory host names and file names; addresses go into the INI
/// inventory unquoted.
fn check_nodes(nodes: &[Node], with_addresses: bool) -> Result<(), ExportError> {
    let bad = |what: &str, v: &str| ExportError::Input(format!("{what} `{v}` cannot be exported"));
    if nodes.iter().filter(|n| n.role == Role::Primary).count() != 1 {
        return Err(ExportError::Input(
            "the cluster needs exactly one primary to export".into(),
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        let name_ok = n
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && n.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(bad("node name", &n.name));
        }
        if nodes[..i].iter().any(|m| m.name == n.name) {
            return Err(bad("duplicate node name", &n.name));
        }
        if with_addresses {
            for a in [&n.connect_address, &n.private_address] {
                if a.is_empty() || !a.chars().all(address_char) {
                    return Err(bad("address", a));
                }
            }
        }
    }
    Ok(())
}

fn address_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '[' | ']' | '%')
}

/// The SSH user, checked for the inventory.
fn ssh_user(spec: &ClusterSpec) -> Result<&str, ExportError> {
    let user = spec.ssh.user_for(spec.provider);
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ExportError::Input(format!(
            "ssh user `{user}` cannot be exported"
        )));
    }
    Ok(user)
}

/// Groups `primary` and `replicas`; per host `ansible_host`, `node_name` and
/// `private_address`; `ansible_user` and `ansible_port` for all. `inventory.py` yields
/// the very same from Terraform's outputs.
fn inventory_ini(spec: &ClusterSpec, nodes: &[Node]) -> Result<String, ExportError> {
    let user = ssh_user(spec)?;
    let mut out = String::from("# Generated by pgform: the cluster's nodes.\n");
    for (group, role) in [("primary", Role::Primary), ("replicas", Role::Replica)] {
        out.push_str(&format!("\n[{group}]\n"));
        for n in nodes.iter().filter(|n| n.role == role) {
            out.push_str(&format!(
                "{name} ansible_host={} node_name={name} private_address={}\n",
                n.connect_address,
                n.private_address,
                name = n.name
            ));
        }
    }
    out.push_str(&format!(
        "\n[all:vars]\nansible_user={user}\nansible_port={}\n",
        spec.ssh.port
    ));
    Ok(out)
}

/// An executable inventory script (Python, which Ansible itself needs) that runs
/// `terraform output` in the Terraform directory and yields what `inventory.ini` would.
fn inventory_script(spec: &ClusterSpec, terraform_dir: &str) -> Result<String, ExportError> {
    let user = ssh_user(spec)?;
    let connect = match spec.ssh.connect_via {
        ConnectVia::Public => "public_address",
        ConnectVia::Private => "private_address",
    };
    let settings = serde_json::json!({
        "terraform_dir": terraform_dir,
        "output": NODES_OUTPUT,
        "connect": connect,
        "ansible_user": user,
        "ansible_port": spec.ssh.port,
    });
    Ok(INVENTORY_SCRIPT.replace("SETTINGS_JSON", &settings.to_string()))
}

const INVENTORY_SCRIPT: &str = r#"#!/usr/bin/env python3
"""The cluster's hosts from Terraform's outputs: an Ansible inventory script.

Generated by pgform. Runs `terraform -chdir=<dir> output -json pgform_nodes` (the Terraform
directory is relative to this file; PGFORM_TERRAFORM_DIR overrides it) and prints the
groups `primary` and `replicas` with each host's ansible_host, node_name and
private_address, as pgform's static inventory.ini would.
"""
import json
import os
import subprocess
import sys

SETTINGS = json.loads('SETTINGS_JSON')


def fail(message):
    sys.stderr.write("inventory.py: " + message + "\n")
    sys.exit(1)


def terraform_nodes():
    here = os.path.dirname(os.path.abspath(__file__))
    tf_dir = os.environ.get("PGFORM_TERRAFORM_DIR") or os.path.join(here, SETTINGS["terraform_dir"])
    cmd = ["terraform", "-chdir=" + tf_dir, "output", "-no-color", "-json", SETTINGS["output"]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        fail("cannot run terraform (%s); install it or use pgform's inventory.ini" % e)
    if done.returncode != 0:
        fail("`%s` failed: %s\nRun `terraform apply` in %s first." % (" ".join(cmd), done.stderr.strip(), tf_dir))
    try:
        nodes = json.loads(done.stdout)
    except ValueError as e:
        fail("terraform printed no JSON for output %s: %s" % (SETTINGS["output"], e))
    if not isinstance(nodes, list):
        fail("output %s is not a list of nodes" % SETTINGS["output"])
    return nodes


def inventory(nodes):
    groups = {"primary": [], "replicas": []}
    hostvars = {}
    for node in nodes:
        name = node.get("name")
        role = node.get("role")
        address = node.get(SETTINGS["connect"]) or ""
        if not name or role not in ("primary", "replica"):
            fail("malformed node in output %s: %r" % (SETTINGS["output"], node))
        if not address:
            fail("node %s has no %s (is the instance running?)" % (name, SETTINGS["connect"]))
        groups["primary" if role == "primary" else "replicas"].append(name)
        hostvars[name] = {
            "ansible_host": address,
            "node_name": name,
            "private_address": node.get("private_address") or "",
            "ansible_user": SETTINGS["ansible_user"],
            "ansible_port": SETTINGS["ansible_port"],
        }
    out = {group: {"hosts": hosts} for group, hosts in groups.items()}
    out["all"] = {"children": ["ungrouped", "primary", "replicas"]}
    out["_meta"] = {"hostvars": hostvars}
    return out


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        print(json.dumps(inventory(terraform_nodes()), indent=2, sort_keys=True))
    elif len(sys.argv) == 3 and sys.argv[1] == "--host":
        print("{}")
    else:
        fail("usage: inventory.py --list | --host NAME")


if __name__ == "__main__":
    main()
"#;

type Vars = BTreeMap<String, serde_json::Value>;

/// The variables of [`hosts::vars`] (password and address-dependent ones left out):
/// those equal on every node, and the rest per node.
fn variables(
    spec: &ClusterSpec,
    nodes: &[Node],
) -> Result<(Vars, BTreeMap<String, Vars>), ExportError> {
    let patroni = spec.ha.patroni();
    // HA: each address as a mark that `vars_value` turns into Jinja over the inventory.
    let marked: Vec<Node> = nodes
        .iter()
        .map(|n| Node {
            private_address: format!("{ADDRESS_MARK}{}@", n.name),
            ..n.clone()
        })
        .collect();
    let no_passwords = hosts::ha::Passwords {
        rest: String::new(),
        superuser: String::new(),
        rewind: String::new(),
    };
    let mut all = Vec::new();
    for (n, m) in nodes.iter().zip(&marked) {
        // No password goes in: the export never sees it.
        let native = if patroni {
            hosts::ha::vars(spec, &marked, m, "", &BTreeMap::new(), &no_passwords)
        } else {
            hosts::vars(spec, nodes, n, "", &BTreeMap::new())
        };
        let v = to_json(&native)
            .map_err(|e| ExportError::Input(format!("variables of {}: {e}", n.name)))?;
        let serde_json::Value::Object(map) = v else {
            return Err(ExportError::Input(format!(
                "variables of {} are not a map",
                n.name
            )));
        };
        let mut vars: Vars = map.into_iter().collect();
        vars.remove("replication_password");
        // HA: the passwords come from `vault.yml`, the node's address from the inventory.
        vars.remove("ha_passwords");
        if patroni {
            vars.remove("private_address");
        }
        // TLS: files come from `pgform_tls_dir` (see [`tls_vars`]), names are pgform's.
        vars.remove("tls_names");
        vars.remove("tls_local_dir");
        // Databases and users are structured variables of their own (see
        // `access_vars`); the native task's JSON and passwords stay out.
        vars.remove("pg_access");
        vars.remove("user_passwords");
        for k in ADDRESS_VARS {
            vars.remove(k);
        }
        all.push((n.name.clone(), vars));
    }
    let mut common = Vars::new();
    if let Some((_, first)) = all.first() {
        for (k, v) in first {
            if !NODE_VARS.contains(&k.as_str()) && all.iter().all(|(_, o)| o.get(k) == Some(v)) {
                common.insert(k.clone(), v.clone());
            }
        }
    }
    let per_node = all
        .into_iter()
        .map(|(name, vars)| {
            let own = vars
                .into_iter()
                .filter(|(k, _)| !common.contains_key(k))
                .collect();
            (name, own)
        })
        .collect();
    Ok((common, per_node))
}

/// Marks a node's address in the HA mode's variables: `@pgform-address-of-<node>@`.
const ADDRESS_MARK: &str = "@pgform-address-of-";

/// A variable's text with each [`ADDRESS_MARK`] replaced by the node's
/// `private_address` from the inventory, the rest kept literally: the text
/// [`hosts::ha::vars`] gives natively once the addresses are known.
fn addressed(text: &str) -> String {
    let literal = |t: &str| {
        if t.contains(['{', '}', '%', '#']) {
            format!("{{% raw %}}{t}{{% endraw %}}")
        } else {
            t.to_string()
        }
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(ADDRESS_MARK) {
        let after = &rest[i + ADDRESS_MARK.len()..];
        let Some(end) = after.find('@') else {
            break;
        };
        out.push_str(&literal(&rest[..i]));
        // Node names are checked (`check_nodes`): letters, digits, `-`, `_`, `.`.
        out.push_str(&format!(
            "{{{{ hostvars['{}']['private_address'] }}}}",
            &after[..end]
        ));
        rest = &after[end + 1..];
    }
    out.push_str(&literal(rest));
    out
}

/// `vault.yml`'s secrets beside the replication password: the users' passwords and,
/// in the HA mode, Patroni's (`ha_passwords`, as pgform's run has them), each looked up
/// when the playbook runs from the source the spec names.
fn vault_secrets(spec: &ClusterSpec) -> Y {
    let mut m = Mapping::new();
    m.insert(s("pgform_user_passwords"), access::vault_passwords(spec));
    if spec.ha.patroni() {
        let mut ha = Mapping::new();
        for (key, secret) in ["rest", "superuser", "rewind"]
            .into_iter()
            .zip(spec.ha.secrets())
        {
            if let Some(lookup) = access::lookup(&secret.source) {
                ha.insert(s(key), s(&lookup));
            }
        }
        m.insert(s("ha_passwords"), Y::Mapping(ha));
    }
    Y::Mapping(m)
}

/// [`ADDRESS_VARS`] as Jinja over the inventory: the same text [`hosts::vars`] gives
/// natively once the inventory's `private_address`es are known.
fn inventory_vars(spec: &ClusterSpec) -> Vec<(&'static str, String)> {
    let user = jinja_literal(&format!("\"{}\"", spec.postgres.replication_user));
    // `{%-` strips the line break before a tag, and each line break the text needs is
    // a Jinja string (a real line break inside quotes, no escape): the same text
    // whatever the trim_blocks setting.
    let newline = "{{ '\n' }}";
    // As hosts::hba_block: hostssl with TLS (members also plain when allowed).
    let (members, clients) = match (spec.tls.enabled, spec.tls.allow_plain_in_cluster) {
        (false, _) => ("host", "host"),
        (true, true) => ("host", "hostssl"),
        (true, false) => ("hostssl", "hostssl"),
    };
    let mut hba = format!(
        "# replication between the cluster's members\n\
         {{%- for address in member_addresses %}}\
         {newline}{members} replication {user} {{{{ address }}}}/32 scram-sha-256\n\
         {members} all {user} {{{{ address }}}}/32 scram-sha-256\n\
         {{%- endfor %}}"
    );
    if !spec.access.client_cidrs.is_empty() {
        hba.push_str(newline);
        hba.push_str("# clients");
        for c in &spec.access.client_cidrs {
            hba.push_str(&format!("\n{clients} all all {c} scram-sha-256"));
        }
    }
    vec![
        (
            "member_addresses",
            "{{ (groups['primary'] + groups['replicas']) | map('extract', hostvars, \
             'private_address') | list }}"
                .to_string(),
        ),
        (
            "primary_address",
            "{{ hostvars[groups['primary'][0]]['private_address'] }}".to_string(),
        ),
        ("hba_block", hba),
    ]
}

/// TLS: the folder the certificate files are copied from. Point it at pgform's TLS
/// folder (where `pgform apply` made and renews them); the export holds no key.
fn tls_vars(spec: &ClusterSpec) -> Vec<(&'static str, String)> {
    if !spec.tls.enabled {
        return Vec::new();
    }
    let dir = spec
        .tls
        .dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| format!("{}.tls", spec.name));
    vec![("pgform_tls_dir", dir)]
}

/// Literal text inside a Jinja template: raw when it holds Jinja delimiters.
fn jinja_literal(text: &str) -> String {
    if ["{{", "{%", "{#", "}}", "%}", "#}"]
        .iter()
        .any(|d| text.contains(d))
    {
        format!("{{% raw %}}{text}{{% endraw %}}")
    } else {
        text.to_string()
    }
}

/// A template value as plain data.
fn to_json(v: &minijinja::Value) -> Result<serde_json::Value, String> {
    use minijinja::value::ValueKind as K;
    use serde_json::Value as J;
    Ok(match v.kind() {
        K::Undefined | K::None => J::Null,
        K::Bool => J::Bool(v.is_true()),
        K::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                J::from(i)
            } else {
                f64::try_from(v.clone())
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(J::Number)
                    .ok_or_else(|| format!("number {v} cannot be exported"))?
            }
        }
        K::String => J::String(v.as_str().unwrap_or_default().to_string()),
        K::Seq | K::Iterable => J::Array(
            v.try_iter()
                .map_err(|e| e.to_string())?
                .map(|item| to_json(&item))
                .collect::<Result<_, _>>()?,
        ),
        K::Map => {
            let mut out = serde_json::Map::new();
            for key in v.try_iter().map_err(|e| e.to_string())? {
                let item = v.get_item(&key).map_err(|e| e.to_string())?;
                out.insert(key.to_string(), to_json(&item)?);
            }
            J::Object(out)
        }
        other => return Err(format!("a {other:?} value cannot be exported")),
    })
}

/// A variable's value as YAML: strings Ansible would template are marked `!unsafe`,
/// so that a `{{` in a spec value is written as it is.
fn vars_value(v: &serde_json::Value) -> Y {
    use serde_json::Value as J;
    match v {
        J::Null => Y::Null,
        J::Bool(b) => Y::Bool(*b),
        J::Number(n) => serde_norway::to_value(n).unwrap_or(Y::Null),
        J::String(t) if t.contains(ADDRESS_MARK) => Y::String(addressed(t)),
        J::String(t) if t.contains('{') || t.contains('%') => {
            Y::Tagged(Box::new(serde_norway::value::TaggedValue {
                tag: serde_norway::value::Tag::new("unsafe"),
                value: Y::String(t.clone()),
            }))
        }
        J::String(t) => Y::String(t.clone()),
        J::Array(a) => Y::Sequence(a.iter().map(vars_value).collect()),
        J::Object(o) => {
            let mut m = Mapping::new();
            for (k, v) in o {
                m.insert(Y::String(k.clone()), vars_value(v));
            }
            Y::Mapping(m)
        }
    }
}

/// The jump hosts as a ProxyCommand: `-o ProxyJump` would give the hops neither the key
/// nor the known-hosts policy. Each hop's ssh gets them on its command line, and reaches
/// its host through the hops before it (a nested ProxyCommand: `%` doubled, since every
/// level's ssh expands `%h:%p` once).
fn proxy_command(spec: &ClusterSpec) -> Option<String> {
    let known_hosts = spec.ssh.known_hosts_file.as_ref();
    let policy = match spec.ssh.known_hosts {
        KnownHostsPolicy::Strict => "StrictHostKeyChecking=yes",
        KnownHostsPolicy::AcceptNew => "StrictHostKeyChecking=accept-new",
    };
    hosts::jump_hosts(spec).iter().fold(None, |before, hop| {
        let mut words: Vec<String> = vec!["ssh".into(), "-o".into(), "BatchMode=yes".into()];
        let mut opt = |o: String| words.extend(["-o".to_string(), o]);
        opt(policy.into());
        if let Some(file) = known_hosts {
            opt(format!("UserKnownHostsFile={}", file.display()));
        }
        if let Some(before) = before {
            opt(format!("ProxyCommand={}", before.replace('%', "%%")));
        }
        if let Some(key) = &hop.private_key {
            opt("IdentitiesOnly=yes".into());
            words.extend(["-i".into(), key.to_string_lossy().into_owned()]);
        }
        if let Some(port) = hop.port {
            words.extend(["-p".into(), port.to_string()]);
        }
        if let Some(user) = &hop.user {
            words.extend(["-l".into(), user.clone()]);
        }
        words.extend(["-W".into(), "%h:%p".into(), hop.host.clone()]);
        Some(words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
    })
}

// --- The playbook --------------------------------------------------------------------

/// The group the HA mode's leader plays run on (see [`leader_play`]).
const LEADER_GROUP: &str = "pgform_leader";

fn site(spec: &ClusterSpec, book: &Playbook, inventory_file: &str) -> Result<String, ExportError> {
    let patroni = spec.ha.patroni();
    let mut tx = Translator::default();
    let mut plays = vec![preflight(patroni)];
    let mut leader_known = false;
    for play in &book.plays {
        // HA: the primary's plays run on the node Patroni names, found first.
        let primary = if patroni { LEADER_GROUP } else { "primary" };
        if patroni && play.hosts == Hosts::Primary && !leader_known {
            plays.push(leader_play());
            leader_known = true;
        }
        let groups: Vec<&str> = match (play.hosts, play.order) {
            (Hosts::All, Order::ReplicasFirst) => vec!["replicas", "primary"],
            (Hosts::All, Order::PrimaryFirst) => vec!["primary", "replicas"],
            (Hosts::All, Order::Parallel) => vec!["all"],
            (Hosts::Primary, _) => vec![primary],
            (Hosts::Replicas, _) => vec!["replicas"],
        };
        for group in groups {
            plays.push(tx.play(play, group)?);
        }
    }
    if patroni {
        // As pgform's run settles after its plays: replicas first, the leader last.
        let wait = hosts::ha::settle_timeout(spec).as_secs();
        plays.push(restart_play("pgform_not_leader", wait));
        plays.push(restart_play(LEADER_GROUP, wait));
    }
    let text = yaml::document(&Y::Sequence(plays));
    let source = if patroni {
        "playbooks/patroni.yml; the leader's plays run where Patroni's REST API says it leads"
    } else {
        "playbooks/site.yml"
    };
    Ok(format!(
        "---\n\
         # Generated by pgform from its embedded task list ({source}): the same\n\
         # plays, tasks and handlers, as Ansible modules. Variables: group_vars/, host_vars/.\n\
         # Run: {PASSWORD_ENV}=... ansible-playbook -i {inventory_file} site.yml\n{}",
        text.trim_start_matches("---\n")
    ))
}

/// HA: waits until Patroni names a running leader (a first bootstrap elects one), then
/// asks each node's REST API whether it leads (`/leader`: 200 on the leader only) and
/// puts that node in [`LEADER_GROUP`], as pgform's run does before the primary's plays:
/// the spec's first node need not be the leader. In check mode (`--check`) nothing was
/// started, so it asks once and does not fail: on hosts without Patroni yet, no node
/// leads and the leader's plays have no host, as pgform's own check reports them.
fn leader_play() -> Y {
    let cluster = "pgform_patroni_cluster";
    let leads = "pgform_patroni_leader";
    let rest = "http://{{ private_address }}:8008";
    let task = |name: &str, module: &str, args: Y| map([("name", s(name)), (module, args)]);
    let read = |t: Y, register: &str| {
        let Y::Mapping(mut m) = t else { return t };
        m.insert(s("register"), s(register));
        m.insert(s("changed_when"), Y::Bool(false));
        m.insert(s("check_mode"), Y::Bool(false));
        Y::Mapping(m)
    };
    let mut wait = read(
        task(
            "Patroni names a running leader",
            "ansible.builtin.uri",
            map([("url", s(&format!("{rest}/cluster")))]),
        ),
        cluster,
    );
    if let Y::Mapping(m) = &mut wait {
        m.insert(
            s("until"),
            s(&format!(
                "{cluster}.json is defined and ({cluster}.json.members | default([]) \
                 | selectattr('role', 'in', ['leader', 'master']) \
                 | selectattr('state', 'equalto', 'running') | list | length > 0)"
            )),
        );
        m.insert(s("retries"), s("{{ 0 if ansible_check_mode else 240 }}"));
        m.insert(s("delay"), Y::Number(1.into()));
        m.insert(s("failed_when"), s(&check_mode_lenient(cluster)));
    }
    let mut ask = read(
        task(
            "Ask Patroni whether this node leads",
            "ansible.builtin.uri",
            map([
                ("url", s(&format!("{rest}/leader"))),
                (
                    "status_code",
                    Y::Sequence(vec![Y::Number(200.into()), Y::Number(503.into())]),
                ),
            ]),
        ),
        leads,
    );
    if let Y::Mapping(m) = &mut ask {
        m.insert(s("failed_when"), s(&check_mode_lenient(leads)));
    }
    let mut group = task(
        "Group the leader",
        "ansible.builtin.group_by",
        map([(
            "key",
            s(&format!(
                "{{{{ '{LEADER_GROUP}' if {leads}.status | default(0) == 200 else 'pgform_not_leader' }}}}"
            )),
        )]),
    );
    // Grouping changes nothing on the hosts (Ansible reports it as a change).
    if let Y::Mapping(m) = &mut group {
        m.insert(s("changed_when"), Y::Bool(false));
    }
    let mut one = task(
        "Exactly one node leads",
        "ansible.builtin.assert",
        map([
            (
                "that",
                Y::Sequence(vec![s(&format!(
                    "groups['{LEADER_GROUP}'] | default([]) | length == 1"
                ))]),
            ),
            (
                "fail_msg",
                s(&format!(
                    "Patroni's REST API names {{{{ groups['{LEADER_GROUP}'] | default([]) | length }}}} leader(s); \
                     see /var/log/pgform-patroni.log on the hosts"
                )),
            ),
            ("quiet", Y::Bool(true)),
        ]),
    );
    if let Y::Mapping(m) = &mut one {
        m.insert(s("run_once"), Y::Bool(true));
        // A check on hosts where Patroni does not run yet finds no leader: not an error.
        m.insert(
            s("when"),
            s(&format!(
                "not ansible_check_mode or groups['{LEADER_GROUP}'] | default([]) | length > 0"
            )),
        );
    }
    map([
        ("name", s("Patroni's leader")),
        ("hosts", s("all")),
        ("become", Y::Bool(false)),
        ("gather_facts", Y::Bool(false)),
        ("tasks", Y::Sequence(vec![wait, ask, group, one])),
    ])
}

/// `failed_when` for a read that may find nothing in check mode: Ansible's own verdict
/// (`failed`) outside it.
fn check_mode_lenient(register: &str) -> String {
    format!("{register}.failed | default(false) and not ansible_check_mode")
}

/// HA: the restarts a changed parameter needs, one member of `group` at a time, as
/// pgform's run does them after its plays: once the member runs the dynamic
/// configuration (Patroni's settings file holds the spec's parameters and the server
/// read it; waited for up to `wait_seconds`), Patroni's REST API restarts it if a
/// restart is pending (`restart_pending`: otherwise it answers 503, "restart conditions
/// are not satisfied"), then it must run again with nothing pending. A member whose
/// PostgreSQL does not run (a replica being cloned) starts with the configuration.
fn restart_play(group: &str, wait_seconds: u64) -> Y {
    let member = "pgform_patroni_member";
    let restarted = "pgform_patroni_restart";
    let settings = "pgform_member_settings";
    let rest = "http://{{ private_address }}:8008";
    let runs = s(&format!("{member}.json.state | default('') == 'running'"));
    let get_member = |name: &str| {
        T::new(name).module(
            "ansible.builtin.uri",
            map([
                ("url", s(&format!("{rest}/patroni"))),
                (
                    "status_code",
                    Y::Sequence(vec![Y::Number(200.into()), Y::Number(503.into())]),
                ),
            ]),
        )
    };
    let tasks = vec![
        get_member("Ask Patroni about this member")
            .set("register", s(member))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false))
            .set("failed_when", s(&check_mode_lenient(member))),
        T::new("The member runs the dynamic configuration")
            .module(
                "community.postgresql.postgresql_query",
                map([
                    (
                        "query",
                        s("SELECT coalesce(pg_conf_load_time() >= \
                           (pg_stat_file(current_setting('config_file'), true)).modification, false) AS loaded,\n\
                           (SELECT count(*) FROM json_each_text(%(wanted)s::json) AS w WHERE NOT EXISTS (\n\
                           SELECT 1 FROM pg_file_settings AS f WHERE f.sourcefile = current_setting('config_file')\n\
                           AND lower(f.name) = lower(w.key) AND f.setting = w.value)) AS missing"),
                    ),
                    (
                        "named_args",
                        map([(
                            "wanted",
                            s("{{ (patroni_dcs | from_json).postgresql.parameters | to_json }}"),
                        )]),
                    ),
                ]),
            )
            .set("become_user", s("postgres"))
            .set("register", s(settings))
            .set(
                "until",
                s(&format!(
                    "{settings}.query_result[0].loaded and {settings}.query_result[0].missing == 0"
                )),
            )
            .set("retries", Y::Number(wait_seconds.into()))
            .set("delay", Y::Number(1.into()))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false))
            .set("when", runs.clone()),
        T::new("Restart if a restart is pending")
            .module(
                "ansible.builtin.uri",
                map([
                    ("url", s(&format!("{rest}/restart"))),
                    ("method", s("POST")),
                    ("url_username", s("{{ rest_user }}")),
                    ("url_password", s("{{ ha_passwords.rest }}")),
                    ("force_basic_auth", Y::Bool(true)),
                    ("body_format", s("json")),
                    ("body", map([("restart_pending", Y::Bool(true))])),
                    ("return_content", Y::Bool(true)),
                    (
                        "status_code",
                        Y::Sequence(vec![Y::Number(200.into()), Y::Number(503.into())]),
                    ),
                ]),
            )
            .set("register", s(restarted))
            .set("changed_when", s(&format!("{restarted}.status == 200")))
            .set(
                "failed_when",
                s(&format!(
                    "{restarted}.status == 503 and 'conditions are not satisfied' \
                     not in {restarted}.content | default('')"
                )),
            )
            .set("no_log", Y::Bool(true))
            .set("when", runs),
        get_member("The member runs again, nothing pending")
            .set("register", s(&format!("{member}_after")))
            .set(
                "until",
                s(&format!(
                    "{member}_after.json.state | default('') == 'running' \
                     and not ({member}_after.json.pending_restart | default(false))"
                )),
            )
            .set("retries", Y::Number(90.into()))
            .set("delay", Y::Number(1.into()))
            .set("changed_when", Y::Bool(false))
            .set("when", s(&format!("{restarted}.status | default(0) == 200"))),
    ];
    map([
        (
            "name",
            s(if group == LEADER_GROUP {
                "Pending restart of the leader"
            } else {
                "Pending restarts of the replicas"
            }),
        ),
        ("hosts", s(group)),
        ("serial", Y::Number(1.into())),
        ("become", Y::Bool(true)),
        ("gather_facts", Y::Bool(false)),
        (
            "tasks",
            Y::Sequence(tasks.into_iter().map(T::done).collect()),
        ),
    ])
}

/// Refuses to run without the passwords (an unset variable would set an empty one).
fn preflight(patroni: bool) -> Y {
    let mut that = vec![s("replication_password | length > 0")];
    if patroni {
        for key in ["rest", "superuser", "rewind"] {
            that.push(s(&format!(
                "ha_passwords.{key} is defined and ha_passwords.{key} | length > 0"
            )));
        }
    }
    let mut tasks = vec![map([
        ("name", s("The passwords are set")),
        ("no_log", Y::Bool(true)),
        (
            "ansible.builtin.assert",
            map([("that", Y::Sequence(that)), ("quiet", Y::Bool(true))]),
        ),
    ])];
    if patroni {
        tasks.extend(no_plain_cluster());
    }
    let mut play = map([
        ("name", s("Check variables")),
        ("hosts", s("all")),
        ("gather_facts", Y::Bool(false)),
        ("tasks", Y::Sequence(tasks)),
    ]);
    // HA: one refused host stops the run everywhere before anything changed.
    if patroni && let Y::Mapping(m) = &mut play {
        m.insert(s("any_errors_fatal"), Y::Bool(true));
    }
    play
}

/// HA: refuses hosts that run the plain mode's cluster (Debian's `<major>/main`, which
/// the HA mode never makes, not disabled by pgform's conversion), as pgform's run does
/// before it converts one: Patroni started beside it could promote the wrong node. The
/// conversion itself is pgform's (`playbooks/patroni-convert.yml` is not exported).
fn no_plain_cluster() -> [Y; 3] {
    let found = "pgform_plain_cluster";
    let disabled = "pgform_plain_disabled";
    [
        map([
            ("name", s("Look for the plain mode's cluster")),
            (
                "ansible.builtin.stat",
                map([(
                    "path",
                    s("/etc/postgresql/{{ pg_version }}/main/postgresql.conf"),
                )]),
            ),
            ("register", s(found)),
        ]),
        map([
            ("name", s("Look for a plain-mode cluster handed to Patroni")),
            (
                "ansible.builtin.command",
                map([(
                    "argv",
                    Y::Sequence(vec![
                        s("grep"),
                        s("-qsx"),
                        s("disabled"),
                        s("/etc/postgresql/{{ pg_version }}/main/start.conf"),
                    ]),
                )]),
            ),
            ("register", s(disabled)),
            ("changed_when", Y::Bool(false)),
            ("failed_when", Y::Bool(false)),
        ]),
        map([
            ("name", s("No plain-mode cluster on the host")),
            (
                "ansible.builtin.assert",
                map([
                    (
                        "that",
                        Y::Sequence(vec![s(&format!(
                            "not {found}.stat.exists or {disabled}.rc == 0"
                        ))]),
                    ),
                    (
                        "fail_msg",
                        s(
                            "{{ inventory_hostname }} runs the plain mode's PostgreSQL cluster \
                           ({{ pg_version }}/main): this playbook does not convert a plain cluster \
                           to Patroni, and starting Patroni beside it could promote the wrong node; \
                           nothing was changed. Convert it with `pgform apply` (data kept), keep \
                           ha.mode = \"plain\", or make a new HA cluster and move the data",
                        ),
                    ),
                    ("quiet", Y::Bool(true)),
                ]),
            ),
        ]),
    ]
}

/// A task or play name as ansible-lint wants it: starting with a capital letter.
fn title(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn s(x: &str) -> Y {
    Y::String(x.to_string())
}

fn map<const N: usize>(pairs: [(&str, Y); N]) -> Y {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Y::Mapping(m)
}

fn list(items: &[String]) -> Y {
    Y::Sequence(items.iter().map(|i| s(i)).collect())
}

fn mode(m: &str) -> Y {
    if m.contains("{{") || m.starts_with('0') {
        s(m)
    } else {
        s(&format!("0{m}"))
    }
}

fn meta_args(m: &mut Mapping, meta: &Meta) {
    m.insert(s("owner"), s(&meta.owner));
    m.insert(s("group"), s(&meta.group));
    m.insert(s("mode"), mode(&meta.mode));
}

/// True for a task that writes apt's sources.
fn changes_apt_sources(action: &Action) -> bool {
    let path = match action {
        Action::Copy { dest, .. } | Action::Template { dest, .. } => dest,
        Action::File { path, .. } => path,
        _ => return false,
    };
    path.starts_with("/etc/apt/")
}

/// One Ansible task under construction.
struct T(Mapping);

impl T {
    fn new(name: &str) -> T {
        let mut m = Mapping::new();
        m.insert(s("name"), s(&title(name)));
        T(m)
    }
    fn set(mut self, k: &str, v: Y) -> T {
        // A user switch needs privilege escalation at the same level (partial-become).
        if k == "become_user" {
            self.0.insert(s("become"), Y::Bool(true));
        }
        self.0.insert(s(k), v);
        self
    }
    fn module(self, module: &str, mut args: Y) -> T {
        // The maintenance database, as the native SQL uses (and no warning about it).
        if module.starts_with("community.postgresql.")
            && let Y::Mapping(m) = &mut args
        {
            m.insert(s("login_db"), s("postgres"));
        }
        self.set(module, args)
    }
    fn done(self) -> Y {
        Y::Mapping(self.0)
    }
}

#[derive(Default)]
struct Translator {
    /// Counter for register names.
    registers: usize,
    /// The extra packages went into the first package task already.
    extra_packages: bool,
}

impl Translator {
    fn play(&mut self, play: &Play, group: &str) -> Result<Y, ExportError> {
        let mut tasks = Vec::new();
        let mut refresh_apt = false;
        for t in &play.tasks {
            let action = Action::parse(&t.action)
                .map_err(|e| ExportError::Input(format!("task `{}`: {e}", t.name)))?;
            // apt must read changed sources before it installs: refresh its lists
            // then, whatever their age (`cache_valid_time` alone would skip it).
            if matches!(action, Action::Package { .. }) && refresh_apt {
                tasks.push(map([
                    ("name", s("Apply the apt source changes")),
                    ("ansible.builtin.meta", s("flush_handlers")),
                ]));
            }
            let mut translated = self.task(t, false)?;
            if changes_apt_sources(&action) {
                refresh_apt = true;
                for task in &mut translated {
                    if let Y::Mapping(m) = task {
                        m.insert(s("notify"), Y::Sequence(vec![s(APT_REFRESH)]));
                    }
                }
            }
            tasks.extend(translated);
        }
        let mut handlers = Vec::new();
        if refresh_apt {
            handlers.push(map([
                ("name", s(APT_REFRESH)),
                (
                    "ansible.builtin.apt",
                    map([("update_cache", Y::Bool(true))]),
                ),
            ]));
        }
        for h in &play.handlers {
            handlers.extend(self.task(h, true)?);
        }
        let mut p = map([
            ("name", s(&title(&play.name))),
            ("hosts", s(group)),
            ("become", Y::Bool(true)),
            ("gather_facts", Y::Bool(false)),
            ("tasks", Y::Sequence(tasks)),
        ]);
        if !handlers.is_empty()
            && let Y::Mapping(m) = &mut p
        {
            m.insert(s("handlers"), Y::Sequence(handlers));
        }
        Ok(p)
    }

    fn register(&mut self) -> String {
        self.registers += 1;
        format!("pgform_result_{}", self.registers)
    }

    /// The Ansible tasks for one native task (or handler: then every task listens to
    /// the native handler's name).
    fn task(&mut self, task: &Task, handler: bool) -> Result<Vec<Y>, ExportError> {
        let action = Action::parse(&task.action)
            .map_err(|e| ExportError::Input(format!("task `{}`: {e}", task.name)))?;
        let name = task.name.as_str();
        let sub = |suffix: &str| T::new(&format!("{name}: {suffix}"));
        let mut out: Vec<T> = Vec::new();
        // Index of the task(s) whose change notifies handlers.
        let mut notifying: Vec<usize> = vec![0];
        match action {
            Action::Package { mut names } => {
                if !self.extra_packages {
                    self.extra_packages = true;
                    for p in EXTRA_PACKAGES {
                        if !names.iter().any(|n| n == p) {
                            names.push(p.to_string());
                        }
                    }
                }
                out.push(T::new(name).module(
                    "ansible.builtin.apt",
                    map([
                        ("name", list(&names)),
                        ("state", s("present")),
                        ("update_cache", Y::Bool(true)),
                        ("cache_valid_time", Y::Number(3600.into())),
                    ]),
                ));
            }
            Action::Template { src, dest, meta }
            | Action::PgConf {
                src, dest, meta, ..
            } => {
                let mut args = Mapping::new();
                args.insert(s("src"), s(&src));
                args.insert(s("dest"), s(&dest));
                meta_args(&mut args, &meta);
                out.push(T::new(name).module("ansible.builtin.template", Y::Mapping(args)));
            }
            Action::Copy {
                content,
                dest,
                meta,
            } => {
                let mut args = Mapping::new();
                args.insert(s("content"), s(&content));
                args.insert(s("dest"), s(&dest));
                meta_args(&mut args, &meta);
                out.push(T::new(name).module("ansible.builtin.copy", Y::Mapping(args)));
            }
            Action::Block {
                path,
                block,
                marker,
            } => {
                out.push(T::new(name).module(
                    "ansible.builtin.blockinfile",
                    map([
                        ("path", s(&path)),
                        ("block", s(&block)),
                        ("marker", s(&format!("# {{mark}} {marker}"))),
                    ]),
                ));
            }
            Action::File { path, state, meta } => {
                let mut args = Mapping::new();
                args.insert(s("path"), s(&path));
                match state {
                    FileState::Absent => {
                        args.insert(s("state"), s("absent"));
                    }
                    FileState::Directory => {
                        args.insert(s("state"), s("directory"));
                        meta_args(&mut args, &meta);
                    }
                }
                out.push(T::new(name).module("ansible.builtin.file", Y::Mapping(args)));
            }
            Action::Command {
                argv,
                creates,
                unless,
            } => {
                let mut args = Mapping::new();
                args.insert(s("argv"), list(&argv));
                if let Some(c) = creates {
                    args.insert(s("creates"), s(&c));
                }
                let has_creates = args.contains_key(s("creates"));
                let mut main = T::new(name).module("ansible.builtin.command", Y::Mapping(args));
                if !has_creates {
                    // It runs only when something needs doing (or `creates` says so).
                    main = main.set("changed_when", Y::Bool(true));
                }
                if let Some(check) = unless {
                    let reg = self.register();
                    out.push(
                        sub("check")
                            .module("ansible.builtin.command", map([("argv", list(&check))]))
                            .set("register", s(&reg))
                            .set("changed_when", Y::Bool(false))
                            .set("failed_when", Y::Bool(false))
                            .set("check_mode", Y::Bool(false)),
                    );
                    main = main.set("when", s(&format!("{reg}.rc != 0")));
                    notifying = vec![1];
                }
                out.push(main);
            }
            Action::Service { version, state } => {
                let verb = match state {
                    ServiceState::Started => "start",
                    ServiceState::Restarted => "restart",
                    ServiceState::Reloaded => "reload",
                };
                let mut args = Mapping::new();
                args.insert(
                    s("argv"),
                    list(&[
                        "pg_ctlcluster".into(),
                        version.clone(),
                        "main".into(),
                        verb.into(),
                    ]),
                );
                let started = state == ServiceState::Started;
                if started {
                    args.insert(
                        s("creates"),
                        s(&format!("/var/run/postgresql/{version}-main.pid")),
                    );
                }
                let mut task = T::new(name).module("ansible.builtin.command", Y::Mapping(args));
                if !started {
                    task = task.set("changed_when", Y::Bool(true));
                }
                out.push(task);
            }
            Action::ApplySettings { version } => {
                // Reload, then restart if a changed parameter needs it; a stopped
                // cluster is left alone (it reads its files when it starts).
                let ctl = |verb: &str| {
                    map([(
                        "argv",
                        list(&[
                            "pg_ctlcluster".into(),
                            version.clone(),
                            "main".into(),
                            verb.into(),
                        ]),
                    )])
                };
                let status = self.register();
                let pending = self.register();
                out.push(
                    sub("is PostgreSQL running")
                        .module("ansible.builtin.command", ctl("status"))
                        .set("register", s(&status))
                        .set("changed_when", Y::Bool(false))
                        .set("failed_when", Y::Bool(false)),
                );
                out.push(
                    sub("reload")
                        .module("ansible.builtin.command", ctl("reload"))
                        .set("changed_when", Y::Bool(true))
                        .set("when", s(&format!("{status}.rc == 0"))),
                );
                out.push(
                    sub("settings pending a restart")
                        .module(
                            "community.postgresql.postgresql_query",
                            map([(
                                "query",
                                s("SELECT count(*) AS pending\nFROM pg_settings\nWHERE pending_restart"),
                            )]),
                        )
                        .set("become_user", s("postgres"))
                        .set("register", s(&pending))
                        .set("changed_when", Y::Bool(false))
                        .set("when", s(&format!("{status}.rc == 0"))),
                );
                out.push(
                    sub("restart")
                        .module("ansible.builtin.command", ctl("restart"))
                        .set("changed_when", Y::Bool(true))
                        .set(
                            "when",
                            Y::Sequence(vec![
                                s(&format!("{status}.rc == 0")),
                                s(&format!("{pending}.query_result[0].pending | int > 0")),
                            ]),
                        ),
                );
                notifying = vec![];
            }
            Action::PgRole {
                name: role,
                password,
                replication,
                ..
            } => {
                let flags = if replication {
                    "LOGIN,REPLICATION"
                } else {
                    "LOGIN,NOREPLICATION"
                };
                out.push(
                    T::new(name)
                        .module(
                            "community.postgresql.postgresql_user",
                            map([
                                ("name", s(&role)),
                                ("password", s(&password)),
                                ("role_attr_flags", s(flags)),
                            ]),
                        )
                        .set("become_user", s("postgres"))
                        .set("environment", map([("PGOPTIONS", s(PGOPTIONS))]))
                        .set("no_log", Y::Bool(true)),
                );
            }
            Action::PgAccess { .. } => out.extend(access::tasks(name)),
            Action::PgSlots { names, prefix, .. } => {
                let vars = map([
                    ("pgform_slots", s(&names)),
                    ("pgform_slot_prefix", s(&prefix)),
                ]);
                let wanted = "pgform_slots.split(',') | map('trim') | select | list";
                let existing = self.register();
                let dropped = self.register();
                let env = map([("PGOPTIONS", s(PGOPTIONS))]);
                out.push(
                    T::new(name)
                        .module(
                            "community.postgresql.postgresql_slot",
                            map([
                                ("name", s("{{ item }}")),
                                ("slot_type", s("physical")),
                                ("immediately_reserve", Y::Bool(true)),
                            ]),
                        )
                        .set("loop", s(&format!("{{{{ {wanted} }}}}")))
                        .set("vars", vars.clone())
                        .set("become_user", s("postgres"))
                        .set("environment", env.clone()),
                );
                out.push(
                    sub("list managed slots")
                        .module(
                            "community.postgresql.postgresql_query",
                            map([
                                (
                                    "query",
                                    s("SELECT slot_name FROM pg_replication_slots\n\
                                       WHERE slot_type = 'physical'\n\
                                       AND left(slot_name, length(%(prefix)s)) = %(prefix)s"),
                                ),
                                (
                                    "named_args",
                                    map([("prefix", s("{{ pgform_slot_prefix }}"))]),
                                ),
                            ]),
                        )
                        .set("vars", vars.clone())
                        .set("become_user", s("postgres"))
                        .set("register", s(&existing))
                        .set("changed_when", Y::Bool(false)),
                );
                let extra = format!(
                    "{{{{ {existing}.query_result | map(attribute='slot_name') \
                     | reject('in', {wanted}) | list }}}}"
                );
                // An active slot cannot be dropped: end its walsender first.
                out.push(
                    sub("end walsenders of slots to drop")
                        .module(
                            "community.postgresql.postgresql_query",
                            map([
                                (
                                    "query",
                                    s("SELECT pg_terminate_backend(active_pid)\n\
                                       FROM pg_replication_slots\n\
                                       WHERE slot_name = %(slot)s AND active_pid IS NOT NULL"),
                                ),
                                ("named_args", map([("slot", s("{{ item }}"))])),
                            ]),
                        )
                        .set("loop", s(&extra))
                        .set("vars", vars.clone())
                        .set("become_user", s("postgres"))
                        .set("changed_when", Y::Bool(false)),
                );
                out.push(
                    sub("drop slots no replica uses")
                        .module(
                            "community.postgresql.postgresql_slot",
                            map([("name", s("{{ item }}")), ("state", s("absent"))]),
                        )
                        .set("loop", s(&extra))
                        .set("vars", vars)
                        .set("become_user", s("postgres"))
                        .set("environment", env)
                        .set("register", s(&dropped))
                        .set("retries", Y::Number(20.into()))
                        .set("delay", Y::Number(1.into()))
                        .set("until", s(&format!("{dropped} is succeeded"))),
                );
                notifying = vec![0, 3];
            }
            Action::TlsFiles(t) => {
                // Copied from the folder pgform keeps (made and renewed by `pgform
                // apply`); the key's content is never in the export.
                let files = [
                    (
                        "CA certificate",
                        "{{ pgform_tls_dir }}/ca.crt".to_string(),
                        t.ca,
                        "root",
                        "644",
                    ),
                    (
                        "certificate",
                        format!("{{{{ pgform_tls_dir }}}}/{}.crt", t.node),
                        t.cert,
                        "postgres",
                        "644",
                    ),
                    (
                        "private key",
                        format!("{{{{ pgform_tls_dir }}}}/{}.key", t.node),
                        t.key,
                        "postgres",
                        "600",
                    ),
                ];
                for (what, src, dest, owner, m) in files {
                    let mut args = Mapping::new();
                    args.insert(s("src"), s(&src));
                    args.insert(s("dest"), s(&dest));
                    meta_args(
                        &mut args,
                        &Meta {
                            owner: owner.into(),
                            group: owner.into(),
                            mode: m.into(),
                        },
                    );
                    let mut task = sub(what).module("ansible.builtin.copy", Y::Mapping(args));
                    if what == "private key" {
                        task = task.set("no_log", Y::Bool(true));
                    }
                    out.push(task);
                }
                notifying = vec![0, 1, 2];
            }
            Action::Daemon(d) => {
                out.extend(daemon_tasks(name, &d, self.register())?);
                notifying = vec![];
            }
            Action::PatroniConfig(c) => {
                out.extend(patroni_config_tasks(
                    name,
                    &c,
                    self.register(),
                    self.register(),
                ));
                notifying = vec![];
            }
            Action::PatroniTakeover(_) => {
                // Only in playbooks/patroni-convert.yml, which the export does not
                // translate (a plain cluster is converted by pgform itself).
                return Err(ExportError::Input(format!(
                    "task `{name}`: the conversion of a plain cluster is not exported"
                )));
            }
            Action::StandbyTls(t) => {
                // Standbys seeded by the export's base backup already verify the
                // primary; one seeded earlier without TLS gets `sslmode=verify-full`.
                out.push(
                    T::new(name)
                        .module(
                            "ansible.builtin.shell",
                            map([(
                                "cmd",
                                s("set -e\n\
                                   f=/var/lib/postgresql/{{ pgform_version }}/main/postgresql.auto.conf\n\
                                   if grep -q \"^primary_conninfo = .*sslmode=verify-full\" \"$f\"; then echo unchanged; exit 0; fi\n\
                                   sed -i \"s#^primary_conninfo = '\\(.*\\)'#primary_conninfo = '\\1 sslmode=verify-full sslrootcert={{ pgform_sslrootcert }}'#\" \"$f\"\n\
                                   pg_ctlcluster {{ pgform_version | quote }} main reload\n"),
                            )]),
                        )
                        .set(
                            "vars",
                            map([
                                ("pgform_version", s(&t.version)),
                                ("pgform_sslrootcert", s(&t.sslrootcert)),
                            ]),
                        )
                        .set("register", s("pgform_standby_tls"))
                        .set(
                            "changed_when",
                            s("'unchanged' not in pgform_standby_tls.stdout"),
                        ),
                );
            }
            Action::BaseBackup {
                version,
                data_dir,
                primary,
                user,
                slot,
                sslrootcert,
            } => {
                let script = "set -e\n\
                    pg_ctlcluster {{ pgform_version | quote }} main stop || true\n\
                    rm -rf {{ pgform_data_dir | quote }}\n\
                    install -d -o postgres -g postgres -m 700 {{ pgform_data_dir | quote }}\n\
                    cd /\n\
                    sudo -n -H -u postgres -- \\\n  \
                    /usr/lib/postgresql/{{ pgform_version | quote }}/bin/pg_basebackup \\\n  \
                    -h {{ pgform_primary | quote }} -p 5432 -U {{ pgform_user | quote }} \\\n  \
                    -D {{ pgform_data_dir | quote }} -R -X stream -S {{ pgform_slot | quote }} \\\n  \
                    --checkpoint=fast -w \\\n  \
                    {{ ('-d ' ~ ('sslmode=verify-full sslrootcert=' ~ pgform_sslrootcert) | quote) if pgform_sslrootcert else '' }}\n";
                out.push(
                    T::new(name)
                        .module(
                            "ansible.builtin.shell",
                            map([
                                ("cmd", s(script)),
                                ("creates", s(&format!("{data_dir}/standby.signal"))),
                            ]),
                        )
                        .set(
                            "vars",
                            map([
                                ("pgform_version", s(&version)),
                                ("pgform_data_dir", s(&data_dir)),
                                ("pgform_primary", s(&primary)),
                                ("pgform_user", s(&user)),
                                ("pgform_slot", s(&slot)),
                                ("pgform_sslrootcert", s(&sslrootcert)),
                            ]),
                        ),
                );
            }
            Action::DataVolume(v) => {
                out.extend(data_volume_tasks(
                    name,
                    &v,
                    self.register(),
                    self.register(),
                ));
                notifying = vec![];
            }
        }
        let mut tasks = Vec::new();
        for (i, mut t) in out.into_iter().enumerate() {
            if let Some(when) = &task.when {
                let native = s(&format!("({when}) is truthy"));
                let cond = match t.0.remove(s("when")) {
                    None => native,
                    Some(Y::Sequence(mut more)) => {
                        more.insert(0, native);
                        Y::Sequence(more)
                    }
                    Some(other) => Y::Sequence(vec![native, other]),
                };
                t.0.insert(s("when"), cond);
            }
            if !task.notify.is_empty() && notifying.contains(&i) {
                t.0.insert(s("notify"), list(&task.notify));
            }
            if task.secret {
                t.0.insert(s("no_log"), Y::Bool(true));
            }
            if let Some(n) = &task.throttle {
                // ansible-lint's schema wants a number where there is no Jinja.
                let value = n
                    .parse::<u64>()
                    .map_or_else(|_| s(n), |k| Y::Number(k.into()));
                t.0.insert(s("throttle"), value);
            }
            if handler {
                t.0.insert(s("listen"), list(std::slice::from_ref(&task.name)));
            }
            tasks.push(t.done());
        }
        Ok(tasks)
    }
}

/// `daemon` (see `tasks/daemon.rs`): the native module's own shell text, so that a
/// host runs etcd and Patroni the same way whichever tool started them: the unit with
/// systemd, else the program as its user with pgform's pid file and start stamp. Its
/// state decides: `stopped` starts, `stale` (settings newer than the last start or
/// reload) reloads or restarts, `running` does nothing.
fn daemon_tasks(
    name: &str,
    d: &crate::tasks::daemon::Daemon,
    state: String,
) -> Result<Vec<T>, ExportError> {
    use crate::remote::shell::ha as sh;
    use crate::tasks::daemon::OnChange;
    let words = [&d.name, &d.user, &d.env_file, &d.config, &d.log, &d.healthy]
        .into_iter()
        .chain(&d.argv);
    if let Some(w) = words.into_iter().find(|w| w.contains(['{', '%', '#'])) {
        return Err(ExportError::Input(format!(
            "task `{name}`: the daemon argument `{w}` cannot be exported (no Jinja there)"
        )));
    }
    let shell = |text: &str| map([("cmd", s(text))]);
    let when_in = |states: &[&str]| {
        let quoted: Vec<String> = states.iter().map(|x| format!("'{x}'")).collect();
        s(&format!("{state}.stdout in [{}]", quoted.join(", ")))
    };
    let start = sh::daemon_start(&d.name, &d.user, &d.argv, &d.env_file, &d.log);
    let mut out = vec![
        T::new(&format!("{name}: state"))
            .module(
                "ansible.builtin.shell",
                shell(sh::daemon_state(&d.name, &d.config).text()),
            )
            .set("register", s(&state))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false)),
    ];
    // The states this task acts on, as the native module decides: a first start
    // (stopped, or started by its package) and changed settings (stale). A restart
    // that waits for a healthy cluster is one task, its start included (under the
    // task's throttle: one host at a time).
    let (first, settings) = (d.starts_first(), d.applies_settings());
    let rolling = d.restarts_when_healthy();
    if rolling {
        let restart = sh::daemon_restart_when_healthy(
            &d.name,
            &d.user,
            &d.argv,
            &d.env_file,
            &d.log,
            &d.healthy,
            crate::tasks::daemon::HEALTHY_WAIT_SECONDS,
        );
        out.push(
            T::new(&format!("{name}: restart once its cluster is healthy"))
                .module("ansible.builtin.shell", shell(restart.text()))
                .set("changed_when", Y::Bool(true))
                .set("when", when_in(&["stale"])),
        );
    }
    let mut applies: Vec<&str> = Vec::new();
    if first {
        applies.push("unstamped");
    }
    if settings && !rolling {
        applies.push("stale");
    }
    if !applies.is_empty() {
        let (verb, text) = match d.on_change {
            OnChange::Reload => ("reload", sh::daemon_reload(&d.name)),
            OnChange::Restart => ("stop to restart", sh::daemon_stop(&d.name)),
        };
        out.push(
            T::new(&format!("{name}: {verb} onto its settings"))
                .module("ansible.builtin.shell", shell(text.text()))
                .set("changed_when", Y::Bool(true))
                .set("when", when_in(&applies)),
        );
    }
    let mut starts: Vec<&str> = Vec::new();
    if first {
        starts.push("stopped");
    }
    if d.on_change == OnChange::Restart {
        starts.extend(applies);
    }
    if !starts.is_empty() {
        out.push(
            T::new(name)
                .module("ansible.builtin.shell", shell(start.text()))
                .set("changed_when", Y::Bool(true))
                .set("when", when_in(&starts)),
        );
    }
    Ok(out)
}

/// `patroni_config` (see `tasks/patroni.rs`): the dynamic configuration read from the
/// REST API, then PATCHed (authenticated) with the spec's, parameters it no longer has
/// set to null (removed). Patroni writes the DCS only when the patch changes something;
/// the task reports a change when the configuration it answers differs from the one
/// read. The restarts a changed parameter may need come after the plays
/// ([`restart_play`]).
fn patroni_config_tasks(
    name: &str,
    c: &crate::tasks::patroni::PatroniConfig,
    current: String,
    patched: String,
) -> Vec<T> {
    let vars = map([
        ("pgform_rest", s(&c.rest)),
        // The native argument is the configuration as JSON text.
        ("pgform_config", s(&c.config)),
        ("pgform_wanted", s("{{ pgform_config | from_json }}")),
        (
            "pgform_removed",
            s(&format!(
                "{{{{ ({current}.json.postgresql.parameters | default({{}})).keys() \
                 | difference(pgform_wanted.postgresql.parameters.keys()) }}}}"
            )),
        ),
    ]);
    vec![
        T::new(&format!("{name}: read"))
            .module(
                "ansible.builtin.uri",
                map([("url", s("{{ pgform_rest }}/config"))]),
            )
            .set("vars", vars.clone())
            .set("register", s(&current))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false)),
        T::new(name)
            .module(
                "ansible.builtin.uri",
                map([
                    ("url", s("{{ pgform_rest }}/config")),
                    ("method", s("PATCH")),
                    ("url_username", s(&c.user)),
                    ("url_password", s(&c.password)),
                    ("force_basic_auth", Y::Bool(true)),
                    ("body_format", s("json")),
                    (
                        "body",
                        s("{{ pgform_wanted | combine({'postgresql': {'parameters': \
                           dict(pgform_removed | product([none]))}}, recursive=True) }}"),
                    ),
                ]),
            )
            .set("vars", vars)
            .set("register", s(&patched))
            .set(
                "changed_when",
                s(&format!("{patched}.json != {current}.json")),
            ),
    ]
}

/// `data_volume` (see `tasks/volume.rs`): the device found the same way, refused when it
/// holds anything but ext4 or when its mount point holds files; community.general's
/// filesystem module makes ext4 only on an empty device (without `force` it never
/// reformats), and ansible.posix's mount writes the fstab line by UUID and mounts it.
fn data_volume_tasks(
    name: &str,
    v: &crate::tasks::volume::DataVolume,
    probe: String,
    uuid: String,
) -> Vec<T> {
    use crate::tasks::volume::{FSTYPE, MOUNT_OPTIONS};
    let sub = |suffix: &str| T::new(&format!("{name}: {suffix}"));
    // `pgform_disk`: the probe's `key=value` lines as a dict (read once registered).
    let vars = map([
        ("pgform_volume_id", s(&v.volume_id)),
        ("pgform_device", s(&v.device)),
        ("pgform_mount", s(&v.mount)),
        // Where the disk may be, in order (as `volume::candidates`).
        (
            "pgform_candidates",
            Y::Sequence(vec![
                s(
                    "{{ ('/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_' ~ pgform_volume_id | replace('-', '')) \
                   if pgform_volume_id else '' }}",
                ),
                s("{{ pgform_device }}"),
                s(
                    "{{ pgform_device | regex_replace('^/dev/sd', '/dev/xvd') if pgform_device.startswith('/dev/sd') else '' }}",
                ),
            ]),
        ),
        (
            "pgform_disk",
            s(&format!(
                "{{{{ {probe}.stdout_lines | select('search', '=') | map('split', '=', 1) \
                 | community.general.dict }}}}"
            )),
        ),
    ]);
    let script = "set -e\n\
        dev=\n\
        for c in {{ pgform_candidates | select | map('quote') | join(' ') }}; do\n  \
          if [ -b \"$c\" ]; then dev=$(readlink -f \"$c\"); break; fi\n\
        done\n\
        echo \"device=$dev\"\n\
        if [ -n \"$dev\" ]; then blkid -p -o export \"$dev\" || true; fi\n\
        echo \"mounted=$(findmnt -rn -o SOURCE --mountpoint {{ pgform_mount | quote }} || true)\"\n\
        if [ -n \"$(ls -A {{ pgform_mount | quote }} 2>/dev/null)\" ]; then echo occupied=yes; fi\n";
    let d = |k: &str| format!("(pgform_disk.{k} | default(''))");
    vec![
        sub("find the device")
            .module("ansible.builtin.shell", map([("cmd", s(script))]))
            .set("vars", vars.clone())
            .set("register", s(&probe))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false)),
        sub("nothing but ext4 on it, nothing under its mount point")
            .module(
                "ansible.builtin.assert",
                map([
                    (
                        "that",
                        Y::Sequence(vec![
                            s(&format!("{} != ''", d("device"))),
                            s(&format!("{} == ''", d("PTTYPE"))),
                            s(&format!("{} in ['', '{FSTYPE}']", d("TYPE"))),
                            s(&format!(
                                "{m} == {dev} or ({m} == '' and {o} == '')",
                                m = d("mounted"),
                                dev = d("device"),
                                o = d("occupied")
                            )),
                        ]),
                    ),
                    (
                        "fail_msg",
                        s(&format!(
                            "the data disk of {{{{ inventory_hostname }}}} ({{{{ {dev} }}}}, {{{{ pgform_volume_id or pgform_device }}}}) \
                             is missing, holds something other than an empty or {FSTYPE} disk ({{{{ {pt} }}}} {{{{ {ty} }}}}), \
                             or {{{{ pgform_mount }}}} already holds files or another mount: nothing is formatted; \
                             use an empty disk, or move the data yourself",
                            dev = d("device"),
                            pt = d("PTTYPE"),
                            ty = d("TYPE")
                        )),
                    ),
                    ("quiet", Y::Bool(true)),
                ]),
            )
            .set("vars", vars.clone()),
        sub("format it when empty")
            .module(
                "community.general.filesystem",
                map([
                    ("dev", s(&format!("{{{{ {} }}}}", d("device")))),
                    ("fstype", s(FSTYPE)),
                    ("opts", s("-L pgdata")),
                ]),
            )
            .set("vars", vars.clone()),
        sub("read its UUID")
            .module(
                "ansible.builtin.command",
                map([(
                    "argv",
                    Y::Sequence(vec![
                        s("blkid"),
                        s("-p"),
                        s("-s"),
                        s("UUID"),
                        s("-o"),
                        s("value"),
                        s(&format!("{{{{ {} }}}}", d("device"))),
                    ]),
                )]),
            )
            .set("vars", vars.clone())
            .set("register", s(&uuid))
            .set("changed_when", Y::Bool(false))
            .set("check_mode", Y::Bool(false)),
        T::new(name)
            .module(
                "ansible.posix.mount",
                map([
                    ("path", s("{{ pgform_mount }}")),
                    ("src", s(&format!("UUID={{{{ {uuid}.stdout }}}}"))),
                    ("fstype", s(FSTYPE)),
                    ("opts", s(MOUNT_OPTIONS)),
                    ("dump", s("0")),
                    ("passno", s("2")),
                    ("state", s("mounted")),
                ]),
            )
            .set("vars", vars),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_marks_become_inventory_lookups_and_the_rest_stays_literal() {
        let text = format!(
            "[\"host all \\\"r{{{{x}}}}\\\" {ADDRESS_MARK}primary@/32\",\"{ADDRESS_MARK}replica-0@:2379\"]"
        );
        assert_eq!(
            addressed(&text),
            "{% raw %}[\"host all \\\"r{{x}}\\\" {% endraw %}{{ hostvars['primary']['private_address'] }}\
             /32\",\"{{ hostvars['replica-0']['private_address'] }}:2379\"]"
        );
        assert_eq!(addressed("no address"), "no address");
        // Marked strings are Jinja, not `!unsafe` data.
        assert_eq!(
            vars_value(&serde_json::Value::String(format!("{ADDRESS_MARK}a@"))),
            Y::String("{{ hostvars['a']['private_address'] }}".into())
        );
    }
}
