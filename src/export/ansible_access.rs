//! The `pg_access` task (databases, users, privileges) in Ansible's words: the
//! community.postgresql modules over variables made from the spec (`pgform_users`,
//! `pgform_databases`, `pgform_grants`); passwords are looked up when the playbook runs
//! (`pgform_user_passwords` in `group_vars/all/vault.yml`), never written.

use serde_norway::{Mapping, Value as Y};

use super::{PGOPTIONS, T, map, s};
use crate::spec::{ClusterSpec, Privilege};
use crate::tasks::pg_access::MANAGED;

/// The Ansible tasks for the native task `name`.
pub(super) fn tasks(name: &str) -> Vec<T> {
    let env = || map([("PGOPTIONS", s(PGOPTIONS))]);
    let per_db = |what: &str, module: &str, mut args: Mapping, db: &str| {
        args.insert(s("login_db"), s(db));
        T::new(&format!("{name}: {what}"))
            .set(module, Y::Mapping(args))
            .set("become_user", s("postgres"))
            .set("environment", env())
    };
    let users = T::new(&format!("{name}: users"))
        .module(
            "community.postgresql.postgresql_user",
            map([
                ("name", s("{{ item.name }}")),
                (
                    "password",
                    s("{{ pgform_user_passwords[item.name] | default(omit) }}"),
                ),
                ("role_attr_flags", s("{{ item.flags }}")),
                ("conn_limit", s("{{ item.connection_limit }}")),
                ("comment", s(MANAGED)),
            ]),
        )
        .set("loop", s("{{ pgform_users }}"))
        .set("loop_control", map([("label", s("{{ item.name }}"))]))
        .set("become_user", s("postgres"))
        .set("environment", env())
        .set("no_log", Y::Bool(true));
    // postgresql_db has no login_db (which `module` adds): its maintenance_db is it.
    let databases = T::new(&format!("{name}: databases"))
        .set(
            "community.postgresql.postgresql_db",
            map([
                ("name", s("{{ item.name }}")),
                ("owner", s("{{ item.owner }}")),
                ("comment", s(MANAGED)),
                ("maintenance_db", s("postgres")),
            ]),
        )
        .set("loop", s("{{ pgform_databases }}"))
        .set("become_user", s("postgres"))
        .set("environment", env());
    let mut ext = Mapping::new();
    ext.insert(s("name"), s("{{ item.1 }}"));
    let extensions = per_db(
        "extensions",
        "community.postgresql.postgresql_ext",
        ext,
        "{{ item.0.name }}",
    )
    .set(
        "loop",
        s("{{ pgform_databases | subelements('extensions') }}"),
    );
    let mut out = vec![users, databases, extensions];
    // CONNECT, USAGE on public, the tables and sequences there now, and the owner's
    // future ones (default privileges).
    let grants: [(&str, &str, &str, Option<&str>); 6] = [
        ("database", "CONNECT", "{{ item.database }}", None),
        ("schema", "USAGE", "public", None),
        (
            "table",
            "{{ item.tables }}",
            "ALL_IN_SCHEMA",
            Some("public"),
        ),
        (
            "sequence",
            "{{ item.sequences }}",
            "ALL_IN_SCHEMA",
            Some("public"),
        ),
        (
            "default_privs",
            "{{ item.tables }}",
            "TABLES",
            Some("public"),
        ),
        (
            "default_privs",
            "{{ item.sequences }}",
            "SEQUENCES",
            Some("public"),
        ),
    ];
    for (kind, privs, objs, schema) in grants {
        let mut args = Mapping::new();
        args.insert(s("type"), s(kind));
        args.insert(s("privs"), s(privs));
        args.insert(s("objs"), s(objs));
        args.insert(s("roles"), s("{{ item.user }}"));
        if let Some(schema) = schema {
            args.insert(s("schema"), s(schema));
        }
        if kind == "default_privs" {
            args.insert(s("target_roles"), s("{{ item.owner }}"));
        }
        let what = format!("{privs} on {kind} {objs}")
            .replace("{{ item.database }}", "the database")
            .replace("{{ item.tables }}", "privileges")
            .replace("{{ item.sequences }}", "privileges");
        out.push(
            per_db(
                &what,
                "community.postgresql.postgresql_privs",
                args,
                "{{ item.database }}",
            )
            .set("loop", s("{{ pgform_grants }}")),
        );
    }
    out
}

/// `pgform_users`, `pgform_databases` and `pgform_grants` for `group_vars/all/main.yml`.
pub(super) fn variables(spec: &ClusterSpec) -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let pg = &spec.postgres;
    let users: Vec<_> = pg
        .users
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "flags": if u.login { "LOGIN" } else { "NOLOGIN" },
                "connection_limit": u.connection_limit,
            })
        })
        .collect();
    let databases: Vec<_> = pg
        .databases
        .iter()
        .map(|d| json!({"name": d.name, "owner": d.owner, "extensions": d.extensions}))
        .collect();
    let mut grants = Vec::new();
    for u in &pg.users {
        for (db, want) in &u.privileges {
            let owner = pg
                .databases
                .iter()
                .find(|d| &d.name == db)
                .map_or("postgres", |d| d.owner.as_str());
            if owner == u.name {
                continue;
            }
            let (tables, sequences) = match want {
                Privilege::Readwrite => ("SELECT,INSERT,UPDATE,DELETE", "USAGE,SELECT,UPDATE"),
                Privilege::Readonly => ("SELECT", "SELECT"),
            };
            grants.push(json!({
                "user": u.name, "database": db, "owner": owner,
                "tables": tables, "sequences": sequences,
            }));
        }
    }
    vec![
        ("pgform_users", json!(users)),
        ("pgform_databases", json!(databases)),
        ("pgform_grants", json!(grants)),
    ]
}

/// `pgform_user_passwords` for `group_vars/all/vault.yml`: each user's password read
/// when the playbook runs, from the environment variable or file the spec names.
pub(super) fn vault_passwords(spec: &ClusterSpec) -> Y {
    let mut m = Mapping::new();
    for u in spec.postgres.users.iter().filter(|u| u.login) {
        if let Some(lookup) = u.password_source().as_ref().and_then(lookup) {
            m.insert(s(&u.name), s(&lookup));
        }
    }
    Y::Mapping(m)
}

/// A secret read when the playbook runs: Jinja looking up the environment variable or
/// the file's first line; `None` for a value written in the spec (never exported).
pub(super) fn lookup(source: &crate::spec::SecretSource) -> Option<String> {
    let lookup = match source {
        crate::spec::SecretSource::Env(var) => format!("lookup('env', {})", jinja(var)),
        crate::spec::SecretSource::File(path) => format!(
            "lookup('file', {}).splitlines()[0]",
            jinja(&path.display().to_string())
        ),
        _ => return None,
    };
    Some(format!("{{{{ {lookup} }}}}"))
}

/// A Jinja string literal (JSON's escapes are Jinja's).
fn jinja(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}
