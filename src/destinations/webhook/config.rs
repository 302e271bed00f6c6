//! `[[destinations]] type = "webhook"`: membership changes POSTed as
//! signed JSON to any URL (Standard Webhooks,
//! <https://www.standardwebhooks.com/>).

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec};
use crate::secret::Secret;

/// The most members koala allows in one webhook request.
pub const MAX_MEMBERS_LIMIT: usize = 10_000;

/// A webhook takes any mapped attribute (`takes_any_field`): no fields of
/// its own to declare.
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults: 1,000 members a request (a body of a few hundred KB),
/// 2 in flight, 10 requests/s — gentle on a receiver nobody has sized.
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 1000,
    concurrency: 2,
    requests_per_second: 10.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

/// The prefix of a Standard Webhooks secret; the rest is the base64 key.
pub const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where batches are POSTed. https unless `allow_http`.
    pub url: String,
    /// Lets `url` be plain http (local receivers, tests).
    #[serde(default)]
    pub allow_http: bool,
    /// `whsec_<base64 key>`; every one signs each request (several while
    /// the receiver rotates).
    pub secrets: Vec<Secret>,
    /// Sends members' email and phone too. Off by default: the receiver
    /// gets ids and mapped attributes only.
    #[serde(default)]
    pub include_pii: bool,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, secrets: Vec<Secret>) -> Self {
        WebhookConfig {
            url: url.into(),
            allow_http: false,
            secrets,
            include_pii: false,
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "https" && u.has_host() => {}
            Ok(u) if u.scheme() == "http" && u.has_host() => {
                if !self.allow_http {
                    p.push(
                        "url: must be https (set allow_http = true for a local receiver)".into(),
                    );
                }
            }
            _ => p.push("url: not an http(s) URL".into()),
        }
        if self.secrets.is_empty() {
            p.push("secrets: must list at least one \"whsec_…\" secret".into());
        }
        for (i, s) in self.secrets.iter().enumerate() {
            if let Err(e) = decode_secret(s) {
                p.push(format!("secrets[{i}]: {e}"));
            }
        }
        p
    }

    /// The HMAC keys, in the configured order.
    pub fn keys(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        self.secrets
            .iter()
            .enumerate()
            .map(|(i, s)| decode_secret(s).map_err(|e| anyhow::anyhow!("secrets[{i}]: {e}")))
            .collect()
    }
}

/// `whsec_<base64>` → the key bytes. Errors never repeat the secret.
pub fn decode_secret(s: &Secret) -> Result<Vec<u8>, String> {
    let raw = s.expose().trim();
    let Some(b64) = raw.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "must start with {SECRET_PREFIX:?} (a Standard Webhooks secret)"
        ));
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not valid base64"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; Standard Webhooks keys are 24 to 64 bytes",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    // base64 of the 33 bytes "koala-test-webhook-key-0123456789".
    pub const SECRET: &str = "whsec_a29hbGEtdGVzdC13ZWJob29rLWtleS0wMTIzNDU2Nzg5";

    fn webhook(text: &str) -> Result<(WebhookConfig, Vec<String>), Vec<String>> {
        let entry = crate::config::parse_destination(text)?;
        let problems = entry.problems();
        match entry.platform {
            DestinationConfig::Webhook(w) => Ok((w, problems)),
            other => panic!("not a webhook destination: {}", other.type_name()),
        }
    }

    #[test]
    fn a_minimal_webhook_takes_the_defaults() {
        let (w, p) = webhook(&format!(
            "[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"https://example.com/in\"\nsecrets = [\"{SECRET}\"]"
        ))
        .unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert!(!w.include_pii && !w.allow_http);
        assert_eq!(w.keys().unwrap()[0].len(), 33);
    }

    #[test]
    fn http_needs_allow_http_and_secrets_must_decode() {
        let cfg = WebhookConfig::new("http://127.0.0.1:9/in", vec![]);
        let p = cfg.problems();
        assert!(
            p.iter().any(|p| p.starts_with("url: must be https")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("secrets: must list")),
            "{p:?}"
        );
        let mut cfg = WebhookConfig::new(
            "http://127.0.0.1:9/in",
            vec![
                Secret::new("plain-secret"),
                Secret::new("whsec_!!!"),
                Secret::new("whsec_c2hvcnQ="),
            ],
        );
        cfg.allow_http = true;
        let p = cfg.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("secrets[0]: must start with"));
        assert!(p[1].starts_with("secrets[1]: the part after"));
        assert!(p[2].starts_with("secrets[2]: the key is 5 bytes"));
        assert!(!p
            .iter()
            .any(|p| p.contains("plain-secret") || p.contains("c2hvcnQ")));
        assert!(WebhookConfig::new("ftp://x", vec![]).problems()[0].starts_with("url: not"));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let cfg = WebhookConfig::new("https://example.com", vec![Secret::new(SECRET)]);
        assert!(!format!("{cfg:?}").contains("whsec_a29h"));
    }
}
