//! Jump hosts. `ssh -J` gives a hop neither the key (`-i`) nor the known-hosts options of
//! the command line, so pgform writes a small ssh config with a `Host` block per hop
//! (its user, port and key, the cluster's known-hosts file and policy, the hop before it)
//! and points ssh at it with `-F`, which ssh hands on to each hop's own ssh. The user's
//! and the system's configs are included after the blocks, so they still apply to what
//! pgform does not set (no key in the spec: the agent and `~/.ssh/config` work as usual).
//!
//! The file names paths, never a key's content: nothing secret is in it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One bastion on the way to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// A plain host name or address (checked by the spec: no spaces, quotes, patterns).
    pub host: String,
    pub port: Option<u16>,
    /// None: ssh's own default (the user's ssh config, then the login name).
    pub user: Option<String>,
    /// None: the agent and the user's ssh config.
    pub private_key: Option<PathBuf>,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The ssh config for `hops` (in order: the first is reached directly).
pub fn ssh_config(hops: &[Hop], strict_host_keys: bool, known_hosts: Option<&Path>) -> String {
    let mut out = String::from(
        "# Written by pgform for one connection: the jump hosts, with the cluster's key and\n\
         # known-hosts policy. Your own ssh config applies to everything not set here.\n",
    );
    for (i, hop) in hops.iter().enumerate() {
        out.push_str(&format!("Host {}\n", hop.host));
        if let Some(user) = &hop.user {
            out.push_str(&format!("    User {user}\n"));
        }
        if let Some(port) = hop.port {
            out.push_str(&format!("    Port {port}\n"));
        }
        if let Some(key) = &hop.private_key {
            out.push_str(&format!("    IdentityFile {}\n", path_value(key)));
            out.push_str("    IdentitiesOnly yes\n");
        }
        if let Some(file) = known_hosts {
            out.push_str(&format!("    UserKnownHostsFile {}\n", path_value(file)));
        }
        out.push_str(&format!(
            "    StrictHostKeyChecking {}\n",
            if strict_host_keys {
                "yes"
            } else {
                "accept-new"
            }
        ));
        out.push_str("    BatchMode yes\n    ConnectTimeout 15\n    ServerAliveInterval 15\n");
        if i > 0 {
            out.push_str(&format!("    ProxyJump {}\n", hops[i - 1].host));
        }
    }
    // `-F` replaces both default configs: read them after pgform's blocks (first value
    // wins in ssh config), as ssh would without `-F`.
    out.push_str("Host *\n    Include ~/.ssh/config\n    Include /etc/ssh/ssh_config\n");
    out
}

/// A path as an ssh config value: absolute (a hop's ssh may start elsewhere), quoted,
/// `%` doubled (IdentityFile and UserKnownHostsFile expand %-tokens).
fn path_value(path: &Path) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = path
        .to_string_lossy()
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(host: &str, user: Option<&str>, port: Option<u16>, key: Option<&str>) -> Hop {
        Hop {
            host: host.into(),
            port,
            user: user.map(str::to_string),
            private_key: key.map(PathBuf::from),
        }
    }

    #[test]
    fn one_hop_carries_the_key_and_the_known_hosts_policy() {
        let conf = ssh_config(
            &[hop("10.0.0.5", Some("admin"), Some(2222), Some("/k/id 1"))],
            false,
            Some(Path::new("/state/demo.known_hosts")),
        );
        assert_eq!(
            conf.lines().skip(2).collect::<Vec<_>>(),
            [
                "Host 10.0.0.5",
                "    User admin",
                "    Port 2222",
                "    IdentityFile \"/k/id 1\"",
                "    IdentitiesOnly yes",
                "    UserKnownHostsFile \"/state/demo.known_hosts\"",
                "    StrictHostKeyChecking accept-new",
                "    BatchMode yes",
                "    ConnectTimeout 15",
                "    ServerAliveInterval 15",
                "Host *",
                "    Include ~/.ssh/config",
                "    Include /etc/ssh/ssh_config",
            ]
        );
    }

    #[test]
    fn later_hops_go_through_the_one_before_and_no_key_leaves_the_agent() {
        let conf = ssh_config(
            &[
                hop("a.example", None, None, None),
                hop("b", None, None, None),
            ],
            true,
            None,
        );
        assert!(!conf.contains("IdentityFile") && !conf.contains("IdentitiesOnly"));
        assert!(!conf.contains("UserKnownHostsFile") && !conf.contains("User "));
        let b = &conf[conf.find("Host b\n").expect(&conf)..];
        assert!(b.contains("    ProxyJump a.example\n"), "{conf}");
        assert!(b.contains("StrictHostKeyChecking yes"), "{conf}");
        let a = &conf[conf.find("Host a.example\n").expect(&conf)..conf.find("Host b\n").unwrap()];
        assert!(!a.contains("ProxyJump"), "{conf}");
    }

    #[test]
    fn paths_are_absolute_quoted_and_percent_escaped() {
        assert_eq!(path_value(Path::new("/a/50%\"x")), r#""/a/50%%\"x""#);
        let rel = path_value(Path::new("keys/id"));
        assert!(
            rel.starts_with("\"/") && rel.ends_with("/keys/id\""),
            "{rel}"
        );
    }

    #[test]
    fn hops_display_as_written() {
        assert_eq!(hop("b", Some("u"), Some(22), None).to_string(), "u@b:22");
        assert_eq!(hop("b", None, None, None).to_string(), "b");
    }
}
