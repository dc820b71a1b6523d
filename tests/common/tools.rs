//! External tools the export tests run: Ansible's programs (from the `ansible` and
//! `ansible-lint` PyPI packages) and `terraform`.
//!
//! A Python tool is found on PATH or among the scripts of the python3 that has it (pip
//! installs there, which need not be on PATH). Without a tool a test prints why and skips,
//! unless `CI` is set: then it fails, so CI never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn works(p: &Path) -> bool {
    Command::new(p)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `name` on PATH, or among python3's scripts.
pub fn find(name: &str) -> Option<PathBuf> {
    if works(Path::new(name)) {
        return Some(name.into());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name);
    works(&p).then_some(p)
}

/// `name`, or None after printing why (panics under CI). `install` says how to get it.
pub fn require(name: &str, install: &str) -> Option<PathBuf> {
    match find(name) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("{name} is not installed ({install})")
        }
        None => {
            eprintln!("SKIPPED: {name} is not installed ({install})");
            None
        }
    }
}

/// Runs ansible-lint's `production` profile over an exported Ansible directory and
/// panics with its findings when it fails.
pub fn assert_ansible_lint_production(dir: &Path) {
    let Some(lint) = require("ansible-lint", "pip install ansible-lint") else {
        return;
    };
    let out = Command::new(lint)
        .current_dir(dir)
        .args(["--profile", "production", "--nocolor", "--offline", "."])
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run ansible-lint");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("Profile 'production' was required, and it passed"),
        "ansible-lint --profile production failed in {}:\n{text}",
        dir.display()
    );
}

/// The counts of an `ansible-playbook` PLAY RECAP: `(host, changed)` per host; panics
/// when a host failed or was unreachable.
pub fn playbook_recap(output: &str) -> Vec<(String, u32)> {
    let start = output
        .find("PLAY RECAP")
        .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{output}"));
    let mut out = Vec::new();
    for line in output[start..].lines().skip(1) {
        let Some((host, counts)) = line.split_once(" : ") else {
            continue;
        };
        let get = |k: &str| -> u32 {
            counts
                .split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k}= in recap line {line:?}"))
        };
        assert_eq!(get("failed"), 0, "{line}\n{output}");
        assert_eq!(get("unreachable"), 0, "{line}\n{output}");
        out.push((host.trim().to_string(), get("changed")));
    }
    out
}

/// Runs `ansible-playbook -i inventory.ini site.yml ARGS` in an exported directory
/// with `env` set (host keys not checked: the test hosts are new); returns its exit
/// success and its output (stdout then stderr).
pub fn run_playbook(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin)
        .current_dir(dir)
        .args(["-i", "inventory.ini", "site.yml"])
        .args(args)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run ansible-playbook");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
