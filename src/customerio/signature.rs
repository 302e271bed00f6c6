//! Customer.io's request signature: lowercase hex HMAC-SHA256 of
//! `v0:{X-CIO-Timestamp}:{raw body}`, keyed with the signing key's bytes.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-CIO-Signature header")]
    MissingSignature,
    #[error("missing X-CIO-Timestamp header")]
    MissingTimestamp,
    #[error("X-CIO-Timestamp is not a unix timestamp")]
    BadTimestamp,
    #[error("X-CIO-Timestamp is outside the accepted window")]
    Expired,
    #[error("X-CIO-Signature does not match the body with any configured key")]
    Mismatch,
}

/// Signs a body the way Customer.io does (tests, benchmarks, docs).
pub fn sign(key: &str, timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(key.as_bytes(), timestamp, body).finalize().into_bytes())
}

fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// Checks a request against every key (rotation), in constant time per key.
pub fn verify(
    keys: &[Secret],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_unix - ts).unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::Expired);
    }
    let expected = hex::decode(signature).map_err(|_| SignatureError::Mismatch)?;
    let matched = keys.iter().any(|k| {
        mac(k.expose().as_bytes(), timestamp, body)
            .verify_slice(&expected)
            .is_ok()
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from shared/reference/customerio-api.md §2.
    const BODY: &str = r#"{"event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"customer","metric":"subscribed","timestamp":1613063089,"data":{"customer_id":"42","email_address":"test@example.com","identifiers":{"id":"42","email":"test@example.com","cio_id":"d9c106000001"}}}"#;
    const EXPECTED: &str = "7b8c08093bc63041768ab4369f18e169638118cfbd417fa95c2ec461453c4a98";
    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn reference_test_vector() {
        assert_eq!(BODY.len(), 251);
        assert_eq!(
            sign("test_signing_key", "1613063089", BODY.as_bytes()),
            EXPECTED
        );
    }

    #[test]
    fn any_configured_key_verifies() {
        let keys = [Secret::new("old"), Secret::new("test_signing_key")];
        assert_eq!(
            verify(
                &keys,
                Some("1613063089"),
                Some(EXPECTED),
                BODY.as_bytes(),
                1613063089,
                DAY
            ),
            Ok(())
        );
    }

    #[test]
    fn a_changed_byte_fails() {
        let keys = [Secret::new("test_signing_key")];
        let body = BODY.replace("subscribed", "Subscribed");
        assert_eq!(
            verify(
                &keys,
                Some("1613063089"),
                Some(EXPECTED),
                body.as_bytes(),
                1613063089,
                DAY
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                &keys,
                Some("1613063090"),
                Some(EXPECTED),
                BODY.as_bytes(),
                1613063089,
                DAY
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_headers_and_stale_timestamps_are_refused() {
        let keys = [Secret::new("test_signing_key")];
        let b = BODY.as_bytes();
        assert_eq!(
            verify(&keys, Some("1"), None, b, 1, DAY),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify(&keys, None, Some(EXPECTED), b, 1, DAY),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify(&keys, Some("x"), Some(EXPECTED), b, 1, DAY),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(
                &keys,
                Some("1613063089"),
                Some(EXPECTED),
                b,
                1613063089 + 9 * 86400,
                8 * DAY
            ),
            Err(SignatureError::Expired)
        );
        // A retry seven days later is still accepted under the default window.
        assert_eq!(
            verify(
                &keys,
                Some("1613063089"),
                Some(EXPECTED),
                b,
                1613063089 + 7 * 86400,
                8 * DAY
            ),
            Ok(())
        );
    }
}
