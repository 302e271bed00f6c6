//! Everything that speaks Customer.io: webhook signatures, the two webhook
//! payloads koala accepts, and (for resync) the App API client.

pub mod app_api;
pub mod refusal;
pub mod reporting;
pub mod segment;
pub mod signature;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A Customer.io timestamp in milliseconds since the epoch. Accepts unix
/// seconds or milliseconds (number or digit string) and RFC 3339 strings,
/// because Liquid's `date` filter can produce any of them.
pub fn deserialize_event_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let ms = match Raw::deserialize(d)? {
        Raw::Int(n) => unix_to_ms(n as f64),
        Raw::Float(f) => unix_to_ms(f),
        Raw::Text(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                unix_to_ms(n)
            } else {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.with_timezone(&Utc).timestamp_millis()))
                    // The value is not repeated: a template mistake can put
                    // personal data here.
                    .map_err(|_| {
                        de::Error::custom(
                            "not a time (expected unix seconds, milliseconds or RFC 3339)",
                        )
                    })?
            }
        }
    };
    ms.ok_or_else(|| de::Error::custom("time out of range (expected a time after 2001)"))
}

/// Seconds below 1e11 (year 5138) are seconds; above, milliseconds.
fn unix_to_ms(n: f64) -> Option<i64> {
    let ms = if n.abs() < 1e11 { n * 1000.0 } else { n };
    // Anything before 2001-09-09 is a template mistake, not an event.
    (1e12..1e14).contains(&ms).then_some(ms as i64)
}

/// Escapes raw control characters (tab, newline, …) inside JSON strings.
/// Liquid renders an attribute's tab or newline as it is, which strict
/// JSON refuses; the meaning is unambiguous, so koala accepts it rather
/// than hold back Customer.io's queue. The signature is checked over the
/// raw bytes before this.
pub fn escape_control_characters(body: &[u8]) -> Cow<'_, [u8]> {
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in body.iter().enumerate() {
        let raw_control = in_string && b < 0x20;
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        }
        if raw_control {
            let out = out.get_or_insert_with(|| body[..i].to_vec());
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else if let Some(out) = &mut out {
            out.push(b);
        }
    }
    match out {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(body),
    }
}

/// True when the body still holds Liquid markup: Customer.io's test send
/// can deliver the template unrendered.
pub fn contains_unrendered_liquid(body: &[u8]) -> bool {
    body.windows(2).any(|w| w == b"{{" || w == b"{%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "deserialize_event_time")]
        t: i64,
    }

    fn parse(json: &str) -> Result<i64, serde_json::Error> {
        serde_json::from_str::<T>(json).map(|t| t.t)
    }

    #[test]
    fn event_times_in_every_form_liquid_can_render() {
        assert_eq!(parse(r#"{"t":1613063089}"#).unwrap(), 1_613_063_089_000);
        assert_eq!(parse(r#"{"t":"1613063089"}"#).unwrap(), 1_613_063_089_000);
        assert_eq!(parse(r#"{"t":1613063089123}"#).unwrap(), 1_613_063_089_123);
        assert_eq!(parse(r#"{"t":1613063089.5}"#).unwrap(), 1_613_063_089_500);
        assert_eq!(
            parse(r#"{"t":"2021-02-11T17:04:49Z"}"#).unwrap(),
            1_613_063_089_000
        );
        assert!(parse(r#"{"t":"yesterday"}"#).is_err());
        assert!(parse(r#"{"t":0}"#).is_err());
        assert!(parse(r#"{"t":""}"#).is_err());
    }

    #[test]
    fn unrendered_liquid_is_detected() {
        assert!(contains_unrendered_liquid(br#"{"id":"{{customer.id}}"}"#));
        assert!(contains_unrendered_liquid(br#"{% if x %}"#));
        assert!(!contains_unrendered_liquid(br#"{"a":{"b":1}}"#));
    }
}
