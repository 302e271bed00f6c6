use serde::{Deserialize, Serialize};

/// A phone number in E.164 form (`+` then 8 to 15 digits). Customer.io
/// stores phone identifiers in E.164; symbols and spaces are dropped here.
/// A number without a country code cannot be made E.164 and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let international = trimmed.starts_with('+') || trimmed.starts_with("00");
        if trimmed.chars().any(|c| c.is_ascii_alphabetic()) {
            return Err("a phone number cannot contain letters".into());
        }
        let mut digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        if trimmed.starts_with("00") {
            digits.drain(..2);
        }
        if !international {
            return Err(
                "a phone number needs its country code in E.164 form (+15551234567)".into(),
            );
        }
        let digits = digits.trim_start_matches('0');
        if !(8..=15).contains(&digits.len()) {
            return Err("a phone number has 8 to 15 digits with its country code".into());
        }
        Ok(Phone(format!("+{digits}")))
    }

    /// E.164 with the leading `+`.
    pub fn e164(&self) -> &str {
        &self.0
    }

    /// Country code and number, digits only (Meta's form).
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    pub fn sha256_hex(&self) -> String {
        super::sha256_hex(&self.0)
    }

    /// `+1******0100`: the last four digits only.
    pub fn masked(&self) -> String {
        let d = self.digits();
        let tail = &d[d.len().saturating_sub(4)..];
        format!("+{}{}", "*".repeat(d.len().saturating_sub(4)), tail)
    }
}

impl TryFrom<String> for Phone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Phone::parse(&s)
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_and_spaces_are_dropped() {
        assert_eq!(
            Phone::parse("+1 (415) 555-0100").unwrap().e164(),
            "+14155550100"
        );
        assert_eq!(
            Phone::parse("0044 7700 900123").unwrap().e164(),
            "+447700900123"
        );
    }

    #[test]
    fn a_number_without_country_code_is_refused() {
        assert!(Phone::parse("415 555 0100").is_err());
        assert!(Phone::parse("+12").is_err());
        assert!(Phone::parse("+1 call me").is_err());
    }

    #[test]
    fn masks_all_but_the_last_four_digits() {
        assert_eq!(
            Phone::parse("+14155550100").unwrap().masked(),
            "+*******0100"
        );
    }
}
