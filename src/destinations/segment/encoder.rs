//! People → Segment Engage-style events
//! (<https://segment.com/docs/engage/using-engage-data/>): per change a
//! `track` (`Audience Entered` / `Audience Exited`, properties
//! `audience_key`, `<audience_key>: true|false` and on entries the mapped
//! fields) and an `identify` (traits `<audience_key>: true|false` and on
//! entries the mapped fields), and the packing of events into requests that
//! fit Segment's limits.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::config::{UserId, MAX_EVENT_BYTES, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS};
use crate::audiences::SyncOp;
use crate::destinations::SendTarget;
use crate::person::PersonRecord;

/// An audience name as Engage writes audience keys: snake_case. Words
/// break at non-alphanumerics, before an uppercase letter following a
/// lowercase letter or digit, and before the last uppercase letter of an
/// acronym followed by lowercase (`CIOCart` → `cio_cart`); all lowercase,
/// one `_` between words, none at the ends.
/// `CIO__CartAbandon__0-4h__NoPurchase` → `cio_cart_abandon_0_4h_no_purchase`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 8);
    let mut gap = false;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            gap = true;
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                gap = true;
            }
        }
        if gap && !out.is_empty() {
            out.push('_');
        }
        gap = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// The track event of a membership change; an attribute update is an
/// `identify` alone (Segment Engage's convention) and has none.
pub fn event_name(op: SyncOp) -> Option<&'static str> {
    match op {
        SyncOp::Add => Some("Audience Entered"),
        SyncOp::Remove => Some("Audience Exited"),
        SyncOp::Update => None,
    }
}

/// The person's `userId`, or why there is none.
pub fn user_id(p: &PersonRecord, which: UserId) -> Result<&str, String> {
    let id = match which {
        UserId::Id => p.customer_id.as_deref(),
        UserId::CioId => p.cio_id.as_deref(),
    };
    id.filter(|s| !s.is_empty()).ok_or_else(|| {
        format!(
            "no userId: the person has no {} (user_id = {:?}); Segment would drop the events silently",
            which.as_str(),
            which.as_str()
        )
    })
}

/// `messageId`: hex SHA-256 over the destination, the koala audience, the
/// person, the op, the Customer.io time of the change, the event type and
/// what the event carries (64 characters, under Segment's 100). A retry of
/// the same change repeats it, so Segment drops the copy; a later change
/// gets a new one, and so does a second attribute update of a member
/// (same membership, other values), which Segment would otherwise drop as
/// a copy of the first.
pub fn message_id(
    destination: &str,
    audience: &str,
    person_id: i64,
    op: SyncOp,
    changed_at: i64,
    event_type: &str,
    content: &Map<String, Value>,
) -> String {
    let mut h = Sha256::new();
    for part in [destination, audience, op.as_str(), event_type] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(person_id.to_be_bytes());
    h.update(changed_at.to_be_bytes());
    // serde_json's map is ordered by key: the same content, the same bytes.
    h.update(Value::Object(content.clone()).to_string().as_bytes());
    hex::encode(h.finalize())
}

/// The two events of one person's change, serialized: `track`, then
/// `identify`. `changed_at` is 0 when unknown (no `timestamp` then).
pub struct Change<'a> {
    pub destination: &'a str,
    pub audience_key: &'a str,
    pub user_id: UserId,
    pub op: SyncOp,
}

pub fn events(
    c: &Change<'_>,
    target: &SendTarget<'_>,
    p: &PersonRecord,
    changed_at: i64,
) -> Result<Vec<Value>, String> {
    let uid = user_id(p, c.user_id)?;
    let member = c.op.desired();
    let mut mapped = Map::new();
    if member {
        for (k, v) in target.mapping.values(p, c.destination) {
            mapped.insert(k, v.to_json());
        }
    }
    let mut properties = mapped.clone();
    properties.insert("audience_key".into(), json!(c.audience_key));
    properties.insert(c.audience_key.into(), json!(member));
    let mut traits = mapped;
    traits.insert(c.audience_key.into(), json!(member));
    let timestamp = (changed_at > 0)
        .then(|| chrono::DateTime::from_timestamp_millis(changed_at))
        .flatten()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let id = |ty: &str, content: &Map<String, Value>| {
        message_id(
            c.destination,
            &target.audience.name,
            p.person_id,
            c.op,
            changed_at,
            ty,
            content,
        )
    };
    let mut track = event_name(c.op).map(|event| {
        json!({
            "type": "track",
            "event": event,
            "userId": uid,
            "messageId": id("track", &properties),
            "properties": properties,
        })
    });
    let mut identify = json!({
        "type": "identify",
        "userId": uid,
        "messageId": id("identify", &traits),
        "traits": traits,
    });
    if let Some(t) = timestamp {
        if let Some(track) = &mut track {
            track["timestamp"] = json!(t);
        }
        identify["timestamp"] = json!(t);
    }
    Ok(track.into_iter().chain([identify]).collect())
}

/// One person's events as bytes, checked against the per-event limit.
pub fn serialize(pair: &[Value]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(2);
    for e in pair {
        let bytes = serde_json::to_vec(e).expect("serializable");
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(format!(
                "too large for Segment: a {} event of {} bytes (at most {MAX_EVENT_BYTES}); map fewer or shorter attributes",
                e["type"].as_str().unwrap_or("?"),
                bytes.len()
            ));
        }
        out.push(bytes);
    }
    Ok(out)
}

const ENVELOPE: &[u8] = br#"{"batch":[]}"#;

/// Groups people's events (each person's kept together, in order) into
/// request bodies of at most `MAX_REQUEST_EVENTS` events and
/// `MAX_REQUEST_BYTES` bytes. Every event is at most `MAX_EVENT_BYTES`.
pub fn pack(people: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    pack_within(people, MAX_REQUEST_EVENTS, MAX_REQUEST_BYTES)
}

pub fn pack_within(people: Vec<Vec<Vec<u8>>>, max_events: usize, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut size = ENVELOPE.len();
    for events in people {
        let add: usize = events.iter().map(|e| e.len() + 1).sum();
        if !current.is_empty()
            && (current.len() + events.len() > max_events || size + add > max_bytes)
        {
            bodies.push(body(std::mem::take(&mut current)));
            size = ENVELOPE.len();
        }
        size += add;
        current.extend(events);
    }
    if !current.is_empty() {
        bodies.push(body(current));
    }
    bodies
}

fn body(events: Vec<Vec<u8>>) -> Vec<u8> {
    let mut b = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 12);
    b.extend_from_slice(br#"{"batch":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(e);
    }
    b.extend_from_slice(b"]}");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::AudienceDef;
    use crate::destinations::{MapConfig, Mapping};

    fn person(id: i64) -> PersonRecord {
        let mut attributes = Map::new();
        attributes.insert("ltv".into(), json!("12.5"));
        attributes.insert("last_order".into(), json!(1_764_579_600));
        PersonRecord {
            person_id: id,
            customer_id: Some(format!("u{id}")),
            cio_id: Some(format!("cio{id}")),
            email: Some(format!("u{id}@example.com")),
            phone: None,
            attributes,
        }
    }

    fn def() -> AudienceDef {
        AudienceDef {
            id: 1,
            name: "CIO__CartAbandon".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["seg".into()],
        }
    }

    fn mapping() -> Mapping {
        let map: MapConfig = toml::from_str(
            "lifetime_value = { from = \"ltv\", type = \"number\" }\nlast_order_at = { from = \"last_order\", type = \"timestamp\" }",
        )
        .unwrap();
        Mapping::resolve(&[], true, &[&map]).unwrap()
    }

    #[test]
    fn audience_keys_are_snake_case() {
        for (name, key) in [
            (
                "CIO__CartAbandon__0-4h__NoPurchase",
                "cio_cart_abandon_0_4h_no_purchase",
            ),
            ("CIO__VIP__3plus", "cio_vip_3plus"),
            ("CIOCart", "cio_cart"),
            ("high value users", "high_value_users"),
            ("already_snake", "already_snake"),
            ("__x__", "x"),
        ] {
            assert_eq!(snake_case(name), key, "{name}");
        }
    }

    #[test]
    fn an_entry_is_a_track_and_an_identify_with_the_mapped_fields() {
        let (def, mapping) = (def(), mapping());
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "cio_cart_abandon",
            mapping: &mapping,
            changed_at: &[],
        };
        let c = Change {
            destination: "seg",
            audience_key: "cio_cart_abandon",
            user_id: UserId::Id,
            op: SyncOp::Add,
        };
        let [track, identify]: [Value; 2] = events(&c, &target, &person(1), 1_764_579_600_000)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(track["type"], "track");
        assert_eq!(track["event"], "Audience Entered");
        assert_eq!(track["userId"], "u1");
        assert_eq!(track["timestamp"], "2025-12-01T09:00:00.000Z");
        assert_eq!(
            track["properties"],
            json!({"audience_key": "cio_cart_abandon", "cio_cart_abandon": true,
                   "lifetime_value": 12.5, "last_order_at": "2025-12-01T09:00:00.000Z"})
        );
        assert_eq!(
            identify["traits"],
            json!({"cio_cart_abandon": true, "lifetime_value": 12.5,
                   "last_order_at": "2025-12-01T09:00:00.000Z"})
        );
        assert_ne!(track["messageId"], identify["messageId"]);
        assert_eq!(track["messageId"].as_str().unwrap().len(), 64);
        // A retry of the same change repeats the ids; a later change does not.
        let again = events(&c, &target, &person(1), 1_764_579_600_000).unwrap();
        assert_eq!(again[0]["messageId"], track["messageId"]);
        let later = events(&c, &target, &person(1), 1_764_579_600_001).unwrap();
        assert_ne!(later[0]["messageId"], track["messageId"]);

        // An attribute update of a current member is an identify alone.
        let update = Change {
            op: SyncOp::Update,
            ..c
        };
        let events_of_update = events(&update, &target, &person(1), 1_764_579_600_002).unwrap();
        assert_eq!(events_of_update.len(), 1);
        assert_eq!(events_of_update[0]["type"], "identify");
        assert_eq!(events_of_update[0]["traits"]["lifetime_value"], 12.5);
        assert_eq!(events_of_update[0]["traits"]["cio_cart_abandon"], true);

        let exit = Change {
            op: SyncOp::Remove,
            ..c
        };
        let [track, identify]: [Value; 2] = events(&exit, &target, &person(1), 0)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(track["event"], "Audience Exited");
        assert!(track.get("timestamp").is_none());
        assert_eq!(
            track["properties"],
            json!({"audience_key": "cio_cart_abandon", "cio_cart_abandon": false})
        );
        assert_eq!(identify["traits"], json!({"cio_cart_abandon": false}));

        let mut no_id = person(2);
        no_id.customer_id = None;
        let why = events(&c, &target, &no_id, 0).unwrap_err();
        assert!(
            why.starts_with("no userId") && !why.contains("u2@"),
            "{why}"
        );
        let cio = Change {
            user_id: UserId::CioId,
            ..c
        };
        assert_eq!(
            events(&cio, &target, &no_id, 0).unwrap()[0]["userId"],
            "cio2"
        );
    }

    #[test]
    fn an_oversize_event_is_refused_with_a_reason() {
        let big = json!({"type": "identify", "traits": {"bio": "x".repeat(MAX_EVENT_BYTES)}});
        let why = serialize(&[json!({"type": "track"}), big]).unwrap_err();
        assert!(
            why.contains("identify event of") && !why.contains("xxx"),
            "{why}"
        );
        assert_eq!(serialize(&[json!({}), json!({})]).unwrap().len(), 2);
    }

    #[test]
    fn packing_respects_the_event_count_and_the_byte_size_and_keeps_pairs() {
        let pair = |n: usize| vec![vec![b'1'; n], vec![b'2'; n]];
        // 2,500 events at most: 1,300 people → 2,500 + 100 events.
        let bodies = pack((0..1300).map(|_| pair(1)).collect());
        let counts: Vec<usize> = bodies
            .iter()
            .map(|b| b.iter().filter(|c| **c == b',').count() + 1)
            .collect();
        assert_eq!(counts, [2500, 100]);
        // 500,000 bytes at most: 2 × 30,000-byte events a person → 8 people a request.
        let bodies = pack((0..20).map(|_| pair(30_000)).collect());
        assert!(bodies.iter().all(|b| b.len() <= MAX_REQUEST_BYTES));
        assert_eq!(bodies.len(), 3);
        for b in &bodies {
            let ones = b.iter().filter(|c| **c == b'1').count() / 30_000;
            let twos = b.iter().filter(|c| **c == b'2').count() / 30_000;
            assert_eq!(ones, twos, "a person's two events travel together");
        }
        let tiny = pack_within(vec![pair(3), pair(3)], 2, 1000);
        assert_eq!(
            tiny,
            [
                br#"{"batch":[111,222]}"#.to_vec(),
                br#"{"batch":[111,222]}"#.to_vec()
            ]
        );
        assert!(pack(vec![]).is_empty());
    }
}
