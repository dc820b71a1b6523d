//! Every shell string pgform sends to a host is built in this file, from fixed command
//! text and [`quote`]d arguments. Nothing else builds shell text: the task modules ask
//! for a command by name here, so this is the one place to audit. Secrets never appear
//! in a command: they travel on the command's standard input.

pub mod ha;

/// Quotes one word for a POSIX shell: `'...'` with embedded quotes as `'\''`.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A shell command line for a host. Build one with the constructors below; its text is
/// only ever fixed text plus quoted arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sh(String);

impl Sh {
    /// A simple command: every word quoted.
    pub fn argv<I, S>(words: I) -> Sh
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Sh(words
            .into_iter()
            .map(|w| quote(w.as_ref()))
            .collect::<Vec<_>>()
            .join(" "))
    }

    pub fn text(&self) -> &str {
        &self.0
    }

    /// `self && next`.
    pub fn and(self, next: Sh) -> Sh {
        Sh(format!("{} && {}", self.0, next.0))
    }

    /// Runs as `user` (through sudo) from `/`, whoever logged in.
    pub fn as_user(self, user: &str) -> Sh {
        Sh(format!(
            "sudo -n -H -u {} -- sh -c {}",
            quote(user),
            quote(&format!("cd / && {}", self.0))
        ))
    }

    /// Runs as root: through sudo unless the login user is root already.
    pub fn as_root(self, login_user: &str) -> Sh {
        if login_user == "root" {
            self
        } else {
            Sh(format!("sudo -n -- sh -c {}", quote(&self.0)))
        }
    }
}

/// Prints `absent`, or the owner, group and octal mode on one line and then the file.
pub fn read_file(path: &str) -> Sh {
    let p = quote(path);
    Sh(format!(
        "if [ -e {p} ]; then stat -c '%U %G %a' {p} && cat {p}; else echo absent; fi"
    ))
}

/// Several read-only commands as one (no standard input). For each: a line
/// `<boundary> begin`, its standard output, a newline and a line `<boundary> <exit
/// status>`, its standard error, a newline and a line `<boundary> end`.
pub fn batch(commands: &[&Sh], boundary: &str) -> Sh {
    let b = quote(boundary);
    let mut text = String::from("e=$(mktemp) || exit 1; ");
    for cmd in commands {
        text.push_str(&format!(
            "printf '%s begin\\n' {b}; ( {} ) </dev/null 2>\"$e\"; \
             printf '\\n%s %s\\n' {b} \"$?\"; cat \"$e\"; printf '\\n%s end\\n' {b}; ",
            cmd.0
        ));
    }
    text.push_str("rm -f \"$e\"");
    Sh(text)
}

/// Replaces `path` atomically with standard input, owned and moded as given.
pub fn write_file(path: &str, owner: &str, group: &str, mode: &str) -> Sh {
    let p = quote(path);
    Sh(format!(
        "t=$(mktemp {p}.pgform.XXXXXX) && cat > \"$t\" && chown {}:{} \"$t\" && chmod {} \"$t\" && mv -f \"$t\" {p}",
        quote(owner),
        quote(group),
        quote(mode)
    ))
}

/// Owner, group and mode of a directory, or `absent`.
pub fn dir_meta(path: &str) -> Sh {
    let p = quote(path);
    Sh(format!(
        "if [ -d {p} ]; then stat -c '%U %G %a' {p}; else echo absent; fi"
    ))
}

pub fn make_dir(path: &str, owner: &str, group: &str, mode: &str) -> Sh {
    Sh::argv(["install", "-d", "-o", owner, "-g", group, "-m", mode, path])
}

pub fn remove_file(path: &str) -> Sh {
    Sh::argv(["rm", "-f", "--", path])
}

/// Exit status 0 when `path` exists.
pub fn exists(path: &str) -> Sh {
    Sh::argv(["test", "-e", path])
}

/// One line per package: `name status` (`installed` when it is).
pub fn package_status(names: &[String]) -> Sh {
    let mut words = vec![
        "dpkg-query".to_string(),
        "-W".into(),
        "-f=${Package} ${db:Status-Status}\\n".into(),
    ];
    words.extend(names.iter().cloned());
    Sh(format!("{} 2>/dev/null; true", Sh::argv(words).0))
}

/// Refreshes the package lists and installs `names` without prompts or recommends,
/// keeping configuration files that pgform manages.
pub fn apt_install(names: &[String]) -> Sh {
    let mut words: Vec<String> = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    .map(String::from)
    .to_vec();
    words.extend(names.iter().cloned());
    Sh(format!(
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q && {}",
        Sh::argv(words).0
    ))
}

/// A program of PostgreSQL major `version`, by its path: the `/usr/bin` entries are
/// Debian's Perl wrapper, which costs ~50 ms a call to pick the version.
fn pg_bin(version: u32, program: &str) -> String {
    format!("/usr/lib/postgresql/{version}/bin/{program}")
}

/// Exits 0 when the cluster accepts connections on its socket, 1 when it runs but
/// rejects them (starting or stopping), 2 when nothing answers or PostgreSQL `version`
/// is not installed.
pub fn pg_isready(version: u32) -> Sh {
    let bin = pg_bin(version, "pg_isready");
    Sh(format!(
        "if test -x {q}; then {}; else exit 2; fi",
        Sh::argv([
            bin.as_str(),
            "-q",
            "-h",
            "/var/run/postgresql",
            "-p",
            "5432"
        ])
        .0,
        q = quote(&bin)
    ))
}

/// Starts, stops, restarts or reloads a cluster with Debian's `pg_ctlcluster`, which
/// hands over to systemctl on systemd hosts. Without systemd (containers), start and
/// restart call `pg_ctl -w` with pg_ctlcluster's own options instead: pg_ctlcluster polls
/// for the socket every 0.5 s and then waits for the server to settle, 2.2 s a start
/// where `pg_ctl -w` takes 0.1 s. (pgform keeps Debian's layout: configuration in
/// /etc/postgresql, data in /var/lib/postgresql, the log in /var/log/postgresql.)
pub fn pg_ctlcluster(version: u32, action: &str) -> Sh {
    let debian = Sh::argv(["pg_ctlcluster", &version.to_string(), "main", action]);
    if !matches!(action, "start" | "restart") {
        return debian;
    }
    let v = version;
    let pg_ctl = Sh::argv([
        pg_bin(v, "pg_ctl").as_str(),
        action,
        "-w",
        "-t",
        "300",
        "-s",
        "-D",
        &format!("/var/lib/postgresql/{v}/main"),
        "-l",
        &format!("/var/log/postgresql/postgresql-{v}-main.log"),
        "-o",
        &format!("-c config_file=/etc/postgresql/{v}/main/postgresql.conf"),
    ])
    .as_user("postgres");
    Sh(format!(
        "if test -d /run/systemd/system; then {}; \
         else install -d -o postgres -g postgres -m 2775 /var/run/postgresql && {}; fi",
        debian.0, pg_ctl.0
    ))
}

/// Debian's configuration directory of PostgreSQL `version`'s cluster `main`.
pub fn conf_dir(version: u32) -> String {
    format!("/etc/postgresql/{version}/main")
}

/// The suffix of the copy kept of a settings file while its replacement is not yet
/// confirmed running (see [`write_keeping_previous`]). PostgreSQL's `include_dir` reads
/// only files ending in `.conf`, so the copy is never read as settings.
pub const PREVIOUS_SUFFIX: &str = ".pgform-previous";

/// Checks a candidate settings file with the server's own parser before it lands: a
/// copy of the configuration directory with standard input at `rel` (a path inside it)
/// is read by `postgres -C` as the postgres user, which parses every configuration file
/// (postgresql.auto.conf included) and fails on any value it rejects. Exits 0 when
/// PostgreSQL accepts them all; otherwise PostgreSQL's messages are on stdout.
pub fn check_settings(version: u32, rel: &str) -> Sh {
    let postgres = Sh::argv([
        pg_bin(version, "postgres").as_str(),
        "-C",
        "data_directory",
        "-c",
    ]);
    Sh(format!(
        "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && cp -a {dir}/. \"$d\"/ && cat > \"$d\"/{rel} && \
         chown -R postgres \"$d\" && sudo -n -u postgres -- {} \"config_file=$d/postgresql.conf\" 2>&1",
        postgres.0,
        dir = quote(&conf_dir(version)),
        rel = quote(rel),
    ))
}

/// Replaces `path` with standard input as [`write_file`] does, first keeping the file it
/// replaces at `path` + [`PREVIOUS_SUFFIX`] (empty when there was none), unless a copy
/// is kept already: that one is from a run that stopped before its settings were
/// confirmed, so it is still the last file PostgreSQL was known to run with.
pub fn write_keeping_previous(path: &str, owner: &str, group: &str, mode: &str) -> Sh {
    let (p, prev) = (quote(path), quote(&format!("{path}{PREVIOUS_SUFFIX}")));
    Sh(format!(
        "if [ ! -e {prev} ]; then t=$(mktemp {prev}.XXXXXX) && {{ if [ -e {p} ]; then cat {p} > \"$t\"; fi; }} \
         && chown {o}:{g} \"$t\" && chmod {m} \"$t\" && mv -f \"$t\" {prev} || exit 1; fi && {}",
        write_file(path, owner, group, mode).0,
        o = quote(owner),
        g = quote(group),
        m = quote(mode),
    ))
}

/// Puts back every settings file of PostgreSQL `version` whose previous copy is kept
/// (in its `conf.d`), and prints the paths put back.
pub fn restore_previous(version: u32) -> Sh {
    Sh(format!(
        "for p in {dir}/conf.d/*{s}; do [ -e \"$p\" ] || continue; \
         mv -f \"$p\" \"${{p%{s}}}\" && echo \"${{p%{s}}}\" || exit 1; done",
        dir = quote(&conf_dir(version)),
        s = PREVIOUS_SUFFIX
    ))
}

/// Drops the kept previous copies: the settings files that replaced them run.
pub fn forget_previous(version: u32) -> Sh {
    Sh(format!(
        "rm -f -- {}/conf.d/*{PREVIOUS_SUFFIX}",
        quote(&conf_dir(version))
    ))
}

/// The last `lines` lines of the cluster's server log (where a failed start says why).
pub fn server_log_tail(version: u32, lines: u32) -> Sh {
    Sh(format!(
        "tail -n {lines} {} 2>/dev/null; true",
        quote(&format!(
            "/var/log/postgresql/postgresql-{version}-main.log"
        ))
    ))
}

/// psql as the `postgres` OS user over the local socket; the SQL comes on standard input.
/// Rows are printed unaligned, fields separated by `|`.
pub fn psql(version: u32, database: &str) -> Sh {
    Sh::argv([
        pg_bin(version, "psql").as_str(),
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        "|",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        database,
    ])
    .as_user("postgres")
}

/// psql as the `postgres` OS user over TCP as `user`, password from ~postgres/.pgpass
/// (never prompts); the SQL comes on standard input.
pub fn psql_tcp(version: u32, host: &str, user: &str, database: &str, replication: bool) -> Sh {
    let mut conninfo = format!(
        "host={} port=5432 user={} dbname={} connect_timeout=10",
        conninfo_value(host),
        conninfo_value(user),
        conninfo_value(database)
    );
    if replication {
        conninfo.push_str(" replication=true");
    }
    Sh::argv([
        pg_bin(version, "psql").as_str(),
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        "|",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        &conninfo,
    ])
    .as_user("postgres")
}

/// psql as an application user over TCP (as the `postgres` OS user, no password file):
/// the first line of standard input is the password, read into PGPASSWORD by the shell
/// (never an argument), and the rest is the SQL. `options` are more conninfo settings
/// (`key=value ...`, e.g. TLS), appended as given.
pub fn psql_as_user(version: u32, host: &str, user: &str, database: &str, options: &str) -> Sh {
    let mut conninfo = format!(
        "host={} port=5432 user={} dbname={} connect_timeout=10",
        conninfo_value(host),
        conninfo_value(user),
        conninfo_value(database)
    );
    if !options.is_empty() {
        conninfo.push(' ');
        conninfo.push_str(options);
    }
    let psql = Sh::argv([
        pg_bin(version, "psql").as_str(),
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        "|",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        &conninfo,
    ]);
    Sh(format!(
        "IFS= read -r PGPASSWORD && export PGPASSWORD && PGPASSFILE=/dev/null exec {}",
        psql.0
    ))
    .as_user("postgres")
}

/// pg_controldata's report on `data_dir`, in English (`name: value` lines).
pub fn control_data(version: u32, data_dir: &str) -> Sh {
    let bin = pg_bin(version, "pg_controldata");
    Sh(format!(
        "LC_ALL=C {}",
        Sh::argv([bin.as_str(), data_dir]).as_user("postgres").0
    ))
}

/// The system identifier in a data directory's control file (empty if there is none).
pub fn control_system_identifier(version: u32, data_dir: &str) -> Sh {
    let bin = pg_bin(version, "pg_controldata");
    Sh(format!(
        "{{ LC_ALL=C {} 2>/dev/null || true; }} | sed -n 's/^Database system identifier: *//p'",
        Sh::argv([bin.as_str(), data_dir]).as_user("postgres").0
    ))
}

/// Stops the cluster, empties its data directory and copies the primary's with
/// pg_basebackup, ready to stream from `slot` (password from ~postgres/.pgpass). With
/// `tls_root` (the CA on the host) it connects, and the standby will, with
/// `sslmode=verify-full` (-R writes the connection's options to primary_conninfo).
pub fn base_backup(
    version: u32,
    data_dir: &str,
    primary: &str,
    user: &str,
    slot: &str,
    tls_root: Option<&str>,
) -> Sh {
    let bin = pg_bin(version, "pg_basebackup");
    let mut args = vec![
        bin.clone(),
        "-h".into(),
        primary.into(),
        "-p".into(),
        "5432".into(),
        "-U".into(),
        user.into(),
        "-D".into(),
        data_dir.into(),
        "-R".into(),
        "-X".into(),
        "stream".into(),
        "-S".into(),
        slot.into(),
        "--checkpoint=fast".into(),
        "-w".into(),
    ];
    if let Some(ca) = tls_root {
        args.push("-d".into());
        args.push(format!(
            "sslmode=verify-full sslrootcert={}",
            conninfo_value(ca)
        ));
    }
    let copy = Sh::argv(args).as_user("postgres");
    Sh(format!(
        "{{ {} || true; }} && rm -rf {d} && {} && {}",
        pg_ctlcluster(version, "stop").0,
        make_dir(data_dir, "postgres", "postgres", "700").0,
        copy.0,
        d = quote(data_dir)
    ))
}

/// A conninfo value: quoted, with `\` and `'` escaped, as libpq reads it.
pub fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', r"\\").replace('\'', r"\'"))
}

/// Asks about the data volume in one call: which candidate block device exists (first
/// found, resolved), what `blkid -p` finds on it (probing the device itself: no udev or
/// cache needed), what is mounted at `mount_point`, its line in /etc/fstab, whether the
/// mount point holds anything. One `key=value`
/// line each (blkid's lines as `blkid_KEY=value`).
pub fn volume_probe(candidates: &[String], mount_point: &str) -> Sh {
    let mp = quote(mount_point);
    let list: Vec<String> = candidates.iter().map(|c| quote(c)).collect();
    Sh(format!(
        "dev=; for c in {}; do if [ -b \"$c\" ]; then dev=$(readlink -f \"$c\"); break; fi; done; \
         echo \"device=$dev\"; \
         if [ -n \"$dev\" ]; then blkid -p -o export \"$dev\" 2>/dev/null | sed -n 's/^\\(TYPE\\|UUID\\|PTTYPE\\|LABEL\\)=/blkid_\\1=/p'; fi; \
         echo \"mounted=$(findmnt -rn -o SOURCE --mountpoint {mp} 2>/dev/null | head -n 1)\"; \
         echo \"fstab=$(awk -v mp={mp} '$1 !~ /^#/ && $2 == mp' /etc/fstab 2>/dev/null | head -n 1)\"; \
         if [ -d {mp} ] && [ -n \"$(ls -A {mp} 2>/dev/null)\" ]; then echo occupied=yes; fi",
        if list.is_empty() {
            "''".to_string()
        } else {
            list.join(" ")
        }
    ))
}

/// Makes an ext4 filesystem on `device`, but only if `blkid -p` still finds nothing on
/// it (exit 2): the last guard against formatting a device that holds anything.
pub fn format_empty_device(device: &str) -> Sh {
    let d = quote(device);
    Sh(format!(
        "blkid -p {d} >/dev/null 2>&1; s=$?; if [ \"$s\" -ne 2 ]; then echo \"refusing to format {d}: blkid finds something on it (status $s)\" >&2; exit 1; fi; \
         mkfs.ext4 -q -L pgdata {d}"
    ))
}

/// The filesystem UUID on `device`.
pub fn filesystem_uuid(device: &str) -> Sh {
    Sh::argv(["blkid", "-p", "-s", "UUID", "-o", "value", device])
}

/// Mounts what /etc/fstab names for `mount_point` (creating the directory first).
pub fn mount_from_fstab(mount_point: &str) -> Sh {
    Sh::argv(["mkdir", "-p", mount_point]).and(Sh::argv(["mount", mount_point]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_psql_takes_the_password_on_stdin() {
        let sh = psql_as_user(15, "127.0.0.1", "app", "app", "sslmode=verify-full");
        let text = sh.text();
        assert!(text.contains("IFS= read -r PGPASSWORD"), "{text}");
        assert!(text.contains("PGPASSFILE=/dev/null exec"), "{text}");
        assert!(text.contains("sslmode=verify-full"), "{text}");
        assert!(text.starts_with("sudo -n -H -u postgres"), "{text}");
    }

    #[test]
    fn quoting_survives_metacharacters() {
        assert_eq!(quote("plain-word_1.2"), "plain-word_1.2");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(
            quote("it's $(rm -rf /); `x` \"y\""),
            r#"'it'\''s $(rm -rf /); `x` "y"'"#
        );
    }

    #[test]
    fn quoted_words_round_trip_through_sh() {
        let nasty = "re'pl \"user\" $HOME; `id` && \\ *";
        let cmd = Sh::argv(["printf", "%s", nasty]).as_user("root");
        // sudo is not needed to check the quoting: run the inner text with sh.
        let inner = Sh::argv(["printf", "%s", nasty]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(inner.text())
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), nasty);
        assert!(cmd.text().starts_with("sudo -n -H -u root -- sh -c "));
    }
}
