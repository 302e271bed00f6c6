//! Standard Webhooks signing (<https://www.standardwebhooks.com/>):
//! `webhook-signature` is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! one space-separated entry per key, so a receiver rotating its secret
//! verifies with either.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

/// A signed POST ready to send. `body` may hold mapped attributes (and
/// email/phone with `include_pii`): never log it.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: Url,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Vec<u8>,
}

/// One `v1,…` entry for `key`.
pub fn sign_v1(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-signature` header: every key's entry, space-separated.
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign_v1(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn build(
    url: &Url,
    keys: &[Vec<u8>],
    id: String,
    timestamp: i64,
    body: Vec<u8>,
) -> WebhookRequest {
    let signature = signature_header(keys, &id, timestamp, &body);
    WebhookRequest {
        url: url.clone(),
        id,
        timestamp,
        signature,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its
    /// reference libraries: secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`,
    /// id `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp 1614265330, body
    /// `{"test": 2432232314}`.
    #[test]
    fn the_specification_example_signs_as_published() {
        let key = crate::destinations::webhook::config::decode_secret(&crate::secret::Secret::new(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap();
        assert_eq!(
            sign_v1(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_key_adds_an_entry() {
        let h = signature_header(&[vec![1; 24], vec![2; 24]], "msg_x", 1, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
