//! People → insertAll rows (`{"insertId": …, "json": {…}}`) and the
//! packing of rows into request bodies that fit the configured limits.

use std::ops::Range;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::config::Identifier;
use super::schema::identifier_column;
use crate::audiences::SyncOp;
use crate::destinations::mapping::MappedValue;
use crate::destinations::SendTarget;
use crate::normalization::{google, sha256_hex};
use crate::person::PersonRecord;

/// BigQuery's TIMESTAMP range, 0001-01-01 to 9999-12-31 (in ms).
const MIN_TIMESTAMP_MS: i64 = -62_135_596_800_000;
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

pub struct Encoder<'a> {
    pub destination: &'a str,
    pub identifiers: &'a [Identifier],
    pub hashed: bool,
}

/// A timestamp as BigQuery reads it in JSON (RFC 3339, UTC, ms), or
/// None outside its range.
pub fn timestamp(ms: i64) -> Option<String> {
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// `insertId` (and `change_id`): hex SHA-256 over the destination, the
/// audience, the op, the koala person, the Customer.io time of the change
/// and the row's content without `synced_at`. A retry of the same change
/// repeats it, so BigQuery drops the copy (best effort); a later change —
/// a new membership time, or an update with other attributes — differs.
pub fn insert_id(
    destination: &str,
    audience: &str,
    op: SyncOp,
    person_id: i64,
    changed_at: i64,
    content: &Map<String, Value>,
) -> String {
    let mut h = Sha256::new();
    for part in [destination, audience, op.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(person_id.to_be_bytes());
    h.update(changed_at.to_be_bytes());
    h.update(serde_json::to_vec(content).expect("serializable"));
    hex::encode(h.finalize())
}

impl Encoder<'_> {
    /// One person's row, serialized, or why it cannot be written.
    /// `changed_at` is 0 when unknown (`occurred_at` is then NULL).
    pub fn row(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        p: &PersonRecord,
        changed_at: i64,
        synced_at: &str,
    ) -> Result<Vec<u8>, String> {
        let person = p
            .row_id()
            .ok_or("no person id: the person has neither id nor cio_id")?;
        let mut content = Map::new();
        content.insert("audience".into(), json!(target.platform_audience_id));
        content.insert("person_id".into(), json!(person));
        if let Some(cio) = p.cio_id.as_deref().filter(|s| !s.is_empty()) {
            content.insert("cio_id".into(), json!(cio));
        }
        content.insert("change".into(), json!(op.as_str()));
        if let Some(t) = (changed_at > 0).then(|| timestamp(changed_at)).flatten() {
            content.insert("occurred_at".into(), json!(t));
        }
        for i in self.identifiers {
            let value = match i {
                Identifier::Email => p
                    .email
                    .as_deref()
                    .and_then(|e| self.identifier(e, google::email)),
                Identifier::Phone => p
                    .phone
                    .as_deref()
                    .and_then(|e| self.identifier(e, google::phone)),
            };
            if let Some(v) = value {
                content.insert(identifier_column(*i, self.hashed).into(), json!(v));
            }
        }
        for (field, v) in target.mapping.values(p, self.destination) {
            let v = match v {
                MappedValue::Timestamp(ms) => match timestamp(ms) {
                    Some(t) => Value::String(t),
                    None => continue,
                },
                other => other.to_json(),
            };
            if !v.is_null() {
                content.insert(field, v);
            }
        }
        let id = insert_id(
            self.destination,
            target.platform_audience_id,
            op,
            p.person_id,
            changed_at,
            &content,
        );
        let mut row = Map::new();
        row.insert("change_id".into(), json!(id));
        row.extend(content);
        row.insert("synced_at".into(), json!(synced_at));
        Ok(serde_json::to_vec(&json!({"insertId": id, "json": row})).expect("serializable"))
    }

    fn identifier(&self, raw: &str, normalize: fn(&str) -> Option<String>) -> Option<String> {
        if self.hashed {
            normalize(raw).map(|n| sha256_hex(&n))
        } else {
            Some(raw.trim().to_owned()).filter(|s| !s.is_empty())
        }
    }
}

/// Every request is all-or-nothing (`skipInvalidRows: false`, see the
/// README) and a column koala does not know is an error, never dropped.
const PREFIX: &[u8] = br#"{"skipInvalidRows":false,"ignoreUnknownValues":false,"rows":["#;
const SUFFIX: &[u8] = b"]}";

/// The size of a request holding only this row.
pub fn alone(row: &[u8]) -> usize {
    PREFIX.len() + row.len() + SUFFIX.len()
}

/// An insertAll body of these rows.
pub fn body<'a>(rows: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut b = PREFIX.to_vec();
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(r);
    }
    b.extend_from_slice(SUFFIX);
    b
}

/// Consecutive groups of rows (by their sizes) of at most `max_rows` rows
/// and `max_bytes` bytes a body. Every row must fit alone.
pub fn pack(sizes: &[usize], max_rows: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = PREFIX.len() + SUFFIX.len();
    for (i, s) in sizes.iter().enumerate() {
        let add = s + usize::from(i > start);
        if i > start && (i - start >= max_rows || size + add > max_bytes) {
            out.push(start..i);
            start = i;
            size = PREFIX.len() + SUFFIX.len() + s;
        } else {
            size += add;
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::AudienceDef;
    use crate::destinations::{MapConfig, Mapping};

    fn person(id: i64) -> PersonRecord {
        let mut attributes = Map::new();
        attributes.insert("ltv".into(), json!("12.5"));
        attributes.insert("vip".into(), json!("yes"));
        attributes.insert("last_order".into(), json!(1_764_579_600));
        attributes.insert("plan".into(), json!("gold"));
        PersonRecord {
            person_id: id,
            customer_id: Some(format!("u{id}")),
            cio_id: Some(format!("cio{id}")),
            email: Some(format!("U{id}.X@Gmail.com")),
            phone: Some("+15551234567".into()),
            attributes,
        }
    }

    fn def() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "CIO__Cart".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["bq".into()],
        }
    }

    fn mapping() -> Mapping {
        let map: MapConfig = toml::from_str(
            "plan = \"plan\"\nltv = { from = \"ltv\", type = \"number\" }\nvip = { from = \"vip\", type = \"boolean\" }\nlast_order_at = { from = \"last_order\", type = \"timestamp\" }",
        )
        .unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    fn decode(row: &[u8]) -> Value {
        serde_json::from_slice(row).unwrap()
    }

    #[test]
    fn a_row_carries_the_change_identifiers_and_typed_attributes() {
        let (def, mapping) = (def(), mapping());
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &[],
        };
        let ids = [Identifier::Email, Identifier::Phone];
        let enc = Encoder {
            destination: "bq",
            identifiers: &ids,
            hashed: false,
        };
        let at = 1_764_579_600_000;
        let row = decode(
            &enc.row(
                &target,
                SyncOp::Add,
                &person(1),
                at,
                "2025-12-01T09:00:01.000Z",
            )
            .unwrap(),
        );
        let j = &row["json"];
        assert_eq!(row["insertId"], j["change_id"]);
        assert_eq!(row["insertId"].as_str().unwrap().len(), 64);
        assert_eq!(
            *j,
            json!({
                "change_id": row["insertId"], "audience": "CIO__Cart", "person_id": "u1",
                "cio_id": "cio1", "change": "add", "occurred_at": "2025-12-01T09:00:00.000Z",
                "email": "U1.X@Gmail.com", "phone": "+15551234567", "plan": "gold",
                "ltv": 12.5, "vip": true, "last_order_at": "2025-12-01T09:00:00.000Z",
                "synced_at": "2025-12-01T09:00:01.000Z"
            })
        );
        // A retry (a later synced_at) repeats the id; a later change does not.
        let again = decode(
            &enc.row(
                &target,
                SyncOp::Add,
                &person(1),
                at,
                "2026-01-01T00:00:00.000Z",
            )
            .unwrap(),
        );
        assert_eq!(again["insertId"], row["insertId"]);
        let later = decode(
            &enc.row(&target, SyncOp::Add, &person(1), at + 1, "x")
                .unwrap(),
        );
        assert_ne!(later["insertId"], row["insertId"]);
        let remove = decode(
            &enc.row(&target, SyncOp::Remove, &person(1), at, "x")
                .unwrap(),
        );
        assert_ne!(remove["insertId"], row["insertId"]);
        assert_eq!(remove["json"]["change"], "remove");
        // An update with new attributes is a new change at the same time.
        let mut richer = person(1);
        richer.attributes.insert("plan".into(), json!("platinum"));
        let u1 = decode(
            &enc.row(&target, SyncOp::Update, &person(1), at, "x")
                .unwrap(),
        );
        let u2 = decode(&enc.row(&target, SyncOp::Update, &richer, at, "x").unwrap());
        assert_ne!(u1["insertId"], u2["insertId"]);

        let hashed = Encoder {
            hashed: true,
            ..enc
        };
        let h = decode(
            &hashed
                .row(&target, SyncOp::Add, &person(1), 0, "x")
                .unwrap(),
        );
        // Google's normalization: gmail dots dropped, lowercased.
        assert_eq!(h["json"]["email_sha256"], sha256_hex("u1x@gmail.com"));
        assert_eq!(h["json"]["phone_sha256"], sha256_hex("+15551234567"));
        assert!(h["json"].get("email").is_none() && h["json"].get("occurred_at").is_none());

        let mut cio_only = person(2);
        cio_only.customer_id = None;
        cio_only.email = None;
        let r = decode(&enc.row(&target, SyncOp::Add, &cio_only, 0, "x").unwrap());
        assert_eq!(r["json"]["person_id"], "cio2");
        assert!(r["json"].get("email").is_none());
        cio_only.cio_id = None;
        assert!(enc
            .row(&target, SyncOp::Add, &cio_only, 0, "x")
            .unwrap_err()
            .starts_with("no person id"));
    }

    #[test]
    fn timestamps_outside_bigquery_are_left_out() {
        assert_eq!(timestamp(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(timestamp(MAX_TIMESTAMP_MS + 1), None);
        assert_eq!(timestamp(MIN_TIMESTAMP_MS - 1), None);
    }

    #[test]
    fn packing_respects_rows_and_bytes() {
        let overhead = alone(b"");
        assert_eq!(pack(&[10; 7], 3, 10_000), [0..3, 3..6, 6..7]);
        // 100-byte rows, 1 comma between: three fit in overhead + 302.
        assert_eq!(pack(&[100; 5], 100, overhead + 302), [0..3, 3..5]);
        assert_eq!(pack(&[100; 5], 100, overhead + 301), [0..2, 2..4, 4..5]);
        assert!(pack(&[], 3, 100).is_empty());
        let b = body([&b"{}"[..], b"{}"]);
        assert_eq!(b.len(), overhead + 5);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["skipInvalidRows"], false);
        assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    }
}
