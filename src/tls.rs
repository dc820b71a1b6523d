//! The cluster's certificates: a CA and one server certificate per node, made with rcgen
//! (no openssl on the control machine) and kept in a folder beside the state
//! (`<cluster>.tls/`: the folder 0700, keys 0600, every file written atomically). A
//! `ca.crt` + `ca.key` already in the folder is the CA pgform signs with (the user's
//! own). A node certificate names the node's addresses (IP SANs) and its name; it is
//! made again when it expires within the renewal window or no longer names them.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long a node certificate pgform makes is valid.
pub const NODE_CERT_DAYS: u32 = 730;
/// How long the CA pgform makes is valid.
pub const CA_CERT_DAYS: u32 = 3650;
/// The CA certificate's file in the folder (also what clients use as `sslrootcert`).
pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a certificate pgform can read ({why})")]
    Parse { path: PathBuf, why: String },
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error(
        "{dir}: has {have} but not {missing}; put both the CA certificate and its key there, or neither"
    )]
    HalfCa {
        dir: PathBuf,
        have: &'static str,
        missing: &'static str,
    },
}

/// The TLS folder pgform keeps beside the state.
pub fn default_dir(state_path: &Path, cluster: &str) -> PathBuf {
    state_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{cluster}.tls"))
}

pub fn ca_cert(dir: &Path) -> PathBuf {
    dir.join(CA_CERT)
}
pub fn node_cert(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.crt"))
}
pub fn node_key(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.key"))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Seconds since the epoch.
    pub not_after: i64,
    /// IP and DNS names, as text.
    pub names: Vec<String>,
}

impl CertInfo {
    /// `YYYY-MM-DD` of the expiry.
    pub fn expiry_date(&self) -> String {
        OffsetDateTime::from_unix_timestamp(self.not_after)
            .map(|t| t.date().to_string())
            .unwrap_or_else(|_| self.not_after.to_string())
    }
}

/// Reads a PEM certificate's expiry and names.
pub fn parse(pem: &str, path: &Path) -> Result<CertInfo, TlsError> {
    let bad = |why: String| TlsError::Parse {
        path: path.to_path_buf(),
        why,
    };
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = p.parse_x509().map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        names,
    })
}

/// Why a node's certificate must be made (again), or `None` when it is good: missing,
/// expiring within `renew_before_days` of `now`, or not naming every one of `names`.
pub fn renewal_reason(
    node: &str,
    pem: Option<&str>,
    path: &Path,
    names: &[String],
    renew_before_days: u32,
    now: OffsetDateTime,
) -> Option<String> {
    let Some(pem) = pem else {
        return Some(format!("make a certificate for {node}"));
    };
    let info = match parse(pem, path) {
        Ok(i) => i,
        Err(e) => return Some(format!("{e}: make a new one")),
    };
    let limit = now + Duration::days(i64::from(renew_before_days));
    if info.not_after <= limit.unix_timestamp() {
        return Some(format!(
            "certificate for {node} expires {}: renew",
            info.expiry_date()
        ));
    }
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !info.names.contains(n))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "certificate for {node} does not name {}: renew",
            missing.join(", ")
        )
    })
}

/// Reads a file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The folder (0700) and its CA: the one there, or a new one. Returns the CA's PEM.
pub fn ensure_ca(dir: &Path, cluster: &str) -> Result<String, TlsError> {
    make_dir(dir)?;
    let (cert, key) = (ca_cert(dir), dir.join(CA_KEY));
    match (read_optional(&cert)?, read_optional(&key)?) {
        (Some(c), Some(_)) => return Ok(c),
        (Some(_), None) => {
            return Err(TlsError::HalfCa {
                dir: dir.into(),
                have: CA_CERT,
                missing: CA_KEY,
            });
        }
        (None, Some(_)) => {
            return Err(TlsError::HalfCa {
                dir: dir.into(),
                have: CA_KEY,
                missing: CA_CERT,
            });
        }
        (None, None) => {}
    }
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("pgform CA for {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(CA_CERT_DAYS));
    let ca = params.self_signed(&key_pair)?;
    // The key first: a certificate without its key would be a half CA.
    write_atomic(&key, &key_pair.serialize_pem(), 0o600)?;
    write_atomic(&cert, &ca.pem(), 0o644)?;
    Ok(ca.pem())
}

/// A new key and certificate for `node` naming `names`, signed by the folder's CA
/// (which [`ensure_ca`] made), valid for `days` from now.
pub fn make_node(dir: &Path, node: &str, names: &[String], days: i64) -> Result<(), TlsError> {
    let ca_pem = read_optional(&ca_cert(dir))?.unwrap_or_default();
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = read_optional(&ca_key_path)?.ok_or_else(|| TlsError::HalfCa {
        dir: dir.into(),
        have: CA_CERT,
        missing: CA_KEY,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let cert = params.signed_by(&key_pair, &issuer)?;
    write_atomic(&node_key(dir, node), &key_pair.serialize_pem(), 0o600)?;
    write_atomic(&node_cert(dir, node), &cert.pem(), 0o644)?;
    Ok(())
}

/// Makes `node`'s certificate again when [`renewal_reason`] says so; true when it did.
pub fn ensure_node(
    dir: &Path,
    node: &str,
    names: &[String],
    renew_before_days: u32,
) -> Result<bool, TlsError> {
    let path = node_cert(dir, node);
    let pem = read_optional(&path)?;
    let key_there = node_key(dir, node).exists();
    let reason = renewal_reason(
        node,
        pem.as_deref(),
        &path,
        names,
        renew_before_days,
        OffsetDateTime::now_utc(),
    );
    if reason.is_none() && key_there {
        return Ok(false);
    }
    make_node(dir, node, names, i64::from(NODE_CERT_DAYS))?;
    Ok(true)
}

fn make_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Temp file with `mode` from the start, fsync, rename.
fn write_atomic(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(content.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_and_node_certificates_are_made_once_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c.tls");
        let ca = ensure_ca(&dir, "c").unwrap();
        assert_eq!(ensure_ca(&dir, "c").unwrap(), ca, "the CA is reused");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY)), 0o600);
        let names = vec!["10.0.0.5".to_string(), "primary".to_string()];
        assert!(ensure_node(&dir, "primary", &names, 30).unwrap());
        assert!(!ensure_node(&dir, "primary", &names, 30).unwrap());
        assert_eq!(mode(&node_key(&dir, "primary")), 0o600);
        let pem = std::fs::read_to_string(node_cert(&dir, "primary")).unwrap();
        let info = parse(&pem, Path::new("x")).unwrap();
        assert_eq!(info.names, names);
        let days = (info.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86400;
        assert!((729..=730).contains(&days), "{days}");
        // A changed address makes a new certificate naming it.
        let moved = vec!["10.0.0.6".to_string(), "primary".to_string()];
        assert!(ensure_node(&dir, "primary", &moved, 30).unwrap());
        let pem = std::fs::read_to_string(node_cert(&dir, "primary")).unwrap();
        assert_eq!(parse(&pem, Path::new("x")).unwrap().names, moved);
    }

    #[test]
    fn renewal_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure_ca(dir, "c").unwrap();
        let names = vec!["10.0.0.5".to_string()];
        make_node(dir, "replica-0", &names, 10).unwrap();
        let pem = std::fs::read_to_string(node_cert(dir, "replica-0")).unwrap();
        let now = OffsetDateTime::now_utc();
        let why = renewal_reason("replica-0", Some(&pem), dir, &names, 30, now).unwrap();
        assert!(
            why.starts_with("certificate for replica-0 expires 20"),
            "{why}"
        );
        assert!(why.ends_with(": renew"), "{why}");
        assert_eq!(
            renewal_reason("replica-0", Some(&pem), dir, &names, 5, now),
            None
        );
        let other = vec!["10.0.0.9".to_string()];
        let why = renewal_reason("replica-0", Some(&pem), dir, &other, 5, now).unwrap();
        assert!(why.contains("does not name 10.0.0.9"), "{why}");
        assert!(renewal_reason("replica-0", None, dir, &names, 5, now).is_some());
        assert!(
            renewal_reason("replica-0", Some("junk"), dir, &names, 5, now)
                .unwrap()
                .contains("not a certificate")
        );
    }

    #[test]
    fn half_a_ca_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CA_CERT), "x").unwrap();
        let e = ensure_ca(tmp.path(), "c").unwrap_err().to_string();
        assert!(e.contains("not ca.key"), "{e}");
    }
}
