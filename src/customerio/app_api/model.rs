//! App API response shapes, read leniently: Customer.io documents few
//! guarantees, so unknown fields are ignored and most fields are optional.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::identity::{IdentifierError, Identifiers};

/// Largest `limit` the membership endpoint accepts.
pub const MAX_MEMBERSHIP_LIMIT: u32 = 30_000;

/// Most ids in one `POST /v1/customers/attributes` (the endpoint's 1…100).
pub const MAX_BULK_LOOKUP: usize = 100;

/// A segment as `GET /v1/segments` and `GET /v1/segments/{id}` describe it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Segment {
    pub id: u64,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub description: Option<String>,
    /// events, build, events_queued, build_queued, finished.
    #[serde(default, deserialize_with = "lenient_string")]
    pub state: Option<String>,
    /// dynamic or manual.
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub deduplicate_id: Option<String>,
    #[serde(default)]
    pub progress: Option<Value>,
    #[serde(default)]
    pub tags: Option<Value>,
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub updated_at: Option<i64>,
}

impl Segment {
    /// Manual segments change only through the API or the UI, never by rules.
    pub fn is_manual(&self) -> bool {
        self.kind.as_deref() == Some("manual")
    }
}

#[derive(Deserialize)]
pub(crate) struct SegmentList {
    #[serde(default)]
    pub segments: Vec<Segment>,
}

#[derive(Deserialize)]
pub(crate) struct SegmentEnvelope {
    pub segment: Segment,
}

#[derive(Deserialize)]
pub(crate) struct CustomerCount {
    pub count: u64,
}

/// One segment member. Blank strings are read as absent; at least one
/// field is set (members with none are dropped and counted in
/// [`MembershipPage::skipped`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Member {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub cio_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub email: Option<String>,
}

impl Member {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.cio_id.is_none() && self.email.is_none()
    }

    /// Validated identifiers (the email must parse).
    pub fn identifiers(&self) -> Result<Identifiers, IdentifierError> {
        Identifiers::new(
            self.id.as_deref(),
            self.cio_id.as_deref(),
            self.email.as_deref(),
            None,
        )
    }
}

/// One page of `GET /v1/segments/{id}/membership`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembershipPage {
    pub members: Vec<Member>,
    /// The cursor for the next page; `None` on the last page.
    pub next: Option<String>,
    /// Entries that carried no identifier at all.
    pub skipped: usize,
}

#[derive(Deserialize)]
struct RawMembership {
    #[serde(default)]
    ids: Option<Vec<Option<Value>>>,
    #[serde(default)]
    identifiers: Option<Vec<Member>>,
    #[serde(default, deserialize_with = "lenient_string")]
    next: Option<String>,
}

/// Reads a membership page. `identifiers` wins over `ids` (which lacks
/// email and cio_id); a blank or missing `next`, or an empty page, ends the scan.
pub fn parse_membership_page(body: &[u8]) -> Result<MembershipPage, serde_json::Error> {
    let raw: RawMembership = serde_json::from_slice(body)?;
    let entries: Vec<Member> = match (raw.identifiers, raw.ids) {
        (Some(identifiers), _) if !identifiers.is_empty() => identifiers,
        (_, Some(ids)) => ids
            .into_iter()
            .map(|id| Member {
                id: id.and_then(value_to_string),
                ..Member::default()
            })
            .collect(),
        (identifiers, None) => identifiers.unwrap_or_default(),
    };
    let total = entries.len();
    let members: Vec<Member> = entries.into_iter().filter(|m| !m.is_empty()).collect();
    let next = if total == 0 { None } else { raw.next };
    Ok(MembershipPage {
        skipped: total - members.len(),
        members,
        next,
    })
}

/// The `id_type` of a customer lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    Id,
    Email,
    /// Passed unchanged; whether Customer.io wants a `cio_` prefix here is
    /// unconfirmed.
    CioId,
    /// E.164, e.g. `+15551234567`.
    Phone,
}

impl IdType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdType::Id => "id",
            IdType::Email => "email",
            IdType::CioId => "cio_id",
            IdType::Phone => "phone",
        }
    }
}

/// `GET /v1/customers/{id}/attributes` → `customer`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Customer {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Everything else Customer.io sent (timestamps, devices, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Customer {
    /// An attribute as text (numbers included); blank counts as absent.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.attributes.get(name).cloned().and_then(value_to_string)
    }

    /// The person's identifiers from their attributes.
    pub fn identifiers(&self) -> Result<Identifiers, IdentifierError> {
        Identifiers::new(
            self.attribute("id").or_else(|| self.id.clone()).as_deref(),
            self.attribute("cio_id").as_deref(),
            self.attribute("email").as_deref(),
            self.attribute("phone").as_deref(),
        )
    }
}

#[derive(Deserialize)]
pub(crate) struct CustomerEnvelope {
    pub customer: Customer,
}

impl Customer {
    /// The value of this person's identifier of `id_type`, as a bulk
    /// lookup was asked for it, so an answer can be matched to its
    /// request (the endpoint omits unknown ids and promises no order).
    /// cio_id is compared without a `cio_` prefix; email in lower case.
    pub fn key(&self, id_type: IdType) -> Option<String> {
        match id_type {
            IdType::Id => self.attribute("id").or_else(|| self.id.clone()),
            IdType::CioId => self.attribute("cio_id").map(|c| bare_cio_id(&c).to_owned()),
            IdType::Email => self.attribute("email").map(|e| e.trim().to_lowercase()),
            IdType::Phone => self.attribute("phone"),
        }
    }
}

/// A cio_id without the `cio_` prefix some places write it with.
pub fn bare_cio_id(s: &str) -> &str {
    s.strip_prefix("cio_").unwrap_or(s)
}

/// Why a bulk lookup answer could not be read. Fixed texts: the body holds
/// emails and phones, which must not reach an error message.
#[derive(Debug, thiserror::Error)]
pub enum CustomersDecodeError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("`customers` is missing or not a list")]
    NoList,
    #[error("entry {0} of `customers` is not a customer")]
    BadEntry(usize),
}

/// Reads `POST /v1/customers/attributes`: `{"customers": [...]}`, each
/// entry shaped like the single lookup's answer, `{"customer": {...}}`
/// (as documented), or the customer object itself (accepted in case an
/// account answers without the wrapper). `"customers": null` is none.
pub fn parse_customers(body: &[u8]) -> Result<Vec<Customer>, CustomersDecodeError> {
    let raw: Value = serde_json::from_slice(body).map_err(|_| CustomersDecodeError::NotJson)?;
    let list = match raw.get("customers") {
        Some(Value::Array(list)) => list,
        Some(Value::Null) => return Ok(Vec::new()),
        _ => return Err(CustomersDecodeError::NoList),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let inner = match entry.get("customer") {
                Some(c @ Value::Object(_)) => c,
                _ => entry,
            };
            if !inner.is_object() {
                return Err(CustomersDecodeError::BadEntry(i));
            }
            Customer::deserialize(inner).map_err(|_| CustomersDecodeError::BadEntry(i))
        })
        .collect()
}

/// Strings and numbers become text; null and blank become `None`.
fn value_to_string(v: Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.trim().is_empty()).then_some(s)
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_))) => Ok(value_to_string(v)),
        Some(other) => Err(de::Error::custom(format!(
            "expected a string or number, got {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: &str) -> MembershipPage {
        parse_membership_page(json.as_bytes()).unwrap()
    }

    #[test]
    fn identifiers_are_preferred_over_ids() {
        let p = page(
            r#"{"ids":["1",""],"identifiers":[
                {"email":"a@example.com","id":"1","cio_id":"03000001"},
                {"email":"b@example.com","id":"","cio_id":"03000002"}],
               "next":"abc"}"#,
        );
        assert_eq!(p.next.as_deref(), Some("abc"));
        assert_eq!(p.skipped, 0);
        assert_eq!(
            p.members,
            vec![
                Member {
                    id: Some("1".into()),
                    cio_id: Some("03000001".into()),
                    email: Some("a@example.com".into()),
                },
                Member {
                    id: None,
                    cio_id: Some("03000002".into()),
                    email: Some("b@example.com".into()),
                },
            ]
        );
    }

    #[test]
    fn ids_are_the_fallback_and_blank_ids_are_skipped() {
        let p = page(r#"{"ids":["1","",2,null],"next":"x"}"#);
        let ids: Vec<_> = p.members.iter().map(|m| m.id.clone().unwrap()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(p.skipped, 2);
        assert_eq!(p.next.as_deref(), Some("x"));

        // An empty identifiers list (workspace without them) also falls back.
        let p = page(r#"{"ids":["7"],"identifiers":[],"next":""}"#);
        assert_eq!(p.members[0].id.as_deref(), Some("7"));
    }

    #[test]
    fn the_last_page_is_a_blank_or_missing_next_or_an_empty_page() {
        assert_eq!(page(r#"{"ids":["1"],"next":""}"#).next, None);
        assert_eq!(page(r#"{"ids":["1"]}"#).next, None);
        assert_eq!(page(r#"{"ids":["1"],"next":null}"#).next, None);
        assert_eq!(
            page(r#"{"ids":[],"identifiers":[],"next":"more"}"#).next,
            None
        );
        assert_eq!(page(r#"{}"#), MembershipPage::default());
    }

    #[test]
    fn a_page_of_only_blank_entries_is_not_the_end() {
        let p = page(r#"{"identifiers":[{"id":"","email":null}],"next":"n"}"#);
        assert!(p.members.is_empty());
        assert_eq!(p.skipped, 1);
        assert_eq!(p.next.as_deref(), Some("n"));
    }

    #[test]
    fn malformed_pages_are_errors() {
        assert!(parse_membership_page(b"not json").is_err());
        assert!(parse_membership_page(br#"{"ids":"1"}"#).is_err());
        assert!(parse_membership_page(br#"{"identifiers":[{"id":true}]}"#).is_err());
    }

    #[test]
    fn segments_tolerate_missing_and_null_fields() {
        let list: SegmentList = serde_json::from_str(
            r#"{"segments":[
                {"id":7,"deduplicate_id":"15:1492548073","name":"Manual Segment 1",
                 "description":"My first manual segment","state":"events","progress":null,
                 "type":"manual","tags":null,"created_at":1552341937,"updated_at":1552341937},
                {"id":8}]}"#,
        )
        .unwrap();
        let s = &list.segments[0];
        assert_eq!(s.id, 7);
        assert_eq!(s.name.as_deref(), Some("Manual Segment 1"));
        assert_eq!(s.state.as_deref(), Some("events"));
        assert!(s.is_manual());
        assert_eq!(list.segments[1].name, None);
        assert!(!list.segments[1].is_manual());
    }

    #[test]
    fn bulk_answers_are_read_wrapped_or_bare() {
        // The documented example: entries wrapped like the single lookup.
        let wrapped = parse_customers(
            br#"{"customers":[{"customer":{"id":"1","attributes":{"email":"a@example.com",
                "id":"1","cio_id":"03000001","phone":"+15551234567"},"devices":[]}}]}"#,
        )
        .unwrap();
        assert_eq!(wrapped.len(), 1);
        assert_eq!(wrapped[0].key(IdType::Id).as_deref(), Some("1"));
        assert_eq!(wrapped[0].key(IdType::CioId).as_deref(), Some("03000001"));
        assert_eq!(
            wrapped[0].attribute("phone").as_deref(),
            Some("+15551234567")
        );
        let bare = parse_customers(
            br#"{"customers":[{"id":"2","attributes":{"cio_id":"cio_03000002","email":"B@Example.com"}}]}"#,
        )
        .unwrap();
        assert_eq!(bare[0].key(IdType::Id).as_deref(), Some("2"));
        assert_eq!(bare[0].key(IdType::CioId).as_deref(), Some("03000002"));
        assert_eq!(bare[0].key(IdType::Email).as_deref(), Some("b@example.com"));
        assert!(parse_customers(br#"{"customers":[]}"#).unwrap().is_empty());
        assert!(parse_customers(br#"{"customers":null}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unreadable_bulk_answers_are_errors_without_their_content() {
        for body in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"customers":"x"}"#,
            br#"{"customers":[7]}"#,
            br#"{"customers":[{"customer":{"id":true,"attributes":{"email":"secret@example.com"}}}]}"#,
        ] {
            let e = parse_customers(body).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn customer_attributes_give_identifiers() {
        let c: CustomerEnvelope = serde_json::from_str(
            r#"{"customer":{"id":"1","attributes":{"email":"Test@Example.com","id":"1",
                "cio_id":"03000001","phone":"+15551234567","plan":3},"devices":[]}}"#,
        )
        .unwrap();
        let c = c.customer;
        assert_eq!(c.attribute("plan").as_deref(), Some("3"));
        assert!(c.other.contains_key("devices"));
        let ids = c.identifiers().unwrap();
        assert_eq!(ids.id.as_deref(), Some("1"));
        assert_eq!(ids.cio_id.as_deref(), Some("03000001"));
        assert!(ids.email.is_some() && ids.phone.is_some());
    }
}
