//! PostgreSQL's SCRAM-SHA-256 password verifier, computed here so that `ALTER ROLE`
//! carries the verifier, never the password (statements show in pg_stat_activity and,
//! with statement logging, in the server log).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count (`scram_iterations`).
const ITERATIONS: u32 = 4096;

/// Above this (PostgreSQL allows up to 2^31 - 1), checking here would take seconds: a
/// login checks it instead.
const MAX_ITERATIONS: u32 = 100_000;

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password`, or `None`
/// for a non-ASCII password, which PostgreSQL normalises (SASLprep) before hashing: such
/// a password is sent as it is and hashed by the server.
pub fn verifier(password: &str, salt: &[u8; 16]) -> Option<String> {
    let (stored_key, server_key) = keys(password, salt, ITERATIONS)?;
    Some(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    ))
}

/// Whether `stored` (a role's `pg_authid.rolpassword`) is a SCRAM verifier of `password`:
/// the check a login would make, without logging in. `None` for a non-ASCII password
/// (see [`verifier`]) or a very high iteration count; `Some(false)` for anything that is
/// not a SCRAM verifier (none, md5), which a new verifier replaces.
pub fn matches(password: &str, stored: &str) -> Option<bool> {
    if !password.is_ascii() {
        return None;
    }
    let Some(stored) = Stored::parse(stored) else {
        return Some(false);
    };
    if stored.iterations > MAX_ITERATIONS {
        return None;
    }
    let (stored_key, server_key) = keys(password, &stored.salt, stored.iterations)?;
    Some(stored_key == stored.stored_key && server_key == stored.server_key)
}

/// A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
struct Stored {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Stored {
    fn parse(text: &str) -> Option<Stored> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Stored {
            iterations: iterations.parse().ok().filter(|n| *n > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored_key).ok()?,
            server_key: B64.decode(server_key).ok()?,
        })
    }
}

/// StoredKey and ServerKey of `password` (RFC 5802), `None` if it is not ASCII.
fn keys(password: &str, salt: &[u8], iterations: u32) -> Option<(Vec<u8>, Vec<u8>)> {
    if !password.is_ascii() {
        return None;
    }
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
    let hmac = |key: &[u8], text: &[u8]| -> Vec<u8> {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(text);
        m.finalize().into_bytes().to_vec()
    };
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key")).to_vec();
    let server_key = hmac(&salted, b"Server Key");
    Some((stored_key, server_key))
}

/// A fresh random salt.
pub fn salt() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_shape_and_depends_on_salt() {
        let v = verifier("secret", &[7; 16]).unwrap();
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:BwcHBwcHBwcHBwcHBwcHBw==$"),
            "{v}"
        );
        assert_eq!(v.matches('$').count(), 2);
        assert!(!v.contains("secret"));
        assert_ne!(v, verifier("secret", &[8; 16]).unwrap());
        assert_eq!(verifier("pässword", &[7; 16]), None);
    }

    #[test]
    fn matches_its_own_verifier_and_nothing_else() {
        let v = verifier("s3cret 'x'", &[3; 16]).unwrap();
        assert_eq!(matches("s3cret 'x'", &v), Some(true));
        assert_eq!(matches("s3cret 'y'", &v), Some(false));
        assert_eq!(
            matches("s3cret 'x'", "md5a3556571e93b0d20722ba62be61e8c2d"),
            Some(false)
        );
        assert_eq!(matches("s3cret 'x'", ""), Some(false));
        assert_eq!(
            matches("s3cret 'x'", "SCRAM-SHA-256$0:AAAA$AAAA:AAAA"),
            Some(false)
        );
        assert_eq!(matches("pässword", &v), None);
        assert_eq!(
            matches("pw", "SCRAM-SHA-256$2000000000:AAAA$AAAA:AAAA"),
            None
        );
        // Another iteration count, as a server with scram_iterations = 10 stores it.
        let (stored, server) = keys("pw", &[1; 16], 10).unwrap();
        let other = format!(
            "SCRAM-SHA-256$10:{}${}:{}",
            B64.encode([1u8; 16]),
            B64.encode(stored),
            B64.encode(server)
        );
        assert_eq!(matches("pw", &other), Some(true));
    }

    /// A verifier PostgreSQL 15 made for the password `pgform` (`CREATE ROLE ... PASSWORD
    /// 'pgform'`, then `SELECT rolpassword FROM pg_authid`).
    #[test]
    fn matches_a_verifier_made_by_postgres() {
        let made_by_postgres = "SCRAM-SHA-256$4096:/JtAHAbR8B1R3w0mjWlsRA==$\
            oRgmfygaoo05KnGKQ34NNaX8xR228X+S0YCO86dUxWM=:\
            3fYIareVEfv8YQYp5r3BzhOSaywlpb9blaStJtOlMLE=";
        assert_eq!(matches("pgform", made_by_postgres), Some(true));
        assert_eq!(matches("pgforM", made_by_postgres), Some(false));
    }
}
