//! TikTok's customer-file normalization
//! (<https://ads.tiktok.com/help/article/list-of-supported-ids-and-formats-for-a-customer-file>).
//! Returns the string to hash with [`super::sha256_hex`], or None.
//!
//! TikTok's help pages disagree on phones: one version asks for E.164 with
//! its `+`, another for digits with the country code and no `+`. Which one
//! matches is not confirmed, so it is a setting ([`PhoneFormat`]).

use serde::{Deserialize, Serialize};

/// How a phone is written before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneFormat {
    /// `+15551234567` (the default: it is what the current help page
    /// shows, and what stored phones already are).
    #[default]
    E164,
    /// `15551234567`: digits with the country code, no `+`, no leading
    /// zeros.
    Digits,
}

/// Lowercased, whitespace removed. TikTok asks for nothing more (no Gmail
/// dot rules), so nothing more is done.
pub fn email(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let (local, domain) = s.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(s)
}

/// The phone in `format`. The input must carry its country code (`+…`),
/// as stored phones do; separators are dropped.
pub fn phone(raw: &str, format: PhoneFormat) -> Option<String> {
    let rest = raw.trim().strip_prefix('+')?;
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let junk = rest
        .chars()
        .any(|c| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.')));
    let digits = digits.trim_start_matches('0');
    if junk || !(7..=15).contains(&digits.len()) {
        return None;
    }
    Some(match format {
        PhoneFormat::E164 => format!("+{digits}"),
        PhoneFormat::Digits => digits.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::sha256_hex;
    use super::*;

    #[test]
    fn emails_are_lowercased_without_whitespace() {
        assert_eq!(
            email("  Test@Example.com ").as_deref(),
            Some("test@example.com")
        );
        // Gmail dots and +tags are kept: TikTok documents no such rule.
        assert_eq!(email("a.b+c@gmail.com").as_deref(), Some("a.b+c@gmail.com"));
        assert_eq!(email("nope"), None);
    }

    #[test]
    fn phones_in_both_formats() {
        assert_eq!(
            phone("+1 555-123-4567", PhoneFormat::E164).as_deref(),
            Some("+15551234567")
        );
        assert_eq!(
            phone("+1 555-123-4567", PhoneFormat::Digits).as_deref(),
            Some("15551234567")
        );
        assert_eq!(phone("5551234567", PhoneFormat::E164), None);
        assert_eq!(phone("+1555x1234567", PhoneFormat::Digits), None);
    }

    #[test]
    fn hashed_vectors_for_both_phone_forms() {
        // Computed with `printf '%s' VALUE | sha256sum`; TikTok publishes none.
        assert_eq!(
            sha256_hex(&email("Test@Example.com").unwrap()),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(
            sha256_hex(&phone("+15551234567", PhoneFormat::E164).unwrap()),
            "8a59780bb8cd2ba022bfa5ba2ea3b6e07af17a7d8b30c1f9b3390e36f69019e4"
        );
        assert_eq!(
            sha256_hex(&phone("+15551234567", PhoneFormat::Digits).unwrap()),
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
    }
}
