//! The `pg_access` action: the spec's databases, users and privileges on the primary
//! (replicas get them by replication). One psql run answers "what needs doing" for all
//! of them (roles, databases, extensions and privileges per database, through psql's
//! `\if` and `\c`); a second one makes every change, in order. Passwords reach the host
//! only as SCRAM verifiers on psql's standard input.
//!
//! Objects pgform makes carry the comment [`MANAGED`]: a managed user or database that
//! left the spec is kept (the plan says so) unless `postgres.drop_removed` is set; roles
//! and databases pgform did not make are never touched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::modules::{ActionError, Change, ident, literal, sql, sql_read};
use crate::remote::Connection;
use crate::spec::{ClusterSpec, Privilege};

/// The comment on every role and database pgform made.
pub const MANAGED: &str = "managed by pgform";

/// What the spec asks for, as the task list passes it (JSON in the variable
/// `pg_access`); passwords travel apart, in the secret variable `user_passwords`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub databases: Vec<Database>,
    pub users: Vec<User>,
    pub drop_removed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub owner: String,
    pub extensions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub login: bool,
    pub connection_limit: i32,
    pub privileges: BTreeMap<String, Privilege>,
}

impl Desired {
    pub fn from_spec(spec: &ClusterSpec) -> Desired {
        let pg = &spec.postgres;
        Desired {
            databases: pg
                .databases
                .iter()
                .map(|d| Database {
                    name: d.name.clone(),
                    owner: d.owner.clone(),
                    extensions: d.extensions.clone(),
                })
                .collect(),
            users: pg
                .users
                .iter()
                .map(|u| User {
                    name: u.name.clone(),
                    login: u.login,
                    connection_limit: u.connection_limit,
                    privileges: u.privileges.clone(),
                })
                .collect(),
            drop_removed: pg.drop_removed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.databases.is_empty() && self.users.is_empty()
    }

    fn owner_of(&self, db: &str) -> &str {
        self.databases
            .iter()
            .find(|d| d.name == db)
            .map_or("postgres", |d| d.owner.as_str())
    }
}

/// A role as the server has it.
#[derive(Debug, Clone, PartialEq)]
struct RoleNow {
    login: bool,
    connection_limit: i32,
    verifier: String,
    managed: bool,
}

/// A user's privileges in one database, as counted by the query.
#[derive(Debug, Clone, Default, PartialEq)]
struct PrivNow {
    connect: bool,
    usage: bool,
    missing_select: u64,
    missing_write: u64,
    any_write: u64,
    missing_seq_usage: u64,
    missing_seq_select: u64,
    default_tables: String,
    default_sequences: String,
}

impl PrivNow {
    fn holds(&self, want: Privilege) -> bool {
        let base = self.connect && self.usage && self.missing_select == 0;
        match want {
            Privilege::Readwrite => {
                base && self.missing_write == 0
                    && self.missing_seq_usage == 0
                    && self.missing_seq_select == 0
                    && ["DELETE", "INSERT", "SELECT", "UPDATE"]
                        .iter()
                        .all(|p| self.default_tables.split(',').any(|x| x == *p))
                    && ["SELECT", "UPDATE", "USAGE"]
                        .iter()
                        .all(|p| self.default_sequences.split(',').any(|x| x == *p))
            }
            Privilege::Readonly => {
                base && self.any_write == 0
                    && self.missing_seq_select == 0
                    && self.default_tables == "SELECT"
                    && self.default_sequences == "SELECT"
            }
        }
    }

    /// In the plan's words.
    fn describe(&self) -> &'static str {
        if self.holds(Privilege::Readwrite) {
            "readwrite"
        } else if self.holds(Privilege::Readonly) {
            "readonly"
        } else if self.any_write == 0
            && self.default_tables.is_empty()
            && self.default_sequences.is_empty()
        {
            "none"
        } else {
            "partial"
        }
    }
}

/// What the server has, for what the spec names (and what pgform made).
#[derive(Debug, Default)]
struct Now {
    roles: BTreeMap<String, RoleNow>,
    /// Database -> (owner, managed).
    databases: BTreeMap<String, (String, bool)>,
    available: Vec<String>,
    /// Database -> extensions created in it.
    extensions: BTreeMap<String, Vec<String>>,
    /// (database, user) -> privileges.
    privileges: BTreeMap<(String, String), PrivNow>,
}

/// One change, in the plan's words, and what makes it.
#[derive(Debug, Default)]
pub struct Work {
    pub lines: Vec<String>,
    /// Managed objects kept although they left the spec (a note, not a change).
    pub kept: Vec<String>,
    roles: Vec<String>,
    databases: Vec<String>,
    drop_databases: Vec<String>,
    /// Database -> statements run connected to it.
    in_database: BTreeMap<String, Vec<String>>,
    drop_roles: Vec<String>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The plan's summary: the changes, then what is kept.
    pub fn summary(&self) -> String {
        self.lines
            .iter()
            .chain(&self.kept)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The psql script that makes the changes (as the postgres superuser, connected to
    /// the database `postgres`). It carries verifiers, never passwords.
    fn script(&self) -> String {
        let mut s =
            String::from("SET log_statement = 'none';\nSET synchronous_commit = 'local';\n");
        for st in self
            .roles
            .iter()
            .chain(&self.databases)
            .chain(&self.drop_databases)
        {
            s.push_str(st);
            s.push('\n');
        }
        for (db, statements) in &self.in_database {
            // Names are checked identifiers (letters, digits, '_'): safe for `\c`.
            s.push_str(&format!("\\c {db}\nSET synchronous_commit = 'local';\n"));
            for st in statements {
                s.push_str(st);
                s.push('\n');
            }
        }
        if !self.drop_roles.is_empty() {
            s.push_str("\\c postgres\nSET synchronous_commit = 'local';\n");
            for st in &self.drop_roles {
                s.push_str(st);
                s.push('\n');
            }
        }
        s
    }
}

/// Asks the server what needs doing: `None` when everything is as the spec says (the
/// kept notes aside). A declared extension the server does not have fails here, before
/// anything is made.
pub async fn query(
    conn: &Connection,
    version: u32,
    desired: &Desired,
    passwords: &BTreeMap<String, String>,
) -> Result<Work, ActionError> {
    let rows = sql_read(conn, version, &query_script(desired)).await?;
    let now = parse_rows(&rows);
    let missing: Vec<String> = desired
        .databases
        .iter()
        .flat_map(|d| d.extensions.iter().map(move |e| (d, e)))
        .filter(|(_, e)| !now.available.contains(e))
        .map(|(d, e)| format!("{e} (database {})", d.name))
        .collect();
    if !missing.is_empty() {
        return Err(ActionError::Invalid(format!(
            "the server has no extension {} in pg_available_extensions; install its \
             package on the hosts or remove it from postgres.databases; nothing was changed",
            missing.join(", ")
        )));
    }
    plan_work(desired, &now, passwords)
}

/// Makes the changes [`query`] found.
pub async fn act(conn: &Connection, version: u32, work: &Work) -> Result<(), ActionError> {
    if work.is_empty() {
        return Ok(());
    }
    sql(conn, version, &work.script()).await.map(|_| ())
}

/// One psql script: every answer is a `|`-separated row tagged by its first field.
fn query_script(d: &Desired) -> String {
    let names = |it: Vec<&str>| {
        if it.is_empty() {
            "NULL".to_string()
        } else {
            it.iter().map(|n| literal(n)).collect::<Vec<_>>().join(", ")
        }
    };
    let users = names(d.users.iter().map(|u| u.name.as_str()).collect());
    let dbs = names(d.databases.iter().map(|x| x.name.as_str()).collect());
    let exts = names(
        d.databases
            .iter()
            .flat_map(|x| x.extensions.iter().map(String::as_str))
            .collect(),
    );
    let managed = literal(MANAGED);
    let mut s = format!(
        "SELECT 'role', rolname, rolcanlogin, rolconnlimit, coalesce(rolpassword, ''), \
         coalesce(shobj_description(oid, 'pg_authid'), '') = {managed} \
         FROM pg_authid WHERE rolname IN ({users}) \
         OR shobj_description(oid, 'pg_authid') = {managed};\n\
         SELECT 'db', datname, pg_get_userbyid(datdba), \
         coalesce(shobj_description(oid, 'pg_database'), '') = {managed} \
         FROM pg_database WHERE datname IN ({dbs}) \
         OR shobj_description(oid, 'pg_database') = {managed};\n\
         SELECT 'avail', name FROM pg_available_extensions WHERE name IN ({exts});\n"
    );
    for db in &d.databases {
        let holders: Vec<&str> = d
            .users
            .iter()
            .filter(|u| u.privileges.contains_key(&db.name))
            .map(|u| u.name.as_str())
            .collect();
        let name = literal(&db.name);
        s.push_str(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = {name}) AS pgform_exists \\gset\n\
             \\if :pgform_exists\n\\c {}\n\
             SELECT 'ext', {name}, extname FROM pg_extension;\n",
            db.name
        ));
        if !holders.is_empty() {
            s.push_str(&privileges_query(&db.name, &db.owner, &names(holders)));
        }
        s.push_str("\\endif\n");
    }
    s
}

/// Per user of `users`, in the current database: the counts [`PrivNow`] holds.
fn privileges_query(db: &str, owner: &str, users: &str) -> String {
    let tables = "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = 'public'";
    let default = |kind: &str| {
        format!(
            "coalesce((SELECT string_agg(a.privilege_type, ',' ORDER BY a.privilege_type) \
             FROM pg_default_acl d, aclexplode(d.defaclacl) a \
             WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = {}) \
             AND d.defaclnamespace = 'public'::regnamespace AND d.defaclobjtype = '{kind}' \
             AND a.grantee = u.oid), '')",
            literal(owner)
        )
    };
    let has = |p: &str| format!("has_table_privilege(u.oid, c.oid, '{p}')");
    format!(
        "SELECT 'priv', {db}, u.rolname, \
         has_database_privilege(u.oid, current_database(), 'CONNECT'), \
         has_schema_privilege(u.oid, 'public', 'USAGE'), \
         (SELECT count(*) {tables} AND c.relkind IN ('r','p','v','m','f') AND NOT {sel}), \
         (SELECT count(*) {tables} AND c.relkind IN ('r','p') AND NOT ({ins} AND {upd} AND {del})), \
         (SELECT count(*) {tables} AND c.relkind IN ('r','p') AND ({ins} OR {upd} OR {del})), \
         (SELECT count(*) {tables} AND {seq_lacks}'USAGE') ELSE false END), \
         (SELECT count(*) {tables} AND {seq_lacks}'SELECT') ELSE false END), \
         {dt}, {ds} FROM pg_roles u WHERE u.rolname IN ({users});\n",
        db = literal(db),
        sel = has("SELECT"),
        ins = has("INSERT"),
        upd = has("UPDATE"),
        del = has("DELETE"),
        // The planner may test a privilege before the kind: ask only of sequences.
        seq_lacks = "CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(u.oid, c.oid, ",
        dt = default("r"),
        ds = default("S"),
    )
}

fn parse_rows(rows: &str) -> Now {
    let mut now = Now::default();
    let t = |s: &str| s == "t";
    let n = |s: &str| s.parse::<u64>().unwrap_or(0);
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        match f.as_slice() {
            ["role", name, login, limit, verifier, managed] => {
                now.roles.insert(
                    name.to_string(),
                    RoleNow {
                        login: t(login),
                        connection_limit: limit.parse().unwrap_or(-1),
                        verifier: verifier.to_string(),
                        managed: t(managed),
                    },
                );
            }
            ["db", name, owner, managed] => {
                now.databases
                    .insert(name.to_string(), (owner.to_string(), t(managed)));
            }
            ["avail", name] => now.available.push(name.to_string()),
            ["ext", db, ext] => now
                .extensions
                .entry(db.to_string())
                .or_default()
                .push(ext.to_string()),
            [
                "priv",
                db,
                user,
                connect,
                usage,
                ms,
                mw,
                aw,
                msu,
                mss,
                dt,
                ds,
            ] => {
                now.privileges.insert(
                    (db.to_string(), user.to_string()),
                    PrivNow {
                        connect: t(connect),
                        usage: t(usage),
                        missing_select: n(ms),
                        missing_write: n(mw),
                        any_write: n(aw),
                        missing_seq_usage: n(msu),
                        missing_seq_select: n(mss),
                        default_tables: dt.to_string(),
                        default_sequences: ds.to_string(),
                    },
                );
            }
            _ => {}
        }
    }
    now
}

/// The diff of what the spec asks and what the server has, with the statements.
fn plan_work(
    d: &Desired,
    now: &Now,
    passwords: &BTreeMap<String, String>,
) -> Result<Work, ActionError> {
    let mut w = Work::default();
    for u in &d.users {
        let role = ident(&u.name);
        let login = if u.login { "LOGIN" } else { "NOLOGIN" };
        let password = passwords.get(&u.name).filter(|_| u.login);
        let verifier = |p: &str| {
            super::scram::verifier(p, &super::scram::salt()).ok_or_else(|| {
                ActionError::Invalid(format!(
                    "the password of user {} is not ASCII: pgform computes SCRAM verifiers \
                     for ASCII passwords only; choose another",
                    u.name
                ))
            })
        };
        match now.roles.get(&u.name) {
            None => {
                let pw = match password {
                    Some(p) => format!(" PASSWORD {}", literal(&verifier(p)?)),
                    None => String::new(),
                };
                w.lines.push(format!("+ user {}", u.name));
                w.roles.push(format!(
                    "CREATE ROLE {role} {login} CONNECTION LIMIT {}{pw};\n\
                     COMMENT ON ROLE {role} IS {};",
                    u.connection_limit,
                    literal(MANAGED)
                ));
            }
            Some(r) => {
                let mut what = Vec::new();
                if r.login != u.login {
                    what.push(format!("login {} -> {}", r.login, u.login));
                }
                if r.connection_limit != u.connection_limit {
                    what.push(format!(
                        "connection limit {} -> {}",
                        r.connection_limit, u.connection_limit
                    ));
                }
                let mut pw = String::new();
                if let Some(p) = password
                    && super::scram::matches(p, &r.verifier) != Some(true)
                {
                    what.push("password changes".into());
                    pw = format!(" PASSWORD {}", literal(&verifier(p)?));
                }
                if !r.managed {
                    what.push("now managed by pgform".into());
                }
                if !what.is_empty() {
                    w.lines
                        .push(format!("~ user {}: {}", u.name, what.join(", ")));
                    w.roles.push(format!(
                        "ALTER ROLE {role} {login} CONNECTION LIMIT {}{pw};\n\
                         COMMENT ON ROLE {role} IS {};",
                        u.connection_limit,
                        literal(MANAGED)
                    ));
                }
            }
        }
    }
    for db in &d.databases {
        let name = ident(&db.name);
        let owner = ident(&db.owner);
        let in_db = w.in_database.entry(db.name.clone()).or_default();
        match now.databases.get(&db.name) {
            None => {
                let exts = if db.extensions.is_empty() {
                    String::new()
                } else {
                    format!(", extensions {}", db.extensions.join(" "))
                };
                w.lines
                    .push(format!("+ database {} (owner {}{exts})", db.name, db.owner));
                w.databases.push(format!(
                    "CREATE DATABASE {name} OWNER {owner};\n\
                     COMMENT ON DATABASE {name} IS {};",
                    literal(MANAGED)
                ));
            }
            Some((have, managed)) => {
                if have != &db.owner {
                    w.lines.push(format!(
                        "~ database {}: owner {have} -> {}",
                        db.name, db.owner
                    ));
                    w.databases
                        .push(format!("ALTER DATABASE {name} OWNER TO {owner};"));
                }
                if !managed {
                    w.lines
                        .push(format!("~ database {}: now managed by pgform", db.name));
                    w.databases.push(format!(
                        "COMMENT ON DATABASE {name} IS {};",
                        literal(MANAGED)
                    ));
                }
            }
        }
        let have = now.extensions.get(&db.name);
        let new: Vec<&String> = db
            .extensions
            .iter()
            .filter(|e| !have.is_some_and(|h| h.contains(e)))
            .collect();
        if !new.is_empty() && now.databases.contains_key(&db.name) {
            w.lines.push(format!(
                "~ database {}: + extension {}",
                db.name,
                new.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(" ")
            ));
        }
        for e in new {
            in_db.push(format!("CREATE EXTENSION IF NOT EXISTS {};", ident(e)));
        }
    }
    for u in &d.users {
        for (db, want) in &u.privileges {
            let owner = d.owner_of(db);
            if owner == u.name {
                continue; // the owner holds every privilege on what it makes
            }
            let have = now.privileges.get(&(db.clone(), u.name.clone()));
            if have.is_some_and(|h| h.holds(*want)) {
                continue;
            }
            w.lines.push(match have.map(PrivNow::describe) {
                None | Some("none") => format!("+ privileges {} on {db}: {}", u.name, want.name()),
                Some(was) => format!("~ privileges {} on {db}: {was} -> {}", u.name, want.name()),
            });
            w.in_database
                .entry(db.clone())
                .or_default()
                .extend(grants(db, owner, &u.name, *want));
        }
    }
    // Managed objects that left the spec.
    for (name, (_, managed)) in &now.databases {
        if !managed || d.databases.iter().any(|x| &x.name == name) {
            continue;
        }
        if d.drop_removed {
            w.lines.push(format!("- database {name} (drop_removed)"));
            w.drop_databases
                .push(format!("DROP DATABASE {};", ident(name)));
        } else {
            w.kept.push(format!(
                "kept database {name}: removed from the spec; set postgres.drop_removed = \
                 true to drop"
            ));
        }
    }
    for (name, role) in &now.roles {
        if !role.managed || d.users.iter().any(|u| &u.name == name) {
            continue;
        }
        if d.drop_removed {
            w.lines.push(format!("- user {name} (drop_removed)"));
            // The privileges pgform granted in the spec's databases go first; anything
            // else the role owns or holds makes PostgreSQL refuse, naming it.
            for db in &d.databases {
                if now.databases.contains_key(&db.name) {
                    w.in_database
                        .entry(db.name.clone())
                        .or_default()
                        .extend(revoke_all(&db.name, &db.owner, name));
                }
            }
            w.drop_roles.push(format!("DROP ROLE {};", ident(name)));
        } else {
            w.kept.push(format!(
                "kept user {name}: removed from the spec; set postgres.drop_removed = true \
                 to drop"
            ));
        }
    }
    w.in_database.retain(|_, v| !v.is_empty());
    Ok(w)
}

/// What `want` on the tables and sequences of `db`'s schema public takes: those there
/// now and those `owner` makes later (default privileges). Readonly first takes back
/// what readwrite gave.
fn grants(db: &str, owner: &str, user: &str, want: Privilege) -> Vec<String> {
    let (u, o) = (ident(user), ident(owner));
    let (tables, sequences) = match want {
        Privilege::Readwrite => ("SELECT, INSERT, UPDATE, DELETE", "USAGE, SELECT, UPDATE"),
        Privilege::Readonly => ("SELECT", "SELECT"),
    };
    let mut out = Vec::new();
    if want == Privilege::Readonly {
        out.push(format!(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM {u};\n\
             REVOKE USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public FROM {u};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLES FROM {u};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public REVOKE USAGE, UPDATE ON SEQUENCES FROM {u};"
        ));
    }
    out.push(format!(
        "GRANT CONNECT ON DATABASE {} TO {u};\n\
         GRANT USAGE ON SCHEMA public TO {u};\n\
         GRANT {tables} ON ALL TABLES IN SCHEMA public TO {u};\n\
         GRANT {sequences} ON ALL SEQUENCES IN SCHEMA public TO {u};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT {tables} ON TABLES TO {u};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT {sequences} ON SEQUENCES TO {u};",
        ident(db)
    ));
    out
}

/// Takes back what [`grants`] gave (before a removed user is dropped).
fn revoke_all(db: &str, owner: &str, user: &str) -> Vec<String> {
    let (u, o) = (ident(user), ident(owner));
    vec![format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {u};\n\
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {u};\n\
         REVOKE ALL ON SCHEMA public FROM {u};\n\
         REVOKE ALL ON DATABASE {} FROM {u};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public REVOKE ALL ON TABLES FROM {u};\n\
         ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {u};",
        ident(db)
    )]
}

/// A [`Change`] for the runner: the changes, or only the kept notes.
pub fn change(work: &Work) -> Option<Change> {
    if work.is_empty() && work.kept.is_empty() {
        return None;
    }
    Some(Change {
        summary: work.summary(),
        diff: None,
        note_only: work.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            databases: vec![Database {
                name: "app".into(),
                owner: "app".into(),
                extensions: vec!["pgcrypto".into()],
            }],
            users: vec![
                User {
                    name: "app".into(),
                    login: true,
                    connection_limit: -1,
                    privileges: BTreeMap::from([("app".into(), Privilege::Readwrite)]),
                },
                User {
                    name: "reader".into(),
                    login: true,
                    connection_limit: 5,
                    privileges: BTreeMap::from([("app".into(), Privilege::Readonly)]),
                },
            ],
            drop_removed: false,
        }
    }

    fn passwords() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app".into(), "app-secret-1".into()),
            ("reader".into(), "reader-secret-1".into()),
        ])
    }

    #[test]
    fn a_bare_server_gets_everything_and_the_script_has_no_password() {
        let now = parse_rows("avail|pgcrypto\n");
        let w = plan_work(&desired(), &now, &passwords()).unwrap();
        assert_eq!(
            w.lines,
            [
                "+ user app",
                "+ user reader",
                "+ database app (owner app, extensions pgcrypto)",
                "+ privileges reader on app: readonly",
            ]
        );
        let script = w.script();
        assert!(script.contains("SCRAM-SHA-256$4096:"), "{script}");
        assert!(!script.contains("app-secret-1"), "{script}");
        assert!(!script.contains("reader-secret-1"), "{script}");
        assert!(script.contains("\\c app\n"), "{script}");
        assert!(script.contains("CREATE EXTENSION IF NOT EXISTS \"pgcrypto\""));
    }

    #[test]
    fn what_the_server_has_is_compared_and_named() {
        let v = crate::tasks::scram::verifier("app-secret-1", &[7; 16]).unwrap();
        let rows = format!(
            "role|app|t|-1|{v}|t\nrole|reader|t|5|{v}|t\nrole|old|t|-1||t\nrole|theirs|t|-1||f\n\
             db|app|app|t\ndb|gone|postgres|t\navail|pgcrypto\next|app|plpgsql\next|app|pgcrypto\n\
             priv|app|reader|t|t|0|0|1|0|0|DELETE,INSERT,SELECT,UPDATE|SELECT,UPDATE,USAGE\n"
        );
        let w = plan_work(&desired(), &parse_rows(&rows), &passwords()).unwrap();
        assert_eq!(
            w.lines,
            [
                "~ user reader: password changes",
                "~ privileges reader on app: readwrite -> readonly",
            ]
        );
        assert_eq!(
            w.kept,
            [
                "kept database gone: removed from the spec; set postgres.drop_removed = true to drop",
                "kept user old: removed from the spec; set postgres.drop_removed = true to drop",
            ]
        );
        let mut d = desired();
        d.drop_removed = true;
        let w = plan_work(&d, &parse_rows(&rows), &passwords()).unwrap();
        assert!(w.lines.contains(&"- user old (drop_removed)".to_string()));
        assert!(
            w.lines
                .contains(&"- database gone (drop_removed)".to_string())
        );
        assert!(
            !w.script().contains("theirs"),
            "never a role pgform did not make"
        );
    }

    #[test]
    fn converged_is_empty() {
        let pw = passwords();
        let va = crate::tasks::scram::verifier(&pw["app"], &[1; 16]).unwrap();
        let vr = crate::tasks::scram::verifier(&pw["reader"], &[2; 16]).unwrap();
        let rows = format!(
            "role|app|t|-1|{va}|t\nrole|reader|t|5|{vr}|t\ndb|app|app|t\navail|pgcrypto\n\
             ext|app|pgcrypto\npriv|app|reader|t|t|0|3|0|0|0|SELECT|SELECT\n"
        );
        let w = plan_work(&desired(), &parse_rows(&rows), &pw).unwrap();
        assert!(w.is_empty(), "{:?}", w.lines);
        assert!(change(&w).is_none());
    }
}
