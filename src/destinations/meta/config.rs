//! `[[destinations]] type = "meta_custom_audiences"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec, FieldType};
use crate::secret::Secret;

/// Meta's hard limit on rows in one `/users` request.
pub const MAX_ROWS_PER_REQUEST: usize = 10_000;

/// Engine settings unless the table overrides them: full 10,000-row
/// batches, two requests in flight, 5 requests/s (a conservative share of
/// an ad account's quota).
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: MAX_ROWS_PER_REQUEST,
    concurrency: 2,
    requests_per_second: 5.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};

/// The platform keys of a `type = "meta_custom_audiences"` table (the
/// engine keys every destination shares are in [`DeliverySettings`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    pub access_token: Secret,
    /// Needed only to create audiences; `act_` prefix optional.
    #[serde(default)]
    pub ad_account_id: Option<String>,
    /// Which keys each row carries; sent in a fixed order (see [`MetaKey`]).
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<MetaKey>,
    #[serde(default)]
    pub customer_file_source: CustomerFileSource,
}

/// A multi-key schema column. Declaration order is the order columns are
/// sent in, whatever order the config lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum MetaKey {
    #[serde(rename = "extern_id")]
    ExternId,
    #[serde(rename = "email")]
    Email,
    #[serde(rename = "phone")]
    Phone,
    #[serde(rename = "fn")]
    FirstName,
    #[serde(rename = "ln")]
    LastName,
    #[serde(rename = "ct")]
    City,
    #[serde(rename = "st")]
    State,
    #[serde(rename = "zip")]
    Zip,
    #[serde(rename = "country")]
    Country,
    #[serde(rename = "gen")]
    Gender,
    #[serde(rename = "doby")]
    BirthYear,
    #[serde(rename = "dobm")]
    BirthMonth,
    #[serde(rename = "dobd")]
    BirthDay,
}

impl MetaKey {
    /// The column name in `payload.schema`.
    pub fn schema_name(self) -> &'static str {
        match self {
            MetaKey::ExternId => "EXTERN_ID",
            MetaKey::Email => "EMAIL",
            MetaKey::Phone => "PHONE",
            MetaKey::FirstName => "FN",
            MetaKey::LastName => "LN",
            MetaKey::City => "CT",
            MetaKey::State => "ST",
            MetaKey::Zip => "ZIP",
            MetaKey::Country => "COUNTRY",
            MetaKey::Gender => "GEN",
            MetaKey::BirthYear => "DOBY",
            MetaKey::BirthMonth => "DOBM",
            MetaKey::BirthDay => "DOBD",
        }
    }

    /// Keys that can match a person on their own; the others only refine.
    pub fn matches_alone(self) -> bool {
        matches!(self, MetaKey::ExternId | MetaKey::Email | MetaKey::Phone)
    }

    /// Everything but EXTERN_ID is sent as SHA-256.
    pub fn is_hashed(self) -> bool {
        self != MetaKey::ExternId
    }
}

/// The fields a mapping can feed: names, address and birth date, each
/// from the attribute of the same meaning by default. `dob` (a date, or
/// Unix seconds) feeds DOBY, DOBM and DOBD. Which of them are sent is
/// `identifiers`.
pub const FIELDS: &[FieldSpec] = &[
    field("fn", "first_name"),
    field("ln", "last_name"),
    field("ct", "city"),
    field("st", "state"),
    field("zip", "zip"),
    field("country", "country"),
    field("gen", "gender"),
    field("dob", "date_of_birth"),
];

const fn field(name: &'static str, from: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        kind: FieldType::String,
        default_from: Some(from),
        required: false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerFileSource {
    #[default]
    UserProvidedOnly,
    PartnerProvidedOnly,
    BothUserAndPartnerProvided,
}

impl CustomerFileSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerFileSource::UserProvidedOnly => "USER_PROVIDED_ONLY",
            CustomerFileSource::PartnerProvidedOnly => "PARTNER_PROVIDED_ONLY",
            CustomerFileSource::BothUserAndPartnerProvided => "BOTH_USER_AND_PARTNER_PROVIDED",
        }
    }
}

impl MetaConfig {
    /// A config with every default, for code and tests that build one.
    pub fn new(access_token: Secret) -> Self {
        MetaConfig {
            base_url: default_base_url(),
            api_version: default_api_version(),
            access_token,
            ad_account_id: None,
            identifiers: default_identifiers(),
            customer_file_source: CustomerFileSource::default(),
        }
    }

    /// The ad account id without its `act_` prefix.
    pub fn ad_account_number(&self) -> Option<&str> {
        let id = self.ad_account_id.as_deref()?.trim();
        Some(id.strip_prefix("act_").unwrap_or(id))
    }

    /// Problems serde cannot catch, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base() => {}
            _ => p.push(format!("base_url: not an http(s) URL: {:?}", self.base_url)),
        }
        if !is_api_version(&self.api_version) {
            p.push(format!(
                "api_version: expected vNN.N (like \"v25.0\"), got {:?}",
                self.api_version
            ));
        }
        if self.access_token.expose().trim().is_empty() {
            p.push("access_token: must not be empty".into());
        }
        if let Some(id) = self.ad_account_number() {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                p.push("ad_account_id: expected digits, optionally prefixed act_".into());
            }
        }
        if self.identifiers.is_empty() {
            p.push("identifiers: must list at least one key".into());
        } else if !self.identifiers.iter().any(|k| k.matches_alone()) {
            p.push(
                "identifiers: needs extern_id, email or phone; the other keys cannot match alone"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.identifiers {
            if !seen.insert(k) {
                p.push(format!("identifiers: {:?} listed twice", k.schema_name()));
            }
        }
        p
    }
}

/// `v` digits `.` digits.
fn is_api_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

fn default_base_url() -> String {
    "https://graph.facebook.com".into()
}
fn default_api_version() -> String {
    "v25.0".into()
}
fn default_identifiers() -> Vec<MetaKey> {
    vec![MetaKey::ExternId, MetaKey::Email, MetaKey::Phone]
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;
    use crate::destinations::Mapping;

    /// The platform config and the resolved engine settings of the
    /// one destination in `text`.
    fn meta(text: &str) -> Result<(MetaConfig, DeliverySettings, Mapping), Vec<String>> {
        let entry = crate::config::parse_destination(text)?;
        let delivery = entry.delivery();
        let mapping = entry.mapping(&Default::default()).unwrap();
        match entry.platform {
            DestinationConfig::MetaCustomAudiences(m) => Ok((m, delivery, mapping)),
            other => panic!("not a meta destination: {}", other.type_name()),
        }
    }

    #[test]
    fn a_minimal_meta_destination_takes_the_defaults() {
        let m = meta(
            r#"
            [[destinations]]
            name = "meta"
            type = "meta_custom_audiences"
            access_token = "tok"
            "#,
        )
        .unwrap();
        let (m, d, map) = m;
        assert_eq!(m.base_url, "https://graph.facebook.com");
        assert_eq!(m.api_version, "v25.0");
        assert_eq!(
            m.identifiers,
            [MetaKey::ExternId, MetaKey::Email, MetaKey::Phone]
        );
        assert_eq!(
            map.fields().collect::<Vec<_>>(),
            ["country", "ct", "dob", "fn", "gen", "ln", "st", "zip"]
        );
        assert_eq!(d.max_batch, 10_000);
        assert_eq!(d.concurrency, 2);
        assert_eq!(d.requests_per_second, 5.0);
        assert_eq!(d.min_linger, Duration::ZERO);
        assert_eq!(d.request_timeout, Duration::from_secs(30));
        assert_eq!(d.base_backoff, Duration::from_secs(1));
        assert_eq!(d.max_backoff, Duration::from_secs(300));
        assert_eq!(m.customer_file_source, CustomerFileSource::UserProvidedOnly);
        assert_eq!(m.ad_account_number(), None);
    }

    #[test]
    fn a_full_meta_destination_parses() {
        std::env::set_var("KOALA_TEST_META_TOKEN", "EAAB-secret");
        let m = meta(
            r#"
            [[destinations]]
            name = "meta"
            type = "meta_custom_audiences"
            base_url = "http://127.0.0.1:9999"
            api_version = "v24.0"
            access_token = "${KOALA_TEST_META_TOKEN}"
            ad_account_id = "act_1234567890"
            identifiers = ["email", "extern_id", "phone", "fn", "ln", "ct", "st", "zip", "country", "gen", "doby", "dobm", "dobd"]
            map = { fn = "firstName", dob = "birthday", ct = "" }
            max_batch = 500
            concurrency = 4
            requests_per_second = 2
            min_linger = "5s"
            request_timeout = "10s"
            base_backoff = "2s"
            max_backoff = "10m"
            customer_file_source = "BOTH_USER_AND_PARTNER_PROVIDED"
            "#,
        )
        .unwrap();
        let (m, d, map) = m;
        assert_eq!(m.access_token.expose(), "EAAB-secret");
        assert_eq!(m.ad_account_number(), Some("1234567890"));
        assert_eq!(m.identifiers.len(), 13);
        let p = crate::person::PersonRecord {
            attributes: serde_json::json!({"firstName": "Ann", "birthday": "1990-01-02", "last_name": "Lee", "city": "Oslo"})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        assert_eq!(map.text("fn", &p, "meta").as_deref(), Some("Ann"));
        assert_eq!(map.text("dob", &p, "meta").as_deref(), Some("1990-01-02"));
        assert_eq!(map.text("ln", &p, "meta").as_deref(), Some("Lee"));
        assert_eq!(map.text("ct", &p, "meta"), None);
        assert_eq!(d.max_batch, 500);
        assert_eq!(d.requests_per_second, 2.0);
        assert_eq!(d.min_linger, Duration::from_secs(5));
        assert_eq!(d.max_backoff, Duration::from_secs(600));
        assert_eq!(
            m.customer_file_source,
            CustomerFileSource::BothUserAndPartnerProvided
        );
    }

    #[test]
    fn unknown_keys_and_values_are_rejected() {
        for (line, key) in [
            ("acces_token2 = \"x\"", "acces_token2"),
            ("map = { nickname = \"nick\" }", "nickname"),
            ("identifiers = [\"madid\"]", "madid"),
            ("customer_file_source = \"ANY\"", "ANY"),
        ] {
            let e = meta(&format!(
                "[[destinations]]\nname = \"meta\"\ntype = \"meta_custom_audiences\"\n\
                 access_token = \"t\"\n{line}"
            ))
            .unwrap_err();
            assert!(e.iter().any(|p| p.contains(key)), "{line}: {e:?}");
        }
    }

    #[test]
    fn semantic_problems_name_their_key_under_the_destination() {
        let e = meta(
            r#"
            [[destinations]]
            name = "meta"
            type = "meta_custom_audiences"
            access_token = ""
            base_url = "not a url"
            api_version = "25"
            ad_account_id = "act_12x"
            identifiers = ["fn", "ln", "fn"]
            max_batch = 10001
            concurrency = 0
            requests_per_second = 0
            request_timeout = "0s"
            base_backoff = "10s"
            max_backoff = "1s"
            "#,
        )
        .unwrap_err();
        for key in [
            "access_token",
            "base_url",
            "api_version",
            "ad_account_id",
            "identifiers: needs",
            "identifiers: \"FN\" listed twice",
            "max_batch: must be between 1 and 10000",
            "concurrency",
            "requests_per_second",
            "request_timeout",
            "max_backoff",
        ] {
            let want = format!("destinations[0].{key}");
            assert!(e.iter().any(|p| p.starts_with(&want)), "{want}: {e:?}");
        }
    }

    #[test]
    fn extern_id_alone_is_allowed() {
        let mut c = MetaConfig::new(Secret::new("t"));
        c.identifiers = vec![MetaKey::ExternId];
        c.ad_account_id = Some("1234".into());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.ad_account_number(), Some("1234"));
    }

    #[test]
    fn identifiers_keep_the_fixed_order() {
        let mut keys = vec![MetaKey::Phone, MetaKey::FirstName, MetaKey::ExternId];
        keys.sort();
        assert_eq!(
            keys,
            [MetaKey::ExternId, MetaKey::Phone, MetaKey::FirstName]
        );
    }
}
