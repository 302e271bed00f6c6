//! The body of the "Send webhook" action in koala's segment campaigns.
//! Customer.io has no segment-change webhook, so koala defines this one;
//! the README gives the Liquid template that renders it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::refusal::{self, PayloadError, RefusalReason};
use crate::identity::{IdentifierError, Identifiers, PhoneRules};

/// Entered or exited a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentAction {
    Entered,
    Exited,
}

impl SegmentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentAction::Entered => "entered",
            SegmentAction::Exited => "exited",
        }
    }
    pub fn is_member(self) -> bool {
        self == SegmentAction::Entered
    }
}

#[derive(Debug, Deserialize)]
struct RawSegmentWebhook {
    segment_id: SegmentId,
    action: SegmentAction,
    #[serde(deserialize_with = "super::deserialize_event_time")]
    occurred_at: i64,
    #[serde(default)]
    identifiers: RawIdentifiers,
    #[serde(default)]
    attributes: Map<String, Value>,
    #[serde(default)]
    campaign_id: Option<Value>,
}

/// Liquid renders numbers into JSON as numbers or, quoted, as strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SegmentId {
    Number(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawIdentifiers {
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub cio_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub phone: Option<String>,
}

impl RawIdentifiers {
    /// Validated identifiers; an unusable email or phone is recorded, not
    /// refused. `field` is where the identifiers sit in the body.
    pub(crate) fn validate(
        &self,
        rules: &PhoneRules,
        field: &str,
    ) -> Result<Identifiers, PayloadError> {
        Identifiers::parse(
            self.id.as_deref(),
            self.cio_id.as_deref(),
            self.email.as_deref(),
            self.phone.as_deref(),
            rules,
        )
        .map_err(|IdentifierError::Missing| {
            PayloadError::new(
                RefusalReason::NoIdentifier,
                field,
                "no usable identifier; give at least one of id, cio_id, email, phone",
            )
        })
    }
}

/// Ids rendered by Liquid may arrive as numbers; null counts as absent.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            // The value itself is not repeated: it may be personal data.
            return Err(serde::de::Error::custom("expected a string or number"));
        }
    })
}

/// A validated segment membership change.
#[derive(Debug, Clone)]
pub struct SegmentEvent {
    pub segment_id: i64,
    pub action: SegmentAction,
    pub occurred_at_ms: i64,
    pub identifiers: Identifiers,
    /// Attributes chosen in the template; blank values are dropped.
    pub attributes: Map<String, Value>,
    pub campaign_id: Option<String>,
}

impl SegmentEvent {
    /// The key under which a repeated delivery is recognised.
    pub fn dedupe_key(&self) -> String {
        format!(
            "segment:{}:{}:{}:{}",
            self.segment_id,
            self.identifiers.dedupe_key(),
            self.action.as_str(),
            self.occurred_at_ms
        )
    }
}

pub fn parse(body: &[u8], rules: &PhoneRules) -> Result<SegmentEvent, PayloadError> {
    let body = super::escape_control_characters(body);
    let raw: RawSegmentWebhook = refusal::from_json("segment webhook", &body)?;
    let bad_id = || PayloadError::new(RefusalReason::BadValue, "segment_id", "not a segment id");
    let segment_id = match raw.segment_id {
        SegmentId::Number(n) => i64::try_from(n).map_err(|_| bad_id())?,
        SegmentId::Text(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(bad_id)?,
    };
    let identifiers = raw.identifiers.validate(rules, "identifiers")?;
    let attributes = raw
        .attributes
        .into_iter()
        .filter(|(_, v)| !matches!(v, Value::Null) && v.as_str().is_none_or(|s| !s.is_empty()))
        .collect();
    let campaign_id = match raw.campaign_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => Some(v.to_string()),
    };
    Ok(SegmentEvent {
        segment_id,
        action: raw.action,
        occurred_at_ms: raw.occurred_at,
        identifiers,
        attributes,
        campaign_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_template_parses() {
        let body = br#"{"segment_id":42,"action":"entered","occurred_at":1700000000,
            "identifiers":{"id":"u1","cio_id":"","email":"A@Example.com","phone":""},
            "attributes":{"first_name":"Ann","plan":""},"campaign_id":7}"#;
        let e = parse(body, &PhoneRules::default()).unwrap();
        assert_eq!(e.segment_id, 42);
        assert_eq!(e.action, SegmentAction::Entered);
        assert_eq!(e.occurred_at_ms, 1_700_000_000_000);
        assert_eq!(e.identifiers.id.as_deref(), Some("u1"));
        assert_eq!(e.identifiers.cio_id, None);
        assert_eq!(
            e.identifiers.email.as_ref().unwrap().as_str(),
            "a@example.com"
        );
        assert_eq!(e.attributes.len(), 1);
        assert_eq!(e.campaign_id.as_deref(), Some("7"));
    }

    #[test]
    fn quoted_segment_ids_and_numeric_customer_ids_are_accepted() {
        let e = parse(br#"{"segment_id":"42","action":"exited","occurred_at":"1700000000","identifiers":{"id":123}}"#, &PhoneRules::default()).unwrap();
        assert_eq!(e.segment_id, 42);
        assert_eq!(e.identifiers.id.as_deref(), Some("123"));
    }

    #[test]
    fn malformed_and_unusable_bodies_are_told_apart() {
        let p = |b: &[u8]| parse(b, &PhoneRules::default());
        let e = p(b"not json").unwrap_err();
        assert_eq!(e.reason, RefusalReason::MalformedJson);
        let e = p(br#"{"segment_id":42,"action":"joined","occurred_at":1700000000,"identifiers":{"id":"1"}}"#).unwrap_err();
        assert_eq!(e.reason, RefusalReason::WrongShape);
        assert_eq!(e.field.as_deref(), Some("action"));
        assert!(e.message.contains("entered"), "{}", e.message);
        let e = p(br#"{"segment_id":42,"action":"entered","occurred_at":1700000000,"identifiers":{"id":""}}"#).unwrap_err();
        assert_eq!(e.reason, RefusalReason::NoIdentifier);
        assert!(e.message.contains("no usable identifier"), "{}", e.message);
        let e = p(br#"{"segment_id":"x","action":"entered","occurred_at":1700000000,"identifiers":{"id":"1"}}"#).unwrap_err();
        assert_eq!(e.reason, RefusalReason::BadValue);
        assert_eq!(e.field.as_deref(), Some("segment_id"));
    }

    #[test]
    fn an_unusable_email_or_phone_does_not_refuse_the_person() {
        let e = parse(br#"{"segment_id":42,"action":"entered","occurred_at":1700000000,"identifiers":{"id":"1","email":"nope","phone":"5551234567"}}"#, &PhoneRules::default()).unwrap();
        assert_eq!(e.identifiers.id.as_deref(), Some("1"));
        assert_eq!(e.identifiers.unusable.len(), 2);
    }

    #[test]
    fn raw_control_characters_inside_strings_are_tolerated() {
        // Liquid renders a name's tab or newline as it is; JSON wants it escaped.
        let e = parse(b"{\"segment_id\":42,\"action\":\"entered\",\"occurred_at\":1700000000,\"identifiers\":{\"id\":\"1\"},\"attributes\":{\"first_name\":\"Ann\tMarie\nX\"}}", &PhoneRules::default()).unwrap();
        assert_eq!(e.attributes["first_name"], "Ann\tMarie\nX");
    }

    #[test]
    fn a_bad_time_names_the_field_without_its_value() {
        let e = parse(br#"{"segment_id":42,"action":"entered","occurred_at":"ann@example.com","identifiers":{"id":"1"}}"#, &PhoneRules::default()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("occurred_at"));
        assert!(!e.message.contains("ann@"), "{}", e.message);
    }
}
