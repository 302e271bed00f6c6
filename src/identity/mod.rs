//! A person's identifiers as types that cannot hold invalid values, and the
//! masking that keeps them out of logs and admin answers.

mod email;
mod phone;

pub use email::Email;
pub use phone::{Phone, PhoneRules};

use serde::{Deserialize, Serialize};

/// The identifiers Customer.io knows a person by. At least one usable
/// identifier is present: construct through [`Identifiers::new`] or
/// [`Identifiers::parse`], which refuse a set with none.
///
/// An email or phone that cannot be used (a phone without its country
/// code, say) is not a reason to refuse the person: it is left out and
/// recorded in `unusable`, and the person is synced by what is usable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identifiers {
    /// Customer.io's `id` (the workspace's own customer id).
    pub id: Option<String>,
    /// Customer.io's immutable `cio_id`.
    pub cio_id: Option<String>,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    /// Identifiers that were given but cannot be used, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unusable: Vec<Unusable>,
}

/// An identifier kind that can be given in a form koala cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Email,
    Phone,
}

impl IdentifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
        }
    }
}

/// Why a given email or phone cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnusableReason {
    /// Not of the form local@domain.tld.
    NotAnEmail,
    /// A national number, and no `identity.default_phone_country` is set.
    NoCountryCode,
    /// Not a phone number in any country's rules.
    NotAPhoneNumber,
}

impl UnusableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnusableReason::NotAnEmail => "not_an_email",
            UnusableReason::NoCountryCode => "no_country_code",
            UnusableReason::NotAPhoneNumber => "not_a_phone_number",
        }
    }

    /// The stored form back; unknown text (a newer version's) is `None`.
    pub fn from_code(code: &str) -> Option<Self> {
        [
            UnusableReason::NotAnEmail,
            UnusableReason::NoCountryCode,
            UnusableReason::NotAPhoneNumber,
        ]
        .into_iter()
        .find(|r| r.as_str() == code)
    }

    /// What an operator can do about it.
    pub fn describe(self) -> &'static str {
        match self {
            UnusableReason::NotAnEmail => "not an email address (expected local@domain.tld)",
            UnusableReason::NoCountryCode => {
                "a phone number without its country code; set identity.default_phone_country"
            }
            UnusableReason::NotAPhoneNumber => "not a phone number",
        }
    }
}

/// One identifier that was given but cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unusable {
    pub identifier: IdentifierKind,
    pub reason: UnusableReason,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentifierError {
    /// Nothing usable identifies the person: the only refusal.
    #[error("no identifier: give at least one of id, cio_id, email, phone")]
    Missing,
}

impl Identifiers {
    /// Builds identifiers from raw strings; blank strings count as absent.
    /// Phones must carry their country code.
    pub fn new(
        id: Option<&str>,
        cio_id: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Self, IdentifierError> {
        Self::parse(id, cio_id, email, phone, &PhoneRules::default())
    }

    /// As [`Identifiers::new`], reading national phone numbers by `rules`.
    pub fn parse(
        id: Option<&str>,
        cio_id: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
        rules: &PhoneRules,
    ) -> Result<Self, IdentifierError> {
        let mut unusable = Vec::new();
        let mut note = |identifier, reason| unusable.push(Unusable { identifier, reason });
        let id = non_blank(id).map(str::to_owned);
        let cio_id = non_blank(cio_id).map(|c| c.strip_prefix("cio_").unwrap_or(c).to_owned());
        let email = non_blank(email).and_then(|e| match Email::parse(e) {
            Ok(e) => Some(e),
            Err(_) => {
                note(IdentifierKind::Email, UnusableReason::NotAnEmail);
                None
            }
        });
        let phone = non_blank(phone).and_then(|p| match Phone::parse_with(p, rules) {
            Ok(p) => Some(p),
            Err(reason) => {
                note(IdentifierKind::Phone, reason);
                None
            }
        });
        let ids = Identifiers {
            id,
            cio_id,
            email,
            phone,
            unusable,
        };
        if ids.is_empty() {
            return Err(IdentifierError::Missing);
        }
        Ok(ids)
    }

    /// Why the given `kind` is unusable, if it was given and is.
    pub fn unusable(&self, kind: IdentifierKind) -> Option<UnusableReason> {
        self.unusable
            .iter()
            .find(|u| u.identifier == kind)
            .map(|u| u.reason)
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.cio_id.is_none() && self.email.is_none() && self.phone.is_none()
    }

    /// A stable key naming this person within one delivery, used for
    /// deduplication: the strongest identifier present.
    pub fn dedupe_key(&self) -> String {
        if let Some(id) = &self.id {
            format!("id:{id}")
        } else if let Some(cio) = &self.cio_id {
            format!("cio:{cio}")
        } else if let Some(email) = &self.email {
            format!("email:{}", email.sha256_hex())
        } else if let Some(phone) = &self.phone {
            format!("phone:{}", phone.sha256_hex())
        } else {
            String::from("none")
        }
    }

    /// A description safe for logs: ids in clear, email and phone masked.
    pub fn masked(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = &self.id {
            parts.push(format!("id={id}"));
        }
        if let Some(cio) = &self.cio_id {
            parts.push(format!("cio_id={cio}"));
        }
        if let Some(e) = &self.email {
            parts.push(format!("email={}", e.masked()));
        }
        if let Some(p) = &self.phone {
            parts.push(format!("phone={}", p.masked()));
        }
        for u in &self.unusable {
            parts.push(format!(
                "{}=unusable({})",
                u.identifier.as_str(),
                u.reason.as_str()
            ));
        }
        parts.join(" ")
    }
}

fn non_blank(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Masks a free-text value (a name, say) to its first character.
pub fn mask_text(s: &str) -> String {
    match s.chars().next() {
        Some(c) => format!("{c}***"),
        None => String::new(),
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_set_of_identifiers_is_refused() {
        assert_eq!(
            Identifiers::new(None, Some("  "), Some(""), None),
            Err(IdentifierError::Missing)
        );
    }

    #[test]
    fn cio_prefix_is_stripped_so_both_forms_match_one_person() {
        let a = Identifiers::new(None, Some("cio_03000010"), None, None).unwrap();
        let b = Identifiers::new(None, Some("03000010"), None, None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_unusable_phone_leaves_the_person_identified_by_the_rest() {
        let ids =
            Identifiers::new(Some("u1"), None, Some("a@example.com"), Some("5551234567")).unwrap();
        assert_eq!(ids.email.as_ref().unwrap().as_str(), "a@example.com");
        assert_eq!(ids.phone, None);
        assert_eq!(
            ids.unusable(IdentifierKind::Phone),
            Some(UnusableReason::NoCountryCode)
        );
        assert!(!ids.masked().contains("5551234567"));
        // With a default country the same number is usable.
        let us = PhoneRules {
            default_country: Some(phonenumber::country::Id::US),
        };
        let ids = Identifiers::parse(Some("u1"), None, None, Some("5551234567"), &us).unwrap();
        assert_eq!(ids.phone.unwrap().e164(), "+15551234567");
        assert!(ids.unusable.is_empty());
    }

    #[test]
    fn only_unusable_identifiers_identify_nobody() {
        assert_eq!(
            Identifiers::new(None, None, Some("nope"), Some("5551234567")),
            Err(IdentifierError::Missing)
        );
    }

    #[test]
    fn masked_never_shows_email_or_phone_in_clear() {
        let ids = Identifiers::new(
            Some("42"),
            None,
            Some("Jane.Doe@Example.com"),
            Some("+1 415 555 0100"),
        )
        .unwrap();
        let m = ids.masked();
        assert!(m.contains("id=42"));
        assert!(!m.contains("jane.doe"));
        assert!(!m.contains("4155550100"));
    }
}
