use serde::{Deserialize, Serialize};

/// An email address, trimmed and lowercased: the form every ad platform
/// hashes. Holding one means it has an `@` with text on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_lowercase();
        if s.chars().any(char::is_whitespace) {
            return Err("an email address cannot contain spaces".into());
        }
        match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@') =>
            {
                Ok(Email(s))
            }
            _ => Err("not an email address (expected local@domain.tld)".into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lowercase hex SHA-256 of the normalized address.
    pub fn sha256_hex(&self) -> String {
        super::sha256_hex(&self.0)
    }

    /// `j***@example.com`: enough to recognise, not enough to use.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.split_once('@').unwrap_or((&self.0, ""));
        let first = local.chars().next().unwrap_or('*');
        format!("{first}***@{domain}")
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_trimmed_and_lowercased() {
        assert_eq!(
            Email::parse("  John.Doe@Example.COM ").unwrap().as_str(),
            "john.doe@example.com"
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "john",
            "@example.com",
            "john@",
            "john@example",
            "jo hn@example.com",
            "a@b@c.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn masks_the_local_part() {
        assert_eq!(
            Email::parse("jane@example.com").unwrap().masked(),
            "j***@example.com"
        );
    }
}
