//! Shell text for the HA mode: daemons without Debian's cluster wrapper (etcd,
//! Patroni) and requests to Patroni's REST API. Part of `shell.rs`: fixed text plus
//! quoted words; secrets only on standard input.

use super::{Sh, quote};

/// Where pgform keeps its daemons' pid files on a host without systemd: a pid means
/// nothing after a reboot, and /run starts empty.
const RUN_DIR: &str = "/run/pgform";
/// Where pgform keeps its daemons' stamps (touched at each start or reload with the
/// current settings). Not under /run: with systemd the daemons come back at boot with
/// the same settings, and a stamp lost with /run would read as settings never applied,
/// restarting every etcd member at once after a reboot.
const STAMP_DIR: &str = "/var/lib/pgform";

fn pid_file(name: &str) -> String {
    quote(&format!("{RUN_DIR}/{name}.pid"))
}

fn stamp(name: &str) -> String {
    quote(&format!("{STAMP_DIR}/{name}.stamp"))
}

/// Makes the stamp's folder and touches daemon `name`'s stamp.
fn touch_stamp(name: &str) -> String {
    format!("install -d -m 755 {STAMP_DIR} && touch {}", stamp(name))
}

/// Sets `r=1` when daemon `name` runs: systemd's unit, or else the pid in pgform's pid
/// file whose process is still `name` (a reused pid after a reboot is another program).
fn running_test(name: &str) -> String {
    let n = quote(name);
    format!(
        "r=; if test -d /run/systemd/system; then systemctl is-active --quiet {n} && r=1; \
         else pid=$(cat {pid} 2>/dev/null); test -n \"$pid\" && \
         test \"$(cat /proc/$pid/comm 2>/dev/null)\" = {n} && r=1; fi",
        pid = pid_file(name)
    )
}

/// Prints `stopped`, `unstamped` (runs, but pgform never started it: a package's unit
/// did at install, with its own settings), `stale` (runs, but `config` changed since
/// pgform started or reloaded it) or `running`. A stamp that earlier releases kept
/// under /run still counts, so that upgrading pgform restarts nothing. The missing
/// stamp is tested outright: `-nt` against a missing file is true in bash, false in dash.
pub fn daemon_state(name: &str, config: &str) -> Sh {
    Sh(format!(
        "{}; s={}; test -e \"$s\" || s={}; \
         if test -z \"$r\"; then echo stopped; elif ! test -e \"$s\"; then echo unstamped; \
         elif test {} -nt \"$s\"; then echo stale; else echo running; fi",
        running_test(name),
        stamp(name),
        quote(&format!("{RUN_DIR}/{name}.stamp")),
        quote(config),
    ))
}

/// Starts daemon `name`: its systemd unit, or else `argv` as `user` in a new session
/// from `/` (the daemon's user may not enter the login's folder; Patroni's
/// multiprocessing changes back to it), with the `KEY=value` lines of `env_file`
/// exported if it exists, output appended to
/// `log`, its pid written from inside (runuser forks, so `$!` would be runuser's). Fails
/// with the log's tail unless the process still runs a second later.
pub fn daemon_start(name: &str, user: &str, argv: &[String], env_file: &str, log: &str) -> Sh {
    let n = quote(name);
    let pid = pid_file(name);
    let check = format!(
        "p=$(cat {pid}); test -n \"$p\" && test \"$(cat /proc/$p/comm 2>/dev/null)\" = {n}"
    );
    Sh(format!(
        "install -d -m 755 {RUN_DIR} && {stamp} && \
         if test -d /run/systemd/system; then systemctl enable -q {n} 2>/dev/null; systemctl start {n}; \
         else install -m 644 -o {u} /dev/null {pid} && \
         (cd / && set -a && if test -f {env}; then . {env}; fi; set +a; \
          exec setsid -f runuser -u {u} -- sh -c 'echo $$ > \"$0\" && exec \"$@\"' {pid} {argv}) \
          </dev/null >>{log} 2>&1; \
         i=0; until {check}; do i=$((i+1)); if test $i -gt 50; then break; fi; sleep 0.1; done; \
         sleep 1; if {check}; then exit 0; fi; \
         echo {n} did not stay up, see {log}: >&2; tail -n 15 {log} >&2; exit 1; fi",
        stamp = touch_stamp(name),
        u = quote(user),
        env = quote(env_file),
        argv = Sh::argv(argv).0,
        log = quote(log),
    ))
}

/// Stops daemon `name` and waits (up to 60 s) until its process is gone.
pub fn daemon_stop(name: &str) -> Sh {
    let n = quote(name);
    Sh(format!(
        "if test -d /run/systemd/system; then systemctl stop {n}; \
         else {}; if test -n \"$r\"; then kill \"$pid\"; i=0; \
         while test -e /proc/$pid && test $i -lt 600; do sleep 0.1; i=$((i+1)); done; \
         test ! -e /proc/$pid; fi; fi",
        running_test(name)
    ))
}

/// Restarts daemon `name` once `healthy` (a shell command) succeeds, then waits until it
/// succeeds again; each wait lasts up to `wait_seconds`. Fails, showing `healthy`'s
/// words, when the cluster stays unhealthy before (nothing stopped) or after.
pub fn daemon_restart_when_healthy(
    name: &str,
    user: &str,
    argv: &[String],
    env_file: &str,
    log: &str,
    healthy: &str,
    wait_seconds: u32,
) -> Sh {
    let n = quote(name);
    let says = format!("({healthy}) >&2 2>&1");
    Sh(format!(
        "pgform_healthy() {{ i=0; until ({healthy}) >/dev/null 2>&1; do i=$((i+1)); \
         if test $i -ge {tries}; then return 1; fi; sleep 0.5; done; }}; \
         if ! pgform_healthy; then echo {n} is not restarted: its cluster was not healthy \
         'within {wait_seconds} s:' >&2; {says}; exit 1; fi; \
         {stop} && ({start}) || exit 1; \
         if ! pgform_healthy; then echo {n} restarted, but its cluster is not healthy \
         '{wait_seconds} s later:' >&2; {says}; exit 1; fi",
        tries = wait_seconds * 2,
        stop = daemon_stop(name).0,
        start = daemon_start(name, user, argv, env_file, log).0,
    ))
}

/// Asks daemon `name` to read its settings again (SIGHUP; the unit's reload).
pub fn daemon_reload(name: &str) -> Sh {
    let n = quote(name);
    Sh(format!(
        "{} && if test -d /run/systemd/system; then systemctl reload {n}; \
         else {}; test -n \"$r\" && kill -HUP \"$pid\"; fi",
        touch_stamp(name),
        running_test(name)
    ))
}

/// A request to Patroni's REST API from the host itself (python3 is on every Debian
/// host; Patroni needs it). Standard input: the first line `user:password` (or an empty
/// line: no authentication), then the body. Prints the status code on the first line,
/// then the response; `000` and the reason when the API does not answer within 30 s.
pub fn rest(method: &str, url: &str) -> Sh {
    rest_within(method, url, 30)
}

/// [`rest`] that gives up after `seconds` (a probe of a member that may be gone).
pub fn rest_within(method: &str, url: &str, seconds: u32) -> Sh {
    const SCRIPT: &str = r#"import sys, base64, urllib.request, urllib.error
m, u, w = sys.argv[1], sys.argv[2], int(sys.argv[3])
auth, _, body = sys.stdin.buffer.read().partition(b"\n")
r = urllib.request.Request(u, data=body if m != "GET" else None, method=m)
r.add_header("Content-Type", "application/json")
if auth:
    r.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
try:
    with urllib.request.urlopen(r, timeout=w) as s:
        c, t = s.status, s.read()
except urllib.error.HTTPError as e:
    c, t = e.code, e.read()
except Exception as e:
    c, t = 0, str(e).encode()
sys.stdout.write("%03d\n" % c + t.decode("utf-8", "replace"))
"#;
    Sh::argv(["python3", "-c", SCRIPT, method, url, &seconds.to_string()])
}

/// etcd's health as the local member sees the cluster: one line per member endpoint.
pub fn etcd_health() -> Sh {
    Sh(
        "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=3s \
         endpoint health --cluster 2>&1; true"
            .into(),
    )
}

/// etcdctl against the local member, with a short timeout.
const ETCDCTL: &str =
    "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=5s";

/// etcd's members as the local member knows them: `id, status, name, peer URLs,
/// client URLs, is learner`, one line each.
pub fn etcd_member_list() -> Sh {
    Sh(format!("{ETCDCTL} member list"))
}

/// Removes the etcd member with the hexadecimal id `id` (from [`etcd_member_list`]).
pub fn etcd_member_remove(id: &str) -> Sh {
    Sh(format!("{ETCDCTL} member remove {}", quote(id)))
}

/// Deletes a Patroni member's key (`/service/<scope>/members/<name>`, Patroni's
/// default namespace) in the DCS; prints how many keys went.
pub fn patroni_member_delete(scope: &str, name: &str) -> Sh {
    Sh(format!(
        "{ETCDCTL} del {}",
        quote(&format!("/service/{scope}/members/{name}"))
    ))
}

/// Stops daemon `name` for good on a host leaving the cluster: a systemd unit is
/// stopped and disabled (a reboot must not bring it back), else the process pgform
/// started is stopped.
pub fn daemon_retire(name: &str) -> Sh {
    let n = quote(name);
    Sh(format!(
        "if test -d /run/systemd/system; then systemctl disable -q --now {n}; else {}; fi",
        daemon_stop(name).0
    ))
}

/// Makes sure PostgreSQL no longer runs on a host whose Patroni was stopped (Patroni
/// stops it on the way out, but not when it was between a stop and a start): a fast
/// shutdown of the data directory, then waits up to 60 s for every `postgres` process
/// to end. Fails when one still runs.
pub fn postgres_gone(version: u32) -> Sh {
    let data = quote(&format!("/var/lib/postgresql/{version}/main"));
    let pg_ctl = quote(&format!("/usr/lib/postgresql/{version}/bin/pg_ctl"));
    Sh(format!(
        "if test -f {data}/postmaster.pid; then runuser -u postgres -- {pg_ctl} -D {data} \
         -m fast -w -t 60 stop >/dev/null 2>&1; fi; i=0; \
         while pgrep -x postgres >/dev/null && test $i -lt 300; do sleep 0.2; i=$((i+1)); done; \
         if pgrep -x postgres >/dev/null; then echo PostgreSQL still runs >&2; exit 1; fi"
    ))
}

/// Debian's cluster `<version>/main` (the plain mode's) still in use: its settings
/// exist and its start.conf does not say `disabled` (what the conversion to Patroni
/// writes). Prints `primary`, or `replica` when its data directory is a standby's;
/// nothing otherwise.
pub fn plain_cluster(version: u32) -> Sh {
    let conf = format!("/etc/postgresql/{version}/main");
    Sh(format!(
        "if test -f {pc} && ! grep -qs '^[[:space:]]*disabled' {start}; then \
         if test -f {sig}; then echo replica; else echo primary; fi; fi",
        pc = quote(&format!("{conf}/postgresql.conf")),
        start = quote(&format!("{conf}/start.conf")),
        sig = quote(&format!(
            "/var/lib/postgresql/{version}/main/standby.signal"
        )),
    ))
}

/// Settings of Debian's postgresql.conf that name Debian's own files, folders, port or
/// TLS files: Patroni and the dynamic configuration set those.
const DEBIAN_PATHS: &str = "data_directory|hba_file|ident_file|external_pid_file|include_dir|\
    include|include_if_exists|port|unix_socket_directories|cluster_name|ssl|ssl_cert_file|\
    ssl_key_file|ssl_ca_file|stats_temp_directory";

/// Hands Debian's cluster `<version>/main` over to Patroni: a clean stop if it runs;
/// the data directory's `postgresql.base.conf` (which Patroni's postgresql.conf
/// includes; it would rename a postgresql.conf there, and Debian keeps none) from
/// Debian's settings less its paths, so the server keeps the locale, time zone and
/// memory settings initdb chose, and `pg_ident.conf` beside it; then `disabled` in its
/// start.conf, so that neither pg_ctlcluster nor Debian's units at boot (systemd's
/// generator reads start.conf) start it again beside Patroni. The data directory stays
/// where it is: Patroni's `data_dir` is the same folder.
pub fn plain_cluster_retire(version: u32) -> Sh {
    let v = version.to_string();
    let conf = format!("/etc/postgresql/{version}/main");
    let data = format!("/var/lib/postgresql/{version}/main");
    Sh(format!(
        "if {status} >/dev/null 2>&1; then {stop} || exit 1; fi; \
         if ! test -f {base}; then grep -Ev {skip} {debian} > {base}.tmp; \
         chown postgres:postgres {base}.tmp && chmod 600 {base}.tmp && mv {base}.tmp {base} \
         || exit 1; fi; \
         if ! test -f {ident}; then install -o postgres -g postgres -m 600 {debian_ident} {ident} \
         || exit 1; fi; \
         printf 'disabled\\n' > {start} && \
         if test -d /run/systemd/system; then systemctl daemon-reload; fi",
        status = Sh::argv(["pg_ctlcluster", &v, "main", "status"]).0,
        stop = Sh::argv(["pg_ctlcluster", &v, "main", "stop"]).0,
        base = quote(&format!("{data}/postgresql.base.conf")),
        skip = quote(&format!("^[[:space:]]*({DEBIAN_PATHS})([[:space:]=]|$)")),
        debian = quote(&format!("{conf}/postgresql.conf")),
        ident = quote(&format!("{data}/pg_ident.conf")),
        debian_ident = quote(&format!("{conf}/pg_ident.conf")),
        start = quote(&format!("{conf}/start.conf")),
    ))
}

/// Prints `patroni` when the HA mode configured this host (Patroni's settings exist).
pub fn patroni_present() -> Sh {
    Sh("if test -f /etc/patroni/config.yml; then echo patroni; fi".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_are_named_by_quoted_words() {
        let s = daemon_start(
            "etcd",
            "etcd",
            &["etcd".to_string()],
            "/etc/default/etcd",
            "/var/log/pgform-etcd.log",
        );
        assert!(s.text().contains("runuser -u etcd"), "{}", s.text());
        assert!(s.text().contains("/run/pgform/etcd.pid"), "{}", s.text());
        let st = daemon_state("patroni", "/etc/patroni/config.yml");
        assert!(
            st.text().contains("s=/var/lib/pgform/patroni.stamp;"),
            "{}",
            st.text()
        );
    }

    #[test]
    fn a_restart_waits_for_a_healthy_cluster_and_stops_nothing_without_one() {
        let restart = |healthy: &str| {
            daemon_restart_when_healthy(
                "etcd",
                "etcd",
                &["etcd".to_string()],
                "/etc/default/etcd",
                "/var/log/pgform-etcd.log",
                healthy,
                1,
            )
        };
        let text = restart("echo member b is down; false").text().to_string();
        // Valid in bash (native runs) and dash (the Ansible export's /bin/sh).
        for shell in ["bash", "sh"] {
            let syntax = std::process::Command::new(shell)
                .args(["-n", "-c", &text])
                .output()
                .unwrap();
            assert!(syntax.status.success(), "{shell}: {syntax:?}");
        }
        // An unhealthy cluster: the script ends before the stop, saying why.
        let out = std::process::Command::new("sh")
            .args(["-c", &text])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("etcd is not restarted: its cluster was not healthy within 1 s"),
            "{err}"
        );
        assert!(err.contains("member b is down"), "{err}");
        let stop = text.find("systemctl stop").unwrap();
        let first_check = text.find("member b is down").unwrap();
        let wait = text.rfind("member b is down").unwrap();
        assert!(first_check < stop && stop < wait, "{text}");
    }

    #[test]
    fn the_plain_cluster_is_read_and_retired_by_its_start_conf() {
        let p = plain_cluster(15).text().to_string();
        assert!(p.contains("/etc/postgresql/15/main/start.conf"), "{p}");
        assert!(
            p.contains("/var/lib/postgresql/15/main/standby.signal"),
            "{p}"
        );
        let r = plain_cluster_retire(15).text().to_string();
        assert!(r.contains("pg_ctlcluster 15 main stop"), "{r}");
        assert!(
            r.contains("printf 'disabled\\n' > /etc/postgresql/15/main/start.conf"),
            "{r}"
        );
    }

    #[test]
    fn the_rest_script_takes_no_secret_argument() {
        let s = rest("PATCH", "http://10.0.0.1:8008/config");
        assert!(s.text().starts_with("python3 -c "));
        assert!(
            s.text().ends_with(" PATCH http://10.0.0.1:8008/config 30"),
            "{}",
            s.text()
        );
        // The script itself is valid Python.
        let out = std::process::Command::new("python3")
            .args(["-c", "import ast,sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                let text = s.text().to_string();
                let start = text.find('\'').unwrap() + 1;
                let end = text.rfind('\'').unwrap();
                let script = text[start..end].replace(r"'\''", "'");
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait()
            });
        if let Ok(status) = out {
            assert!(status.success());
        }
    }
}
