use phonenumber::country::Id as Country;
use phonenumber::Mode;
use serde::{Deserialize, Serialize};

use super::UnusableReason;

/// A phone number in E.164 form (`+` then 8 to 15 digits): the form every
/// ad platform normalizes from. Customer.io workspaces often store numbers
/// without their country code; such a number is only usable when a default
/// country says which one it is (see [`PhoneRules`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

/// How national numbers (no `+` or `00` prefix) are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhoneRules {
    /// `identity.default_phone_country`: the country a number without a
    /// country code belongs to. Without it such numbers are unusable.
    pub default_country: Option<Country>,
}

impl Phone {
    /// Parses a number that carries its country code (strict: no default).
    pub fn parse(raw: &str) -> Result<Self, UnusableReason> {
        Self::parse_with(raw, &PhoneRules::default())
    }

    /// Parses with libphonenumber's rules (through the `phonenumber`
    /// crate): international prefixes, trunk prefixes and per-country
    /// lengths. A national number takes `rules.default_country`.
    pub fn parse_with(raw: &str, rules: &PhoneRules) -> Result<Self, UnusableReason> {
        let trimmed = raw.trim();
        if trimmed.chars().any(|c| c.is_ascii_alphabetic()) {
            // libphonenumber reads vanity letters as digits; a letter in a
            // stored phone is far more often a typo or a note.
            return Err(UnusableReason::NotAPhoneNumber);
        }
        let international = match trimmed.strip_prefix("00") {
            Some(rest) => Some(format!("+{rest}")),
            None if trimmed.starts_with('+') => Some(trimmed.to_owned()),
            None => None,
        };
        let parsed = match (&international, rules.default_country) {
            (Some(number), _) => phonenumber::parse(None, number),
            (None, Some(country)) => phonenumber::parse(Some(country), trimmed),
            (None, None) => {
                let digits = trimmed.chars().filter(char::is_ascii_digit).count();
                return Err(if digits == 0 {
                    UnusableReason::NotAPhoneNumber
                } else {
                    UnusableReason::NoCountryCode
                });
            }
        };
        let number = parsed.map_err(|_| UnusableReason::NotAPhoneNumber)?;
        let e164 = number.format().mode(Mode::E164).to_string();
        let digits = e164.len().saturating_sub(1);
        if !e164.starts_with('+') || !(8..=15).contains(&digits) {
            return Err(UnusableReason::NotAPhoneNumber);
        }
        Ok(Phone(e164))
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
        Phone::parse(&s).map_err(|r| r.as_str().to_owned())
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

    fn us() -> PhoneRules {
        PhoneRules {
            default_country: Some(Country::US),
        }
    }

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
    fn a_national_number_needs_a_default_country() {
        assert_eq!(
            Phone::parse("5551234567"),
            Err(UnusableReason::NoCountryCode)
        );
        assert_eq!(
            Phone::parse("415 555 0100"),
            Err(UnusableReason::NoCountryCode)
        );
        assert_eq!(
            Phone::parse_with("5551234567", &us()).unwrap().e164(),
            "+15551234567"
        );
        assert_eq!(
            Phone::parse_with("(415) 555-0100", &us()).unwrap().e164(),
            "+14155550100"
        );
        // A trunk prefix is dropped by the country's rules.
        let gb = PhoneRules {
            default_country: Some(Country::GB),
        };
        assert_eq!(
            Phone::parse_with("07700 900123", &gb).unwrap().e164(),
            "+447700900123"
        );
        // A number with its country code ignores the default.
        assert_eq!(
            Phone::parse_with("+44 7700 900123", &us()).unwrap().e164(),
            "+447700900123"
        );
    }

    #[test]
    fn what_is_no_phone_number_is_unusable() {
        assert_eq!(Phone::parse("+12"), Err(UnusableReason::NotAPhoneNumber));
        assert_eq!(
            Phone::parse("+1 call me"),
            Err(UnusableReason::NotAPhoneNumber)
        );
        assert_eq!(Phone::parse("--"), Err(UnusableReason::NotAPhoneNumber));
        assert_eq!(
            Phone::parse_with("12", &us()),
            Err(UnusableReason::NotAPhoneNumber)
        );
    }

    #[test]
    fn masks_all_but_the_last_four_digits() {
        assert_eq!(
            Phone::parse("+14155550100").unwrap().masked(),
            "+*******0100"
        );
    }
}
