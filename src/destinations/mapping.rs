//! Attribute mapping: which Customer.io attribute (or identifier) feeds
//! which platform field, with type coercion. A destination type declares
//! its fields ([`FieldSpec`]); a `[[destinations]]` table's `map` sets
//! defaults for every audience it syncs, and a sync target's `map`
//! overrides them for one audience. What cannot work is a config error
//! naming the key; a value that fails coercion at run time is counted per
//! (destination, field) and left out, and the person is still sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::person::PersonRecord;

/// A value's type on the platform side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text; numbers and booleans are written out.
    String,
    Number,
    Boolean,
    /// Unix seconds, milliseconds or RFC 3339 in; the platform's form out.
    Timestamp,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
        }
    }

    /// True when a value coerced to `self` can feed a `field` field.
    fn fits(self, field: FieldType) -> bool {
        self == field || field == FieldType::String
    }
}

/// One platform field a destination can be fed.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldType,
    /// The attribute that feeds it unless the config says otherwise.
    pub default_from: Option<&'static str>,
    /// The platform needs it: a mapping that leaves it unfed is an error.
    pub required: bool,
}

/// What feeds one field in a config: `field = "attribute"`, or
/// `field = { from = "attribute", type = "timestamp" }`. `from` may name
/// an identifier as `identifiers.id|cio_id|email|phone`; `""` turns a
/// default off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FieldSource {
    From(String),
    Typed(TypedSource),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TypedSource {
    pub from: String,
    #[serde(rename = "type", default)]
    pub kind: Option<FieldType>,
}

impl FieldSource {
    fn parts(&self) -> (&str, Option<FieldType>) {
        match self {
            FieldSource::From(from) => (from, None),
            FieldSource::Typed(t) => (&t.from, t.kind),
        }
    }
}

/// A `map = { … }` table: platform field → source.
pub type MapConfig = BTreeMap<String, FieldSource>;

/// Where a mapped value is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Attribute(String),
    CustomerId,
    CioId,
    Email,
    Phone,
}

impl Source {
    fn parse(from: &str) -> Result<Source, String> {
        match from.strip_prefix("identifiers.") {
            Some("id") => Ok(Source::CustomerId),
            Some("cio_id") => Ok(Source::CioId),
            Some("email") => Ok(Source::Email),
            Some("phone") => Ok(Source::Phone),
            Some(other) => Err(format!(
                "identifiers.{other} is not an identifier (id, cio_id, email, phone)"
            )),
            None if from.trim().is_empty() => Err("empty source".into()),
            None => Ok(Source::Attribute(from.to_owned())),
        }
    }

    fn read(&self, p: &PersonRecord) -> Option<Value> {
        let text = |s: &Option<String>| s.clone().map(Value::String);
        match self {
            Source::Attribute(name) => p.attributes.get(name).cloned(),
            Source::CustomerId => text(&p.customer_id),
            Source::CioId => text(&p.cio_id),
            Source::Email => text(&p.email),
            Source::Phone => text(&p.phone),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Attribute(name) => name.clone(),
            Source::CustomerId => "identifiers.id".into(),
            Source::CioId => "identifiers.cio_id".into(),
            Source::Email => "identifiers.email".into(),
            Source::Phone => "identifiers.phone".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct MappedField {
    field: String,
    from: Source,
    kind: FieldType,
}

/// A resolved mapping for one (destination, audience).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    fields: Vec<MappedField>,
    /// Fingerprint of what is mapped, stored with what was sent.
    hash: String,
}

/// A value is present but cannot be read as its field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoercionFailed;

/// A value after coercion.
#[derive(Debug, Clone, PartialEq)]
pub enum MappedValue {
    Text(String),
    Number(f64),
    Boolean(bool),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

impl MappedValue {
    /// The value as text (numbers without a needless `.0`, times RFC 3339).
    pub fn to_text(&self) -> String {
        match self {
            MappedValue::Text(s) => s.clone(),
            MappedValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                format!("{}", *n as i64)
            }
            MappedValue::Number(n) => n.to_string(),
            MappedValue::Boolean(b) => b.to_string(),
            MappedValue::Timestamp(ms) => chrono::DateTime::from_timestamp_millis(*ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
        }
    }

    /// The value as JSON, times as RFC 3339.
    pub fn to_json(&self) -> Value {
        match self {
            MappedValue::Text(s) => Value::String(s.clone()),
            MappedValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MappedValue::Boolean(b) => Value::Bool(*b),
            MappedValue::Timestamp(_) => Value::String(self.to_text()),
        }
    }
}

impl Mapping {
    /// The mapping of one sync target: the fields' defaults, then the
    /// destination's `map`, then the target's. `open` platforms (analytics,
    /// warehouses) take fields they do not declare, as strings unless a
    /// `type` says otherwise. Problems start with `map.{field}`.
    pub fn resolve(
        specs: &[FieldSpec],
        open: bool,
        layers: &[&MapConfig],
    ) -> Result<Mapping, Vec<String>> {
        let mut chosen: BTreeMap<String, (String, Option<FieldType>)> = specs
            .iter()
            .filter_map(|s| Some((s.name.to_owned(), (s.default_from?.to_owned(), None))))
            .collect();
        for layer in layers {
            for (field, source) in layer.iter() {
                let (from, kind) = source.parts();
                chosen.insert(field.clone(), (from.to_owned(), kind));
            }
        }
        let mut problems = Vec::new();
        let mut fields = Vec::new();
        for (field, (from, kind)) in &chosen {
            let spec = specs.iter().find(|s| s.name == field);
            let platform_kind = match (spec, open) {
                (Some(s), _) => s.kind,
                (None, true) => kind.unwrap_or(FieldType::String),
                (None, false) => {
                    let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                    problems.push(format!(
                        "map.{field}: the platform has no field {field:?} (fields: {})",
                        known.join(", ")
                    ));
                    continue;
                }
            };
            if from.is_empty() {
                if spec.is_some_and(|s| s.required) {
                    problems.push(format!(
                        "map.{field}: required by the platform and cannot be turned off"
                    ));
                }
                continue;
            }
            let source = match Source::parse(from) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("map.{field}: {e}"));
                    continue;
                }
            };
            let kind = kind.unwrap_or(platform_kind);
            if !kind.fits(platform_kind) {
                problems.push(format!(
                    "map.{field}: the platform's field is a {} and cannot take a {}",
                    platform_kind.as_str(),
                    kind.as_str()
                ));
                continue;
            }
            fields.push(MappedField {
                field: field.clone(),
                from: source,
                kind,
            });
        }
        for s in specs.iter().filter(|s| s.required) {
            if !chosen.contains_key(s.name) {
                problems.push(format!(
                    "map.{}: required by the platform and nothing feeds it",
                    s.name
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let canonical: Vec<String> = fields
            .iter()
            .map(|f| format!("{}={}:{}", f.field, f.from.describe(), f.kind.as_str()))
            .collect();
        Ok(Mapping {
            hash: crate::normalization::sha256_hex(&canonical.join("\n"))[..16].to_owned(),
            fields,
        })
    }

    /// Fingerprint of the mapping: a change re-sends the members.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// What the mapping reads of a person, by source name (an
    /// attribute, or `identifiers.email` and the like).
    pub fn reads(&self) -> impl Iterator<Item = String> + '_ {
        self.fields.iter().map(|f| f.from.describe())
    }

    /// The mapped fields' names.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.field.as_str())
    }

    /// The mapped fields with the type their values are coerced to (a
    /// warehouse's column types).
    pub fn typed_fields(&self) -> impl Iterator<Item = (&str, FieldType)> {
        self.fields.iter().map(|f| (f.field.as_str(), f.kind))
    }

    /// The coerced value of `field` for a person; `Err` for a value that is
    /// present but cannot be coerced (count it; the field is left out).
    pub fn value(
        &self,
        field: &str,
        person: &PersonRecord,
    ) -> Result<Option<MappedValue>, CoercionFailed> {
        let Some(f) = self.fields.iter().find(|f| f.field == field) else {
            return Ok(None);
        };
        match f.from.read(person) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(v) => coerce(&v, f.kind).map(Some).ok_or(CoercionFailed),
        }
    }

    /// Every mapped value of a person; fields whose value fails coercion
    /// are left out and counted under `destination`.
    pub fn values(
        &self,
        person: &PersonRecord,
        destination: &str,
    ) -> BTreeMap<String, MappedValue> {
        let mut out = BTreeMap::new();
        for f in &self.fields {
            match self.value(&f.field, person) {
                Ok(Some(v)) => {
                    out.insert(f.field.clone(), v);
                }
                Ok(None) => {}
                Err(CoercionFailed) => count_failure(destination, &f.field),
            }
        }
        out
    }

    /// One field as text, counting a coercion failure under `destination`.
    pub fn text(&self, field: &str, person: &PersonRecord, destination: &str) -> Option<String> {
        match self.value(field, person) {
            Ok(v) => v.map(|v| v.to_text()),
            Err(CoercionFailed) => {
                count_failure(destination, field);
                None
            }
        }
    }
}

fn count_failure(destination: &str, field: &str) {
    metrics::counter!("koala_mapping_coercion_failures_total", "destination" => destination.to_owned(), "field" => field.to_owned())
        .increment(1);
}

/// The rules of coercion; `None` when the value cannot be read as `kind`.
fn coerce(v: &Value, kind: FieldType) -> Option<MappedValue> {
    match kind {
        FieldType::String => match v {
            Value::String(s) => Some(MappedValue::Text(s.clone())),
            Value::Number(n) => Some(MappedValue::Text(n.to_string())),
            Value::Bool(b) => Some(MappedValue::Text(b.to_string())),
            _ => None,
        },
        FieldType::Number => match v {
            Value::Number(n) => n.as_f64().map(MappedValue::Number),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(MappedValue::Number),
            _ => None,
        },
        FieldType::Boolean => match v {
            Value::Bool(b) => Some(MappedValue::Boolean(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(0) => Some(MappedValue::Boolean(false)),
                Some(1) => Some(MappedValue::Boolean(true)),
                _ => None,
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Some(MappedValue::Boolean(true)),
                "false" | "no" | "0" => Some(MappedValue::Boolean(false)),
                _ => None,
            },
            _ => None,
        },
        FieldType::Timestamp => {
            let from_unix = |n: f64| {
                // Below 1e11 the number is seconds (until year 5138).
                let ms = if n.abs() < 1e11 { n * 1000.0 } else { n };
                ms.is_finite().then_some(MappedValue::Timestamp(ms as i64))
            };
            match v {
                Value::Number(n) => from_unix(n.as_f64()?),
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(n) => from_unix(n),
                    Err(_) => chrono::DateTime::parse_from_rfc3339(s.trim())
                        .ok()
                        .map(|t| MappedValue::Timestamp(t.timestamp_millis())),
                },
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPECS: &[FieldSpec] = &[
        FieldSpec {
            name: "first_name",
            kind: FieldType::String,
            default_from: Some("first_name"),
            required: false,
        },
        FieldSpec {
            name: "last_order_at",
            kind: FieldType::Timestamp,
            default_from: None,
            required: false,
        },
        FieldSpec {
            name: "orders_count",
            kind: FieldType::Number,
            default_from: None,
            required: false,
        },
    ];

    fn map(text: &str) -> MapConfig {
        toml::from_str::<BTreeMap<String, MapConfig>>(&format!("map = {text}")).unwrap()["map"]
            .clone()
    }

    fn person(attrs: Value) -> PersonRecord {
        PersonRecord {
            person_id: 1,
            customer_id: Some("u1".into()),
            email: Some("a@example.com".into()),
            attributes: attrs.as_object().unwrap().clone(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_then_destination_then_target_decide() {
        let dest = map(r#"{ first_name = "firstName", orders_count = "orders" }"#);
        let target = map(r#"{ orders_count = { from = "orders_total", type = "number" } }"#);
        let m = Mapping::resolve(SPECS, false, &[&dest, &target]).unwrap();
        let p = person(json!({"firstName": "Ann", "orders": 1, "orders_total": "3"}));
        assert_eq!(
            m.value("first_name", &p).unwrap(),
            Some(MappedValue::Text("Ann".into()))
        );
        assert_eq!(
            m.value("orders_count", &p).unwrap(),
            Some(MappedValue::Number(3.0))
        );
        // Turning a default off.
        let off = map(r#"{ first_name = "" }"#);
        let m2 = Mapping::resolve(SPECS, false, &[&off]).unwrap();
        assert_eq!(m2.fields().count(), 0);
        assert_ne!(m.hash(), m2.hash());
    }

    #[test]
    fn timestamps_come_in_every_form_and_leave_as_rfc_3339() {
        let m = Mapping::resolve(
            SPECS,
            false,
            &[&map(r#"{ last_order_at = "last_order_at" }"#)],
        )
        .unwrap();
        for raw in [
            json!(1700000000),
            json!(1700000000000i64),
            json!("1700000000"),
            json!("2023-11-14T22:13:20Z"),
        ] {
            let p = person(json!({ "last_order_at": raw }));
            let v = m.value("last_order_at", &p).unwrap().unwrap();
            assert_eq!(v, MappedValue::Timestamp(1_700_000_000_000), "{raw}");
            assert_eq!(v.to_text(), "2023-11-14T22:13:20.000Z");
        }
        let bad = person(json!({ "last_order_at": "last tuesday" }));
        assert!(m.value("last_order_at", &bad).is_err());
    }

    #[test]
    fn what_cannot_work_is_a_problem_naming_the_key() {
        let e = Mapping::resolve(
            SPECS,
            false,
            &[&map(r#"{ shoe_size = "shoe", orders_count = { from = "x", type = "boolean" }, last_order_at = "identifiers.zip" }"#)],
        )
        .unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.starts_with("map.shoe_size: the platform has no field")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("map.orders_count: the platform's field is a number")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("map.last_order_at: identifiers.zip")),
            "{e:?}"
        );
        let required = [FieldSpec {
            name: "consent",
            kind: FieldType::Boolean,
            default_from: None,
            required: true,
        }];
        let e = Mapping::resolve(&required, false, &[]).unwrap_err();
        assert!(e[0].starts_with("map.consent: required"), "{e:?}");
    }

    #[test]
    fn open_platforms_take_any_field() {
        let m = Mapping::resolve(
            SPECS,
            true,
            &[&map(r#"{ lifetime_value = { from = "ltv", type = "number" }, product_category_affinity = "affinity" }"#)],
        )
        .unwrap();
        let p = person(json!({"ltv": "120.5", "affinity": "shoes", "first_name": "Ann"}));
        let v = m.values(&p, "warehouse");
        assert_eq!(v["lifetime_value"], MappedValue::Number(120.5));
        assert_eq!(
            v["product_category_affinity"],
            MappedValue::Text("shoes".into())
        );
        assert_eq!(v["first_name"], MappedValue::Text("Ann".into()));
    }

    #[test]
    fn identifiers_can_feed_fields_and_booleans_coerce() {
        let specs = [FieldSpec {
            name: "vip",
            kind: FieldType::Boolean,
            default_from: None,
            required: false,
        }];
        let m = Mapping::resolve(
            &specs,
            true,
            &[&map(r#"{ vip = "vip", who = "identifiers.email" }"#)],
        )
        .unwrap();
        let p = person(json!({"vip": "yes"}));
        assert_eq!(
            m.value("vip", &p).unwrap(),
            Some(MappedValue::Boolean(true))
        );
        assert_eq!(m.text("who", &p, "d").as_deref(), Some("a@example.com"));
        assert!(m.value("vip", &person(json!({"vip": "perhaps"}))).is_err());
    }
}
