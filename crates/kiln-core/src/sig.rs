//! HMAC-SHA256 signatures of webhook bodies and MQTT triggers: made and
//! checked here, in constant time, so no caller compares digests itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The HMAC-SHA256 of `data` under `key`, in lower-case hex.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_hex` (upper or lower case hex) is the HMAC-SHA256 of
/// `data` under `key`, compared in constant time. An empty key signs
/// nothing.
pub fn verify_hmac_sha256_hex(key: &[u8], data: &[u8], signature_hex: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let Ok(sig) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(data);
    mac.verify_slice(&sig).is_ok()
}

/// Constant-time equality of two secrets (GitLab's token header).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2() {
        // RFC 4231, test case 2.
        let sig = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &sig.to_uppercase()
        ));
        assert!(!verify_hmac_sha256_hex(b"Jefe", b"what do ya want", &sig));
        assert!(!verify_hmac_sha256_hex(
            b"",
            b"x",
            &hmac_sha256_hex(b"", b"x")
        ));
        assert!(!verify_hmac_sha256_hex(b"Jefe", b"x", "not hex"));
    }

    #[test]
    fn secrets_compare() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"ab"));
        assert!(!secret_eq(b"", b""));
    }
}
