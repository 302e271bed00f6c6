//! Customer.io reporting webhooks: the `event_id, object_type, metric,
//! timestamp, data.identifiers` envelope. Unknown object types and metrics
//! are accepted: Customer.io adds them over time.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::refusal::{self, PayloadError, RefusalReason};
use super::segment::RawIdentifiers;
use crate::identity::{Identifiers, PhoneRules};

#[derive(Debug, Deserialize)]
struct RawReportingWebhook {
    event_id: String,
    object_type: String,
    metric: String,
    #[serde(deserialize_with = "super::deserialize_event_time")]
    timestamp: i64,
    #[serde(default)]
    data: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct ReportingEvent {
    pub event_id: String,
    pub object_type: String,
    pub metric: String,
    pub occurred_at_ms: i64,
    pub identifiers: Identifiers,
    /// Small, non-personal facts about the event (delivery, campaign ids).
    pub detail: Map<String, Value>,
}

/// What a reporting event means for the person's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionChange {
    Subscribed,
    Unsubscribed,
}

impl ReportingEvent {
    pub fn dedupe_key(&self) -> String {
        format!("reporting:{}", self.event_id)
    }

    pub fn kind(&self) -> String {
        format!("{}.{}", self.object_type, self.metric)
    }

    pub fn subscription_change(&self) -> Option<SubscriptionChange> {
        match (self.object_type.as_str(), self.metric.as_str()) {
            ("customer", "subscribed") => Some(SubscriptionChange::Subscribed),
            ("customer", "unsubscribed") => Some(SubscriptionChange::Unsubscribed),
            _ => None,
        }
    }
}

/// Fields of `data` that are ids, never personal data, kept in history.
const DETAIL_FIELDS: &[&str] = &[
    "delivery_id",
    "campaign_id",
    "action_id",
    "broadcast_id",
    "newsletter_id",
    "journey_id",
    "transactional_message_id",
    "trigger_event_id",
];

pub fn parse(body: &[u8], rules: &PhoneRules) -> Result<ReportingEvent, PayloadError> {
    let body = super::escape_control_characters(body);
    let raw: RawReportingWebhook = refusal::from_json("reporting webhook", &body)?;
    if raw.event_id.trim().is_empty() {
        return Err(PayloadError::new(
            RefusalReason::BadValue,
            "event_id",
            "must not be empty",
        ));
    }
    let mut ids: RawIdentifiers = match raw.data.get("identifiers") {
        Some(v) => serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let path = format!("data.identifiers.{}", e.path());
            PayloadError::new(
                RefusalReason::WrongShape,
                path,
                "expected strings, numbers or null",
            )
        })?,
        None => RawIdentifiers::default(),
    };
    // `customer_id` and `email_address` are the deprecated, older fields.
    if ids.id.as_deref().is_none_or(str::is_empty) {
        ids.id = raw
            .data
            .get("customer_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    if ids.email.as_deref().is_none_or(str::is_empty) && raw.object_type == "customer" {
        ids.email = raw
            .data
            .get("email_address")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }
    let identifiers = ids.validate(rules, "data.identifiers")?;
    let detail = raw
        .data
        .iter()
        .filter(|(k, _)| DETAIL_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(ReportingEvent {
        event_id: raw.event_id,
        object_type: raw.object_type,
        metric: raw.metric,
        occurred_at_ms: raw.timestamp,
        identifiers,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_subscribed_example_parses() {
        let body = br#"{"metric":"subscribed","event_id":"01E4C4CT6YDC7Y5M7FE1GWWPQJ","object_type":"customer","timestamp":1613063089,
 "data":{"customer_id":"0200000001","email_address":"test@example.com",
         "identifiers":{"id":"42","email":"test@example.com","cio_id":"d9c106000001"}}}"#;
        let e = parse(body, &PhoneRules::default()).unwrap();
        assert_eq!(e.identifiers.id.as_deref(), Some("42"));
        assert_eq!(
            e.subscription_change(),
            Some(SubscriptionChange::Subscribed)
        );
        assert_eq!(e.dedupe_key(), "reporting:01E4C4CT6YDC7Y5M7FE1GWWPQJ");
    }

    #[test]
    fn unknown_metrics_are_accepted_and_personal_fields_are_not_kept() {
        let body = br#"{"metric":"teleported","event_id":"e1","object_type":"hologram","timestamp":1613063089,
 "data":{"delivery_id":"d1","recipient":"test@example.com","identifiers":{"id":"42"}}}"#;
        let e = parse(body, &PhoneRules::default()).unwrap();
        assert_eq!(e.kind(), "hologram.teleported");
        assert!(e.detail.contains_key("delivery_id"));
        assert!(!e.detail.contains_key("recipient"));
    }

    #[test]
    fn an_event_without_identifiers_is_unprocessable() {
        let body = br#"{"metric":"sent","event_id":"e1","object_type":"email","timestamp":1613063089,"data":{"identifiers":{"id":null,"email":null}}}"#;
        let e = parse(body, &PhoneRules::default()).unwrap_err();
        assert_eq!(e.reason, RefusalReason::NoIdentifier);
        assert_eq!(e.field.as_deref(), Some("data.identifiers"));
    }
}
