//! Why a webhook is refused. Customer.io holds back every later webhook
//! behind a refused one, so koala refuses only what can never succeed, and
//! every refusal says precisely why — to the sender in the JSON body, to
//! the operator in one log line and a counter — without repeating the
//! body's values, which may be personal data.

/// The refusal classes, as logged and counted (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Not JSON at all (400).
    MalformedJson,
    /// JSON of the wrong shape: a missing field, a wrong type (400).
    WrongShape,
    /// A well-formed value koala cannot use (an out-of-range id, a blank
    /// event id) (422).
    BadValue,
    /// Nothing usable identifies the person (422).
    NoIdentifier,
    /// Liquid markup left in the body: Customer.io's test send (422).
    UnrenderedLiquid,
    /// Larger than `server.body_limit_bytes` (413).
    TooLarge,
    /// No `X-CIO-Signature` or `X-CIO-Timestamp` (401).
    SignatureMissing,
    /// A timestamp that is not a number or outside the window (401).
    SignatureTimestamp,
    /// No configured key produces the signature (401).
    SignatureMismatch,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MalformedJson => "malformed_json",
            RefusalReason::WrongShape => "wrong_shape",
            RefusalReason::BadValue => "bad_value",
            RefusalReason::NoIdentifier => "no_identifier",
            RefusalReason::UnrenderedLiquid => "unrendered_liquid",
            RefusalReason::TooLarge => "too_large",
            RefusalReason::SignatureMissing => "signature_missing",
            RefusalReason::SignatureTimestamp => "signature_timestamp",
            RefusalReason::SignatureMismatch => "signature_mismatch",
        }
    }

    /// True for 400 (the body's form), false for 422 (its meaning) among
    /// payload refusals.
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            RefusalReason::MalformedJson | RefusalReason::WrongShape
        )
    }
}

/// A body koala refuses: the reason, the offending field's path (never its
/// value), and a message for the sender that holds no value either.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PayloadError {
    pub reason: RefusalReason,
    pub field: Option<String>,
    pub message: String,
}

impl PayloadError {
    pub fn new(reason: RefusalReason, field: impl Into<String>, message: impl AsRef<str>) -> Self {
        let field = field.into();
        PayloadError {
            reason,
            message: format!("{field}: {}", message.as_ref()),
            field: Some(field),
        }
    }

    /// A JSON body that did not deserialize, located by its field path.
    pub fn from_json(what: &str, e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let reason = if inner.classify() == serde_json::error::Category::Data {
            RefusalReason::WrongShape
        } else {
            RefusalReason::MalformedJson
        };
        let detail = without_values(&inner.to_string());
        let (field, message) = if path.is_empty() || path == "." {
            (None, format!("invalid {what} body: {detail}"))
        } else {
            (
                Some(path.clone()),
                format!("invalid {what} body: {path}: {detail}"),
            )
        };
        PayloadError {
            reason,
            field,
            message,
        }
    }
}

/// Deserializes JSON, telling where it failed.
pub fn from_json<'de, T: serde::Deserialize<'de>>(
    what: &str,
    body: &'de [u8],
) -> Result<T, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| PayloadError::from_json(what, e))
}

/// serde's messages quote the value they choke on (`invalid type: string
/// "ann@example.com", expected …`); that value may be an email or a name,
/// so it is cut, keeping what was expected. Positions are dropped too: the
/// field path says where.
fn without_values(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            let kind = got.split_whitespace().next().unwrap_or("value");
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    if let Some((_, expected)) = message
        .strip_prefix("unknown variant ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        return format!("unknown value, expected {expected}");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct T {
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u64,
        action: Action,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Action {
        Entered,
    }

    #[test]
    fn a_wrong_type_names_the_field_and_never_the_value() {
        let e = from_json::<T>(
            "test",
            br#"{"inner":{"n":"ann@example.com","action":"entered"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.reason, RefusalReason::WrongShape);
        assert_eq!(e.field.as_deref(), Some("inner.n"));
        assert!(!e.message.contains("ann@"), "{}", e.message);
        assert!(e.message.contains("expected u64"), "{}", e.message);
    }

    #[test]
    fn an_unknown_variant_keeps_what_was_expected() {
        let e = from_json::<T>("test", br#"{"inner":{"n":1,"action":"Ann Smith"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inner.action"));
        assert!(!e.message.contains("Ann"), "{}", e.message);
        assert!(e.message.contains("entered"), "{}", e.message);
    }

    #[test]
    fn broken_json_is_malformed() {
        let e = from_json::<T>("test", b"{\"inner\":").unwrap_err();
        assert_eq!(e.reason, RefusalReason::MalformedJson);
        assert!(e.reason.is_malformed());
    }
}
