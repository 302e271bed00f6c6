//! `[[destinations]] type = "google_customer_match"` (Data Manager API).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec, FieldType};
use crate::secret::Secret;

/// Data Manager's limit on audience members in one ingest/remove request.
pub const MAX_MEMBERS_PER_REQUEST: usize = 10_000;
/// Data Manager's limit on user identifiers of one audience member.
pub const MAX_IDENTIFIERS_PER_MEMBER: usize = 10;

/// Fields an attribute mapping (`map`) may feed: the address parts, and
/// the per-member consent overrides (true/false, "granted"/"denied" or the
/// CONSENT_* names; unmapped by default).
pub const FIELDS: &[FieldSpec] = &[
    field("given_name", Some("first_name")),
    field("family_name", Some("last_name")),
    field("region_code", Some("country")),
    field("postal_code", Some("zip")),
    field("ad_user_data", None),
    field("ad_personalization", None),
];

const fn field(name: &'static str, from: Option<&'static str>) -> FieldSpec {
    FieldSpec {
        name,
        kind: FieldType::String,
        default_from: from,
        required: false,
    }
}

/// Engine defaults: full requests, and 5 requests/s = the project's
/// 300/minute mutate quota.
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: MAX_MEMBERS_PER_REQUEST,
    concurrency: 2,
    requests_per_second: 5.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// OAuth 2.0 token endpoint (refresh-token grant).
    #[serde(default = "default_token_url")]
    pub token_url: String,
    pub client_id: Secret,
    pub client_secret: Secret,
    pub refresh_token: Secret,
    /// The Google Ads account that owns the Customer Match lists.
    pub operating_account: Account,
    /// The manager account the credentials act through, if any.
    #[serde(default)]
    pub login_account: Option<Account>,
    /// Which identifiers each member carries.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<GoogleKey>,
    /// Request-level consent sent with every ingest; omitted when unset.
    #[serde(default)]
    pub consent: Option<Consent>,
    // Per-member consent overrides come through the mapping fields
    // `ad_user_data` and `ad_personalization` (see FIELDS).
    /// Must be ACCEPTED for Customer Match ingests.
    pub customer_match_terms_of_service: TermsStatus,
    /// The Google Cloud project whose quota the credentials use.
    /// Destinations naming the same project share one limiter. Unset: the
    /// OAuth client identifies the project.
    #[serde(default)]
    pub project: Option<String>,
    /// The project's IngestionService mutate quota.
    #[serde(default = "default_project_rpm")]
    pub project_requests_per_minute: u32,
    /// Unset: a spent daily quota pauses until the next midnight in
    /// America/Los_Angeles (Google's quota day). Set: pauses this long.
    #[serde(default, with = "humantime_serde")]
    pub daily_quota_pause: Option<Duration>,
    /// How often recorded requestIds are checked.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub request_status_interval: Duration,
    /// Most requestIds waiting for a check (oldest dropped beyond).
    #[serde(default = "default_status_max")]
    pub request_status_max_tracked: usize,
    /// Refresh the access token this long before it expires.
    #[serde(default = "default_token_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    #[serde(default)]
    pub account_type: AccountType,
    /// Digits; dashes (`123-456-7890`) are dropped.
    pub account_id: String,
}

impl Account {
    pub fn id_digits(&self) -> String {
        self.account_id.chars().filter(|c| *c != '-').collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountType {
    #[default]
    GoogleAds,
    DisplayVideoPartner,
    DisplayVideoAdvertiser,
    DataPartner,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::GoogleAds => "GOOGLE_ADS",
            AccountType::DisplayVideoPartner => "DISPLAY_VIDEO_PARTNER",
            AccountType::DisplayVideoAdvertiser => "DISPLAY_VIDEO_ADVERTISER",
            AccountType::DataPartner => "DATA_PARTNER",
        }
    }
}

/// A user identifier kind. Declaration order is the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoogleKey {
    Email,
    Phone,
    /// givenName + familyName (hashed), regionCode + postalCode (clear):
    /// sent only when all four are known.
    Address,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub ad_user_data: ConsentStatus,
    pub ad_personalization: ConsentStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ConsentStatus {
    #[serde(rename = "CONSENT_GRANTED")]
    Granted,
    #[serde(rename = "CONSENT_DENIED")]
    Denied,
}

impl ConsentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Granted => "CONSENT_GRANTED",
            ConsentStatus::Denied => "CONSENT_DENIED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TermsStatus {
    Accepted,
    Rejected,
}

impl TermsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TermsStatus::Accepted => "ACCEPTED",
            TermsStatus::Rejected => "REJECTED",
        }
    }
}

impl GoogleConfig {
    /// A config with every default, for code and tests that build one.
    pub fn new(
        client_id: Secret,
        client_secret: Secret,
        refresh_token: Secret,
        operating_account_id: impl Into<String>,
    ) -> Self {
        GoogleConfig {
            base_url: default_base_url(),
            token_url: default_token_url(),
            client_id,
            client_secret,
            refresh_token,
            operating_account: Account {
                account_type: AccountType::GoogleAds,
                account_id: operating_account_id.into(),
            },
            login_account: None,
            identifiers: default_identifiers(),
            consent: None,
            customer_match_terms_of_service: TermsStatus::Accepted,
            project: None,
            project_requests_per_minute: default_project_rpm(),
            daily_quota_pause: None,
            request_status_interval: default_status_interval(),
            request_status_max_tracked: default_status_max(),
            token_refresh_margin: default_token_margin(),
        }
    }

    /// Problems serde cannot catch, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, url) in [("base_url", &self.base_url), ("token_url", &self.token_url)] {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
                _ => p.push(format!("{key}: not an http(s) URL: {url:?}")),
            }
        }
        for (key, s) in [
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
            ("refresh_token", &self.refresh_token),
        ] {
            if s.expose().trim().is_empty() {
                p.push(format!("{key}: must not be empty"));
            }
        }
        let digits = |a: &Account| {
            let id = a.id_digits();
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(&self.operating_account) {
            p.push("operating_account.account_id: expected digits (dashes allowed)".into());
        }
        if let Some(l) = &self.login_account {
            if !digits(l) {
                p.push("login_account.account_id: expected digits (dashes allowed)".into());
            }
        }
        if self.identifiers.is_empty() {
            p.push("identifiers: must list at least one of email, phone, address".into());
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.identifiers {
            if !seen.insert(k) {
                p.push(format!("identifiers: {k:?} listed twice"));
            }
        }
        if self.customer_match_terms_of_service != TermsStatus::Accepted {
            p.push(
                "customer_match_terms_of_service: Customer Match ingests need \"ACCEPTED\"".into(),
            );
        }
        if self.project.as_deref().is_some_and(|s| s.trim().is_empty()) {
            p.push("project: must not be empty".into());
        }
        if self.project_requests_per_minute == 0 {
            p.push("project_requests_per_minute: must be at least 1".into());
        }
        if self.daily_quota_pause.is_some_and(|d| d.is_zero()) {
            p.push("daily_quota_pause: must be greater than 0s".into());
        }
        if self.request_status_interval.is_zero() {
            p.push("request_status_interval: must be greater than 0s".into());
        }
        if self.request_status_max_tracked == 0 {
            p.push("request_status_max_tracked: must be at least 1".into());
        }
        p
    }
}

fn default_base_url() -> String {
    "https://datamanager.googleapis.com".into()
}
fn default_token_url() -> String {
    "https://oauth2.googleapis.com/token".into()
}
fn default_identifiers() -> Vec<GoogleKey> {
    vec![GoogleKey::Email, GoogleKey::Phone]
}
fn default_project_rpm() -> u32 {
    300
}
fn default_status_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_status_max() -> usize {
    1000
}
fn default_token_margin() -> Duration {
    Duration::from_secs(300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;
    use crate::destinations::Mapping;

    const MINIMAL: &str = r#"
        [[destinations]]
        name = "google"
        type = "google_customer_match"
        client_id = "cid"
        client_secret = "csecret"
        refresh_token = "rtok"
        operating_account = { account_id = "123-456-7890" }
        customer_match_terms_of_service = "ACCEPTED"
    "#;

    fn google(text: &str) -> Result<(GoogleConfig, DeliverySettings, Mapping), Vec<String>> {
        let entry = crate::config::parse_destination(text)?;
        let delivery = entry.delivery();
        let mapping = entry.mapping(&Default::default()).unwrap();
        match entry.platform {
            DestinationConfig::GoogleCustomerMatch(g) => Ok((g, delivery, mapping)),
            other => panic!("not a google destination: {}", other.type_name()),
        }
    }

    #[test]
    fn a_minimal_google_destination_takes_the_defaults() {
        let (g, l, _) = google(MINIMAL).unwrap();
        assert_eq!(g.base_url, "https://datamanager.googleapis.com");
        assert_eq!(g.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(g.operating_account.account_type, AccountType::GoogleAds);
        assert_eq!(g.operating_account.id_digits(), "1234567890");
        assert_eq!(g.identifiers, [GoogleKey::Email, GoogleKey::Phone]);
        assert_eq!(g.consent, None);
        assert_eq!(g.project_requests_per_minute, 300);
        assert_eq!(g.daily_quota_pause, None);
        assert_eq!(l.max_batch, 10_000);
        assert_eq!(l.concurrency, 2);
        assert_eq!(l.requests_per_second, 5.0);
        // Secrets never show in Debug.
        let debug = format!("{g:?}");
        assert!(
            !debug.contains("csecret") && !debug.contains("rtok"),
            "{debug}"
        );
    }

    #[test]
    fn a_full_google_destination_parses() {
        let (g, l, m) = google(&format!(
            "{MINIMAL}\n{}",
            r#"
            login_account = { account_type = "GOOGLE_ADS", account_id = "1112223333" }
            identifiers = ["email", "phone", "address"]
            map = { given_name = "fname", ad_personalization = "ads_ok" }
            consent = { ad_user_data = "CONSENT_GRANTED", ad_personalization = "CONSENT_DENIED" }
            project = "my-gcp-project"
            project_requests_per_minute = 100
            daily_quota_pause = "10m"
            request_status_interval = "5s"
            max_batch = 5000
            "#
        ))
        .unwrap();
        assert_eq!(g.login_account.unwrap().account_id, "1112223333");
        assert_eq!(
            g.consent,
            Some(Consent {
                ad_user_data: ConsentStatus::Granted,
                ad_personalization: ConsentStatus::Denied
            })
        );
        assert_eq!(
            m.fields().collect::<Vec<_>>(),
            [
                "ad_personalization",
                "family_name",
                "given_name",
                "postal_code",
                "region_code"
            ]
        );
        assert_eq!(g.daily_quota_pause, Some(Duration::from_secs(600)));
        assert_eq!(l.max_batch, 5000);
    }

    #[test]
    fn unknown_keys_and_values_are_rejected() {
        for (line, key) in [
            ("developer_token = \"x\"", "developer_token"),
            ("identifiers = [\"madid\"]", "madid"),
            ("map = { nickname = \"nick\" }", "nickname"),
            ("consent = { ad_user_data = \"GRANTED\", ad_personalization = \"CONSENT_GRANTED\" }", "GRANTED"),
        ] {
            let e = google(&format!("{MINIMAL}\n{line}")).unwrap_err();
            assert!(e.iter().any(|p| p.contains(key)), "{line}: {e:?}");
        }
    }

    #[test]
    fn semantic_problems_name_their_key() {
        let e = google(
            r#"
            [[destinations]]
            name = "google"
            type = "google_customer_match"
            base_url = "nope"
            client_id = ""
            client_secret = "s"
            refresh_token = "r"
            operating_account = { account_id = "12x" }
            customer_match_terms_of_service = "REJECTED"
            identifiers = ["email", "email"]
            project_requests_per_minute = 0
            max_batch = 10001
            "#,
        )
        .unwrap_err();
        for key in [
            "base_url",
            "client_id",
            "operating_account.account_id",
            "customer_match_terms_of_service",
            "identifiers",
            "project_requests_per_minute",
            "max_batch: must be between 1 and 10000",
        ] {
            let want = format!("destinations[0].{key}");
            assert!(e.iter().any(|p| p.starts_with(&want)), "{want}: {e:?}");
        }
    }
}
