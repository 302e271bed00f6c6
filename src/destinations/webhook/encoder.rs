//! People → the webhook's JSON payload, and the payload's `webhook-id`.
//! Shape documented in `schemas/webhook-destination.schema.json`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::audiences::SyncOp;
use crate::destinations::SendTarget;
use crate::person::PersonRecord;

/// The event type of a batch.
pub fn event_type(op: SyncOp) -> &'static str {
    match op {
        SyncOp::Add => "audience.members_added",
        SyncOp::Remove => "audience.members_removed",
        SyncOp::Update => "audience.members_updated",
    }
}

/// True when a person has an id koala can tell the receiver: the
/// Customer.io id or cio_id (email and phone only travel with
/// `include_pii`, so they cannot be the only key).
pub fn can_address(p: &PersonRecord) -> bool {
    p.customer_id.is_some() || p.cio_id.is_some()
}

/// One member as sent: ids, email/phone only with `include_pii`, mapped
/// attributes.
pub fn member(
    p: &PersonRecord,
    target: &SendTarget<'_>,
    destination: &str,
    include_pii: bool,
) -> Value {
    let attributes: Map<String, Value> = target
        .mapping
        .values(p, destination)
        .into_iter()
        .map(|(k, v)| (k, v.to_json()))
        .collect();
    let mut m = Map::new();
    m.insert("id".into(), json!(p.customer_id));
    m.insert("cio_id".into(), json!(p.cio_id));
    if include_pii {
        m.insert("email".into(), json!(p.email));
        m.insert("phone".into(), json!(p.phone));
    }
    m.insert("attributes".into(), Value::Object(attributes));
    Value::Object(m)
}

/// The batch's body without `sent_at`, members in person order (so a
/// retry of the same rows, in whatever order the engine claims them,
/// is the same content).
pub fn content(
    target: &SendTarget<'_>,
    op: SyncOp,
    people: &[PersonRecord],
    destination: &str,
    include_pii: bool,
) -> Map<String, Value> {
    let mut sorted: Vec<&PersonRecord> = people.iter().filter(|p| can_address(p)).collect();
    sorted.sort_by_key(|p| p.person_id);
    let members: Vec<Value> = sorted
        .iter()
        .map(|p| member(p, target, destination, include_pii))
        .collect();
    let mut body = Map::new();
    body.insert("type".into(), json!(event_type(op)));
    body.insert(
        "audience".into(),
        json!({
            "name": target.audience.name,
            "segment_id": target.audience.segment_id,
            "platform_audience_id": target.platform_audience_id,
        }),
    );
    body.insert("members".into(), Value::Array(members));
    body
}

/// The `webhook-id`: `msg_` + the first 16 bytes (hex) of SHA-256 over the
/// destination name, the koala person ids (sorted) with the Customer.io
/// time of each one's change, and the content without `sent_at` (type =
/// op, audience, members with their mapped values).
///
/// Why derived and not random: the engine retries a failed batch with the
/// same rows, and a receiver must be able to recognise the retry of a
/// request it already applied (its answer may have been lost) — Standard
/// Webhooks receivers dedupe on `webhook-id`. A random id per attempt
/// would defeat that; an id stored per batch would need the store. The
/// same rows with the same content give the same id on every attempt and
/// after a restart; a person who leaves and comes back with identical
/// attributes is a new change (a later time), so a new id.
pub fn webhook_id(
    destination: &str,
    people: &[PersonRecord],
    changed_at: &std::collections::HashMap<i64, i64>,
    content: &Map<String, Value>,
) -> String {
    let mut ids: Vec<(i64, i64)> = people
        .iter()
        .map(|p| {
            (
                p.person_id,
                changed_at.get(&p.person_id).copied().unwrap_or(0),
            )
        })
        .collect();
    ids.sort_unstable();
    let mut h = Sha256::new();
    h.update(destination.as_bytes());
    h.update([0]);
    for (id, at) in ids {
        h.update(id.to_be_bytes());
        h.update(at.to_be_bytes());
    }
    h.update([0]);
    h.update(serde_json::to_vec(content).expect("serializable"));
    let digest = h.finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::AudienceDef;
    use crate::destinations::{MapConfig, Mapping};

    fn person(id: i64) -> PersonRecord {
        let mut attributes = Map::new();
        attributes.insert("plan".into(), json!("gold"));
        attributes.insert("orders_count".into(), json!(3));
        PersonRecord {
            person_id: id,
            customer_id: Some(format!("u{id}")),
            cio_id: Some(format!("cio{id}")),
            email: Some(format!("u{id}@example.com")),
            phone: Some("+14155550100".into()),
            attributes,
        }
    }

    fn def() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "CIO__Cart".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["hook".into()],
        }
    }

    fn mapping() -> Mapping {
        let map: MapConfig = toml::from_str(
            "plan = \"plan\"\norders = { from = \"orders_count\", type = \"number\" }",
        )
        .unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    /// The schema's `required` lists, checked against a produced payload
    /// (no JSON Schema crate: the required keys and their JSON types).
    #[test]
    fn a_payload_has_what_the_schema_requires() {
        let schema: Value = serde_json::from_str(include_str!(
            "../../../schemas/webhook-destination.schema.json"
        ))
        .unwrap();
        let (def, mapping) = (def(), mapping());
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &[],
        };
        for pii in [false, true] {
            let mut body = content(&target, SyncOp::Add, &[person(2), person(1)], "hook", pii);
            body.insert("sent_at".into(), json!("2026-12-01T09:00:00Z"));
            let body = Value::Object(body);
            check(&schema, &schema, &body, "$");
            assert_eq!(body["members"][0]["id"], "u1", "members in person order");
            assert_eq!(
                body["members"][0]["attributes"],
                json!({"plan": "gold", "orders": 3.0})
            );
            assert_eq!(body["members"][0].get("email").is_some(), pii);
            assert_eq!(body["members"][0].get("phone").is_some(), pii);
        }
        let remove = Value::Object(content(
            &target,
            SyncOp::Remove,
            &[person(1)],
            "hook",
            false,
        ));
        assert_eq!(remove["type"], "audience.members_removed");
    }

    /// `required`, `type`, `enum`, `properties`, `items` and `$ref` into
    /// `$defs`: what the schema file uses.
    fn check(root: &Value, schema: &Value, v: &Value, at: &str) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.strip_prefix("#/$defs/").expect("local ref");
            return check(root, &root["$defs"][name], v, at);
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = types.iter().any(|t| match *t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            });
            assert!(ok, "{at}: {v} is not of type {t}");
        }
        if let Some(e) = schema["enum"].as_array() {
            assert!(e.contains(v), "{at}: {v} not in {e:?}");
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let k = r.as_str().unwrap();
            assert!(v.get(k).is_some(), "{at}: missing required {k}");
        }
        if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
            for (k, s) in props {
                if let Some(x) = obj.get(k) {
                    check(root, s, x, &format!("{at}.{k}"));
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, x) in arr.iter().enumerate() {
                check(root, items, x, &format!("{at}[{i}]"));
            }
        }
    }

    #[test]
    fn the_id_is_stable_across_order_and_changes_with_content() {
        let (def, mapping) = (def(), mapping());
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "CIO__Cart",
            mapping: &mapping,
            changed_at: &[],
        };
        let none = std::collections::HashMap::new();
        let id = |op, people: &[PersonRecord]| {
            webhook_id(
                "hook",
                people,
                &none,
                &content(&target, op, people, "hook", false),
            )
        };
        let a = id(SyncOp::Add, &[person(1), person(2)]);
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
        assert_eq!(a, id(SyncOp::Add, &[person(2), person(1)]));
        assert_ne!(a, id(SyncOp::Remove, &[person(1), person(2)]));
        assert_ne!(a, id(SyncOp::Add, &[person(1)]));
        let mut changed = person(2);
        changed.attributes.insert("plan".into(), json!("basic"));
        assert_ne!(a, id(SyncOp::Add, &[person(1), changed]));
        // The same person and content, changed again later: a new id.
        let people = [person(1)];
        let at = |t: i64| std::collections::HashMap::from([(1, t)]);
        let first = webhook_id(
            "hook",
            &people,
            &at(10),
            &content(&target, SyncOp::Add, &people, "hook", false),
        );
        let again = webhook_id(
            "hook",
            &people,
            &at(10),
            &content(&target, SyncOp::Add, &people, "hook", false),
        );
        let later = webhook_id(
            "hook",
            &people,
            &at(99),
            &content(&target, SyncOp::Add, &people, "hook", false),
        );
        assert_eq!(first, again);
        assert_ne!(first, later);
    }
}
