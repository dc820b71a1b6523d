//! Bad `[[postgres.databases]]` / `[[postgres.users]]` input through the binary:
//! `validate`, `plan` and `apply` exit 1 naming the field, the value and the fix, and
//! nothing happens (no state, no host contacted: the hosts listed are never reached
//! because the spec is refused first).

mod common;

use common::cli::Work;

const BASE: &str = "name = \"users-bad\"\nprovider = \"hosts\"\n\
    [[hosts]]\naddress = \"10.232.255.11\"\nrole = \"primary\"\n\
    [postgres]\nreplication_user = \"replicator\"\n";

const APP_DB: &str = "[[postgres.databases]]\nname = \"app\"\nowner = \"app\"\n";
const APP_USER: &str = "[[postgres.users]]\nname = \"app\"\npassword_env = \"APP_PW\"\n";

#[test]
fn bad_databases_and_users_exit_1_naming_field_value_and_fix() {
    let cases: [(&str, String, &str, &str); 6] = [
        (
            "duplicate user",
            format!("{APP_DB}{APP_USER}{APP_USER}"),
            "postgres.users[1].name",
            "user `app` is declared twice",
        ),
        (
            "owner not declared",
            "[[postgres.databases]]\nname = \"app\"\nowner = \"bob\"\n".into(),
            "postgres.databases[0].owner",
            "owner `bob` is not a declared user",
        ),
        (
            "privilege on an unknown database",
            format!("{APP_DB}{APP_USER}privileges = {{ reports = \"readonly\" }}\n"),
            "postgres.users[0].privileges.reports",
            "database `reports` is not declared",
        ),
        (
            "unknown extension",
            format!("{APP_DB}extensions = [\"postgis_nope\"]\n{APP_USER}"),
            "postgres.databases[0].extensions[0]",
            "PostgreSQL 15 has no extension `postgis_nope`",
        ),
        (
            "no password source",
            format!("{APP_DB}[[postgres.users]]\nname = \"app\"\n"),
            "postgres.users[0]",
            "login user `app` has no password source",
        ),
        (
            "password against the policy",
            format!("{APP_DB}[[postgres.users]]\nname = \"app\"\npassword_file = \"short.pw\"\n"),
            "postgres.users[0].password_file",
            "is shorter than 8 characters",
        ),
    ];
    for (what, tail, field, message) in cases {
        let work = Work::new(
            "users-bad",
            vec![("APP_PW".to_string(), "app-password-1".to_string())],
        );
        work.write("cluster.toml", &format!("{BASE}{tail}"));
        work.write("short.pw", "short\n");
        for args in [
            &["validate"][..],
            &["plan"][..],
            &["apply", "--auto-approve"][..],
        ] {
            let run = work.pgform(args);
            run.expect(1)
                .stderr_has(field)
                .stderr_has(message)
                .stderr_has("fix:");
            assert!(!run.stderr.contains("panicked"), "{what}: {run}");
            assert!(
                !run.stderr.contains("short\n"),
                "{what}: the password shows"
            );
        }
        let files: Vec<String> = std::fs::read_dir(work.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut files = files;
        files.sort();
        assert_eq!(
            files,
            ["cluster.toml", "short.pw"],
            "{what}: nothing else written"
        );
    }
}
