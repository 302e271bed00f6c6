//! `[[destinations]] type = "segment"`: membership changes as Segment
//! Engage-style `track` + `identify` events through the HTTP Tracking API's
//! `/v1/batch` (<https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/>).
//! Segment EU, a RudderStack data plane or Jitsu by `base_url` and `auth`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec};
use crate::secret::Secret;

/// The most people koala allows in one `send` (it splits them into
/// requests that fit Segment's limits itself).
pub const MAX_MEMBERS_LIMIT: usize = 10_000;

/// Segment's limits, kept in decimal so they hold whichever KB is meant:
/// an event ≤ 32 KB, a batch request ≤ 500 KB and ≤ 2,500 events.
pub const MAX_EVENT_BYTES: usize = 32_000;
pub const MAX_REQUEST_BYTES: usize = 500_000;
pub const MAX_REQUEST_EVENTS: usize = 2_500;

/// Segment takes any trait or property (`takes_any_field`).
pub const FIELDS: &[FieldSpec] = &[];

pub const DEFAULT_BASE_URL: &str = "https://api.segment.io";

/// Engine defaults: 1,250 people a batch (two events each: 2,500 events,
/// Segment's most per request), 2 in flight, 10 requests/s (Segment allows
/// about 1,000 requests/s per workspace; this leaves room for other sources).
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 1250,
    concurrency: 2,
    requests_per_second: 10.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

/// How the write key travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Basic base64("{write_key}:")` (Segment, RudderStack).
    #[default]
    Basic,
    /// `X-Write-Key: {write_key}` (Jitsu).
    XWriteKey,
}

/// Which Customer.io identifier becomes Segment's `userId`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserId {
    /// The Customer.io id (`id`).
    #[default]
    Id,
    /// Customer.io's own `cio_id`.
    CioId,
}

impl UserId {
    pub fn as_str(self) -> &'static str {
        match self {
            UserId::Id => "id",
            UserId::CioId => "cio_id",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// `https://api.segment.io` unless set (Segment EU, RudderStack, Jitsu).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Lets `base_url` be plain http (local data planes, tests).
    #[serde(default)]
    pub allow_http: bool,
    /// The source's write key.
    pub write_key: Secret,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub user_id: UserId,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}

impl SegmentConfig {
    pub fn new(base_url: impl Into<String>, write_key: Secret) -> Self {
        SegmentConfig {
            base_url: base_url.into(),
            allow_http: false,
            write_key,
            auth: Auth::Basic,
            user_id: UserId::Id,
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.base_url) {
            Ok(u) if u.scheme() == "https" && u.has_host() => {}
            Ok(u) if u.scheme() == "http" && u.has_host() => {
                if !self.allow_http {
                    p.push(
                        "base_url: must be https (set allow_http = true for a local data plane)"
                            .into(),
                    );
                }
            }
            _ => p.push("base_url: not an http(s) URL".into()),
        }
        if self.write_key.expose().trim().is_empty() {
            p.push("write_key: must not be empty".into());
        }
        p
    }

    /// `{base_url}/v1/batch` (a path in `base_url` is kept).
    pub fn batch_url(&self) -> anyhow::Result<url::Url> {
        let base = self.base_url.trim_end_matches('/');
        url::Url::parse(&format!("{base}/v1/batch"))
            .map_err(|_| anyhow::anyhow!("base_url: not a URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    fn segment(text: &str) -> (SegmentConfig, Vec<String>) {
        let entry = crate::config::parse_destination(text).unwrap();
        let problems = entry.problems();
        match entry.platform {
            DestinationConfig::Segment(s) => (s, problems),
            other => panic!("not a segment destination: {}", other.type_name()),
        }
    }

    #[test]
    fn a_minimal_segment_takes_the_defaults() {
        let (s, p) = segment(
            "[[destinations]]\nname = \"seg\"\ntype = \"segment\"\nwrite_key = \"wk_secret_1\"",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert_eq!((s.auth, s.user_id), (Auth::Basic, UserId::Id));
        assert_eq!(
            s.batch_url().unwrap().as_str(),
            "https://api.segment.io/v1/batch"
        );
        assert!(!format!("{s:?}").contains("wk_secret_1"));
    }

    #[test]
    fn jitsu_and_cio_id_and_bad_keys() {
        let (s, p) = segment(
            "[[destinations]]\nname = \"j\"\ntype = \"segment\"\nwrite_key = \"k\"\nbase_url = \"https://jitsu.example.com/\"\nauth = \"x_write_key\"\nuser_id = \"cio_id\"",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!((s.auth, s.user_id), (Auth::XWriteKey, UserId::CioId));
        assert_eq!(
            s.batch_url().unwrap().as_str(),
            "https://jitsu.example.com/v1/batch"
        );
        let p = SegmentConfig::new("http://127.0.0.1:9", Secret::new(" ")).problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("base_url: must be https"));
        assert!(p[1].starts_with("write_key: must not be empty"));
        assert!(crate::config::parse_destination(
            "[[destinations]]\nname = \"s\"\ntype = \"segment\"\nwrite_key = \"k\"\nauth = \"bearer\""
        )
        .is_err());
    }
}
