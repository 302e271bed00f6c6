//! PersonRecord → one Data Manager `AudienceMember`
//! (<https://developers.google.com/data-manager/api/reference/rest/v1/AudienceMember>).

use serde::Serialize;
use serde_json::Value;

use super::config::{ConsentStatus, GoogleKey, FIELDS, MAX_IDENTIFIERS_PER_MEMBER};
use crate::destinations::Mapping;
use crate::normalization::{google as norm, sha256_hex};
use crate::person::PersonRecord;

/// One audience member. Holds hashes: never log it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_data: UserData,
    /// Member-level consent, overriding the request's (ingest only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<MemberConsent>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    pub user_identifiers: Vec<UserIdentifier>,
}

/// Exactly one field per identifier (a proto oneof).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum UserIdentifier {
    EmailAddress(String),
    PhoneNumber(String),
    Address(Address),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub given_name: String,
    pub family_name: String,
    pub region_code: String,
    pub postal_code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberConsent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_user_data: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_personalization: Option<&'static str>,
}

/// Turns people into members. Address parts and consent overrides are
/// read through the sync target's [`Mapping`] (fields `given_name`,
/// `family_name`, `region_code`, `postal_code`, `ad_user_data`,
/// `ad_personalization`).
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The destination's name, for counting values that fail coercion.
    destination: String,
    keys: Vec<GoogleKey>,
    /// The mapping fields' defaults, for [`Encoder::can_address`], which
    /// the engine asks without a sync target.
    defaults: Mapping,
}

impl Encoder {
    pub fn new(destination: &str, identifiers: &[GoogleKey]) -> Self {
        let mut keys = identifiers.to_vec();
        keys.sort();
        keys.dedup();
        Encoder {
            destination: destination.to_owned(),
            keys,
            defaults: Mapping::resolve(FIELDS, false, &[]).expect("the default fields resolve"),
        }
    }

    /// True when the person has an email or phone, or (address
    /// configured) an address under the default mapping. A target mapping
    /// that differs is applied in [`Encoder::member`]; people it leaves
    /// without identifiers are counted invalid there.
    pub fn can_address(&self, p: &PersonRecord) -> bool {
        !self.identifiers(p, &self.defaults).is_empty()
    }

    /// The person's identifiers in a fixed order (at most 10, Google's
    /// limit per member).
    pub fn identifiers(&self, p: &PersonRecord, mapping: &Mapping) -> Vec<UserIdentifier> {
        let mut out = Vec::new();
        for k in &self.keys {
            let id = match k {
                GoogleKey::Email => p
                    .email
                    .as_deref()
                    .and_then(norm::email)
                    .map(|e| UserIdentifier::EmailAddress(sha256_hex(&e))),
                GoogleKey::Phone => p
                    .phone
                    .as_deref()
                    .and_then(norm::phone)
                    .map(|e| UserIdentifier::PhoneNumber(sha256_hex(&e))),
                GoogleKey::Address => self.address(p, mapping).map(UserIdentifier::Address),
            };
            out.extend(id);
        }
        out.truncate(MAX_IDENTIFIERS_PER_MEMBER);
        out
    }

    /// All four parts or nothing: Google matches an address only whole.
    fn address(&self, p: &PersonRecord, mapping: &Mapping) -> Option<Address> {
        let text = |field: &str| mapping.text(field, p, &self.destination);
        Some(Address {
            given_name: sha256_hex(&text("given_name").and_then(|v| norm::given_name(&v))?),
            family_name: sha256_hex(&text("family_name").and_then(|v| norm::family_name(&v))?),
            region_code: text("region_code").and_then(|v| norm::region_code(&v))?,
            postal_code: text("postal_code").and_then(|v| norm::postal_code(&v))?,
        })
    }

    /// The member, or None when the person has no usable identifier.
    /// `with_consent`: ingests carry member consent, removes do not.
    pub fn member(
        &self,
        p: &PersonRecord,
        mapping: &Mapping,
        with_consent: bool,
    ) -> Option<Member> {
        let ids = self.identifiers(p, mapping);
        if ids.is_empty() {
            return None;
        }
        let consent = if with_consent {
            self.member_consent(p, mapping)
        } else {
            None
        };
        Some(Member {
            user_data: UserData {
                user_identifiers: ids,
            },
            consent,
        })
    }

    fn member_consent(&self, p: &PersonRecord, mapping: &Mapping) -> Option<MemberConsent> {
        let read = |field: &str| {
            mapping
                .text(field, p, &self.destination)
                .and_then(|v| consent_value(&Value::String(v)))
                .map(ConsentStatus::as_str)
        };
        let c = MemberConsent {
            ad_user_data: read("ad_user_data"),
            ad_personalization: read("ad_personalization"),
        };
        (c.ad_user_data.is_some() || c.ad_personalization.is_some()).then_some(c)
    }
}

/// An attribute's consent: booleans, "granted"/"denied", "true"/"false",
/// "yes"/"no" or the CONSENT_* names, in any case. Anything else is no
/// override (the request-level consent applies).
pub fn consent_value(v: &Value) -> Option<ConsentStatus> {
    match v {
        Value::Bool(true) => Some(ConsentStatus::Granted),
        Value::Bool(false) => Some(ConsentStatus::Denied),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "granted" | "consent_granted" | "true" | "yes" => Some(ConsentStatus::Granted),
            "denied" | "consent_denied" | "false" | "no" => Some(ConsentStatus::Denied),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::mapping::FieldSource;
    use crate::destinations::MapConfig;
    use serde_json::json;

    fn person() -> PersonRecord {
        PersonRecord {
            person_id: 1,
            customer_id: Some("c1".into()),
            email: Some("Test@Example.com".into()),
            phone: Some("+15551234567".into()),
            attributes: json!({"first_name": "Ann", "last_name": "Lee Jr.", "country": "us", "zip": 94045, "ads": "denied"})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        }
    }

    fn encoder(keys: &[GoogleKey]) -> Encoder {
        Encoder::new("google", keys)
    }

    fn defaults() -> Mapping {
        Mapping::resolve(FIELDS, false, &[]).unwrap()
    }

    #[test]
    fn a_member_serializes_as_data_manager_wants() {
        let e = encoder(&[GoogleKey::Phone, GoogleKey::Email, GoogleKey::Address]);
        let m = e.member(&person(), &defaults(), true).unwrap();
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"userData": {"userIdentifiers": [
                {"emailAddress": "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"},
                {"phoneNumber": "8a59780bb8cd2ba022bfa5ba2ea3b6e07af17a7d8b30c1f9b3390e36f69019e4"},
                {"address": {"givenName": sha256_hex("ann"), "familyName": sha256_hex("lee"),
                             "regionCode": "US", "postalCode": "94045"}},
            ]}})
        );
    }

    #[test]
    fn an_address_needs_all_four_parts_and_cannot_be_alone_if_unset() {
        let e = encoder(&[GoogleKey::Address]);
        let mut p = person();
        assert!(e.can_address(&p));
        p.attributes.remove("zip");
        assert!(!e.can_address(&p));
        assert_eq!(e.member(&p, &defaults(), true), None);
    }

    #[test]
    fn member_consent_comes_from_attributes_and_never_on_removes() {
        let e = encoder(&[GoogleKey::Email]);
        let map: MapConfig = [(
            "ad_personalization".to_owned(),
            FieldSource::From("ads".into()),
        )]
        .into();
        let mapping = Mapping::resolve(FIELDS, false, &[&map]).unwrap();
        let m = e.member(&person(), &mapping, true).unwrap();
        assert_eq!(
            serde_json::to_value(m.consent).unwrap(),
            json!({"adPersonalization": "CONSENT_DENIED"})
        );
        assert_eq!(e.member(&person(), &mapping, false).unwrap().consent, None);
        assert_eq!(
            e.member(&person(), &defaults(), true).unwrap().consent,
            None
        );
        let mut p = person();
        p.attributes.insert("ads".into(), json!("maybe"));
        assert_eq!(e.member(&p, &mapping, true).unwrap().consent, None);
    }

    #[test]
    fn consent_values_are_read_tolerantly() {
        assert_eq!(consent_value(&json!(true)), Some(ConsentStatus::Granted));
        assert_eq!(
            consent_value(&json!("CONSENT_DENIED")),
            Some(ConsentStatus::Denied)
        );
        assert_eq!(
            consent_value(&json!(" Granted ")),
            Some(ConsentStatus::Granted)
        );
        assert_eq!(consent_value(&json!(1)), None);
    }
}
