//! `[[destinations]] type = "tiktok_audiences"` (TikTok API for Business,
//! audience segment API).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec};
use crate::normalization::tiktok::PhoneFormat;
use crate::secret::Secret;

/// The most rows koala allows in one `/segment/mapping/` request.
/// TikTok's own limit is UNCONFIRMED; see `max_batch`.
pub const MAX_ROWS_LIMIT: usize = 10_000;

/// TikTok's audience segment API takes hashed ids only: no attribute
/// fields to map.
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults. TikTok's batch limit and rate are UNCONFIRMED:
/// 1,000 rows and 5 requests/s are cautious guesses, both overridable.
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 1000,
    concurrency: 2,
    requests_per_second: 5.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TiktokConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Sent as `Access-Token: <token>` (no `Bearer`).
    pub access_token: Secret,
    pub advertiser_id: String,
    /// Which identifiers each row carries, in this fixed order: email,
    /// phone (`EMAIL_SHA256`, `PHONE_SHA256`).
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<TiktokKey>,
    /// UNCONFIRMED: TikTok's help pages disagree.
    #[serde(default)]
    pub phone_format: PhoneFormat,
    /// The mapping `action` that removes. UNCONFIRMED: only `add` is in
    /// the material read; `delete` is what third-party integrations send.
    #[serde(default = "default_remove_action")]
    pub remove_action: String,
    /// Body `code`s that mean "throttled, try later" (UNCONFIRMED table).
    /// Codes 50000–59999 (TikTok's system errors) are always retried.
    #[serde(default = "default_retry_codes")]
    pub retry_codes: Vec<i64>,
    /// Body `code`s that mean the token or its permissions are wrong.
    #[serde(default = "default_auth_codes")]
    pub auth_codes: Vec<i64>,
}

/// Declaration order is the `id_schema` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TiktokKey {
    Email,
    Phone,
}

impl TiktokKey {
    pub fn id_type(self) -> &'static str {
        match self {
            TiktokKey::Email => "EMAIL_SHA256",
            TiktokKey::Phone => "PHONE_SHA256",
        }
    }
}

impl TiktokConfig {
    pub fn new(access_token: Secret, advertiser_id: impl Into<String>) -> Self {
        TiktokConfig {
            base_url: default_base_url(),
            access_token,
            advertiser_id: advertiser_id.into(),
            identifiers: default_identifiers(),
            phone_format: PhoneFormat::default(),
            remove_action: default_remove_action(),
            retry_codes: default_retry_codes(),
            auth_codes: default_auth_codes(),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
            _ => p.push(format!("base_url: not an http(s) URL: {:?}", self.base_url)),
        }
        if self.access_token.expose().trim().is_empty() {
            p.push("access_token: must not be empty".into());
        }
        if self.access_token.expose().starts_with("Bearer ") {
            p.push("access_token: give the bare token; TikTok's Access-Token header takes no \"Bearer \"".into());
        }
        let adv = self.advertiser_id.trim();
        if adv.is_empty() || !adv.bytes().all(|b| b.is_ascii_digit()) {
            p.push("advertiser_id: expected digits".into());
        }
        if self.identifiers.is_empty() {
            p.push("identifiers: must list email, phone or both".into());
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.identifiers {
            if !seen.insert(k) {
                p.push(format!("identifiers: {k:?} listed twice"));
            }
        }
        if self.remove_action.trim().is_empty() || self.remove_action == "add" {
            p.push("remove_action: must be a non-empty action other than \"add\"".into());
        }
        p
    }
}

fn default_base_url() -> String {
    "https://business-api.tiktok.com/open_api/v1.3".into()
}
fn default_identifiers() -> Vec<TiktokKey> {
    vec![TiktokKey::Email, TiktokKey::Phone]
}
fn default_remove_action() -> String {
    "delete".into()
}
fn default_retry_codes() -> Vec<i64> {
    vec![40100]
}
fn default_auth_codes() -> Vec<i64> {
    vec![40001, 40105]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    fn tiktok(text: &str) -> Result<(TiktokConfig, DeliverySettings), Vec<String>> {
        let entry = crate::config::parse_destination(text)?;
        let delivery = entry.delivery();
        match entry.platform {
            DestinationConfig::TiktokAudiences(t) => Ok((t, delivery)),
            other => panic!("not a tiktok destination: {}", other.type_name()),
        }
    }

    #[test]
    fn a_minimal_tiktok_destination_takes_the_defaults() {
        let (t, l) = tiktok(
            "[[destinations]]\nname = \"tt\"\ntype = \"tiktok_audiences\"\naccess_token = \"tok\"\nadvertiser_id = \"7001\"",
        )
        .unwrap();
        assert_eq!(t.base_url, "https://business-api.tiktok.com/open_api/v1.3");
        assert_eq!(t.identifiers, [TiktokKey::Email, TiktokKey::Phone]);
        assert_eq!(t.phone_format, PhoneFormat::E164);
        assert_eq!(t.remove_action, "delete");
        assert_eq!(t.retry_codes, [40100]);
        assert_eq!(t.auth_codes, [40001, 40105]);
        assert_eq!(l.max_batch, 1000);
        assert!(!format!("{t:?}").contains("tok\""));
    }

    #[test]
    fn settings_parse_and_problems_name_their_key() {
        let (t, l) = tiktok(
            "[[destinations]]\nname = \"tt\"\ntype = \"tiktok_audiences\"\naccess_token = \"tok\"\nadvertiser_id = \"7001\"\n\
             phone_format = \"digits\"\nremove_action = \"remove\"\nretry_codes = [40100, 40016]\nmax_batch = 500",
        )
        .unwrap();
        assert_eq!(t.phone_format, PhoneFormat::Digits);
        assert_eq!(t.remove_action, "remove");
        assert_eq!(l.max_batch, 500);
        let e = tiktok(
            "[[destinations]]\nname = \"tt\"\ntype = \"tiktok_audiences\"\naccess_token = \"Bearer x\"\nadvertiser_id = \"adv\"\n\
             remove_action = \"add\"\nmax_batch = 0\nidentifiers = []",
        )
        .unwrap_err();
        for key in [
            "access_token",
            "advertiser_id",
            "remove_action",
            "max_batch",
            "identifiers",
        ] {
            let want = format!("destinations[0].{key}");
            assert!(e.iter().any(|p| p.starts_with(&want)), "{want}: {e:?}");
        }
        let e = tiktok(
            "[[destinations]]\nname = \"tt\"\ntype = \"tiktok_audiences\"\naccess_token = \"t\"\nadvertiser_id = \"1\"\nphone_format = \"plus\"",
        )
        .unwrap_err();
        assert!(e.iter().any(|p| p.contains("plus")), "{e:?}");
    }
}
