//! Google's user-data normalization for the Data Manager API, from its
//! formatting guide:
//! <https://developers.google.com/data-manager/api/devguides/concepts/formatting>.
//! Each function returns the string to hash (or, for region and postal
//! code, to send in clear), or None when nothing usable is left. Hash with
//! [`super::sha256_hex`] (lowercase hex; requests say `encoding: "HEX"`).

/// Lowercased, all whitespace removed (the guide trims leading, trailing
/// and intermediate whitespace). For gmail.com and googlemail.com only,
/// every `.` and any `+suffix` of the local part are dropped, because
/// Gmail ignores them and Google matches on the canonical address; other
/// domains may treat them as significant, so they are kept.
pub fn email(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    if matches!(domain, "gmail.com" | "googlemail.com") {
        let local = local.split('+').next().unwrap_or_default().replace('.', "");
        if local.is_empty() {
            return None;
        }
        return Some(format!("{local}@{domain}"));
    }
    Some(s)
}

/// E.164 with its `+` (`+18005550100`): Google hashes the `+` too, so
/// `18005550100` would never match. Stored phones are already E.164;
/// separators are dropped, anything else makes the value unusable.
pub fn phone(raw: &str) -> Option<String> {
    let s = raw.trim();
    let rest = s.strip_prefix('+')?;
    let digits: String = rest
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then(|| format!("+{digits}"))
}

/// Honorifics the guide says not to include ("Don't include prefixes such
/// as Mrs."). Only a leading word that is one of these is dropped.
const NAME_PREFIXES: &[&str] = &["mr", "mrs", "ms", "miss", "mx", "dr", "prof"];
/// Generational and professional suffixes ("Don't include suffixes such as
/// Jr."). Only a trailing word that is one of these is dropped.
const NAME_SUFFIXES: &[&str] = &["jr", "sr", "ii", "iii", "iv", "phd", "md", "esq"];

/// Lowercased and trimmed, without a leading honorific (`Mrs. Ann` →
/// `ann`). The guide asks for nothing else: inner spaces, hyphens and
/// accents are kept (`Mary-Jane` → `mary-jane`).
pub fn given_name(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    let s = match s.split_once(char::is_whitespace) {
        Some((first, rest)) if NAME_PREFIXES.contains(&first.trim_end_matches('.')) => {
            rest.trim().to_owned()
        }
        _ => s,
    };
    non_empty(s)
}

/// Lowercased and trimmed, without a trailing suffix (`Smith Jr.` →
/// `smith`, `Smith, Jr.` → `smith`).
pub fn family_name(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    let s = match s.rsplit_once(char::is_whitespace) {
        Some((rest, last)) if NAME_SUFFIXES.contains(&last.trim_end_matches('.')) => {
            rest.trim().trim_end_matches(',').trim().to_owned()
        }
        _ => s,
    };
    non_empty(s)
}

/// ISO 3166-1 alpha-2, uppercase as Google's examples write it; sent in
/// clear (never hashed).
pub fn region_code(raw: &str) -> Option<String> {
    let s = raw.trim().to_ascii_uppercase();
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())).then_some(s)
}

/// Trimmed; sent in clear. US codes may be 5 digits or ZIP+4 (the guide
/// says the extension may improve matching), so both are kept as given.
pub fn postal_code(raw: &str) -> Option<String> {
    non_empty(raw.trim().to_owned())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::super::sha256_hex;
    use super::*;

    #[test]
    fn gmail_addresses_lose_dots_and_plus_suffixes() {
        // The guide's own example.
        assert_eq!(
            email("cloudy.sanfrancisco+shopping@gmail.com").as_deref(),
            Some("cloudysanfrancisco@gmail.com")
        );
        assert_eq!(
            email(" J.Doe+ads@GoogleMail.com ").as_deref(),
            Some("jdoe@googlemail.com")
        );
    }

    #[test]
    fn other_domains_keep_dots_and_plus() {
        // The guide's own example.
        assert_eq!(
            email("user.name+NYC@Example.com").as_deref(),
            Some("user.name+nyc@example.com")
        );
        assert_eq!(
            email("  Ann Lee@example.com\t").as_deref(),
            Some("annlee@example.com")
        );
        assert_eq!(email("no-at-sign"), None);
        assert_eq!(email("@example.com"), None);
        assert_eq!(email("+x@gmail.com"), None);
    }

    #[test]
    fn phones_are_e164_with_the_plus() {
        // The guide's example: (800)555-0100 → +18005550100.
        assert_eq!(phone("+1 (800) 555-0100").as_deref(), Some("+18005550100"));
        assert_eq!(phone("+18005550100").as_deref(), Some("+18005550100"));
        assert_eq!(phone("18005550100"), None, "no country code marker");
        assert_eq!(phone("+1800555O100"), None);
        assert_eq!(phone("+012345678"), None);
    }

    #[test]
    fn names_are_lowercased_trimmed_without_prefixes_or_suffixes() {
        assert_eq!(given_name("  Ann ").as_deref(), Some("ann"));
        assert_eq!(given_name("Mrs. Ann").as_deref(), Some("ann"));
        assert_eq!(given_name("Mary Jane").as_deref(), Some("mary jane"));
        assert_eq!(given_name("José").as_deref(), Some("josé"));
        assert_eq!(family_name("Smith Jr.").as_deref(), Some("smith"));
        assert_eq!(family_name("Smith, Jr.").as_deref(), Some("smith"));
        assert_eq!(family_name("O'Neil").as_deref(), Some("o'neil"));
        assert_eq!(given_name("   "), None);
    }

    #[test]
    fn region_and_postal_codes_are_sent_in_clear() {
        assert_eq!(region_code(" us ").as_deref(), Some("US"));
        assert_eq!(region_code("USA"), None);
        assert_eq!(postal_code(" 94045-1234 ").as_deref(), Some("94045-1234"));
        assert_eq!(postal_code(" "), None);
    }

    #[test]
    fn hashed_vectors() {
        // The guide publishes no hash vectors; these were computed with
        // `printf '%s' VALUE | sha256sum` and pin the whole pipeline.
        assert_eq!(
            sha256_hex(&email("Cloudy.SanFrancisco+shopping@gmail.com").unwrap()),
            "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"
        );
        assert_eq!(
            sha256_hex(&email("test@example.com").unwrap()),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(
            sha256_hex(&phone("+1 555 123 4567").unwrap()),
            "8a59780bb8cd2ba022bfa5ba2ea3b6e07af17a7d8b30c1f9b3390e36f69019e4"
        );
    }
}
