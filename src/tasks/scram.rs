//! PostgreSQL's SCRAM-SHA-256 password verifier, computed here so that `ALTER ROLE`
//! carries the verifier, never the password (statements show in pg_stat_activity and,
//! with statement logging, in the server log).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count (`scram_iterations`).
const ITERATIONS: u32 = 4096;

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password`, or `None`
/// for a non-ASCII password, which PostgreSQL normalises (SASLprep) before hashing: such
/// a password is sent as it is and hashed by the server.
pub fn verifier(password: &str, salt: &[u8; 16]) -> Option<String> {
    if !password.is_ascii() {
        return None;
    }
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, ITERATIONS);
    let hmac = |key: &[u8], text: &[u8]| -> Vec<u8> {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(text);
        m.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    Some(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    ))
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
}
