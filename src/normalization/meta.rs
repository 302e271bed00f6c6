//! Meta's customer-list normalization (reference §1.4). Each function takes
//! a raw value and returns the string to hash, or None when nothing usable
//! is left. Hash the result with [`super::sha256_hex`].

/// Trimmed (also of the `.` and control characters the Meta SDK strips) and
/// lowercased. None unless it looks like `local@domain`.
pub fn email(raw: &str) -> Option<String> {
    let s = raw
        .trim_matches(|c: char| matches!(c, ' ' | '\t' | '\r' | '\n' | '\0' | '\x0B' | '.'))
        .to_lowercase();
    let (local, domain) = s.split_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(s)
}

/// Digits only, country code first, no leading zeros and no `+`
/// (`+44 07700` → `447700`). The country code must already be there:
/// stored phones are E.164.
pub fn phone(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    non_empty(digits.trim_start_matches('0').to_owned())
}

/// Lowercase letters only; UTF-8 letters are kept (`José` → `josé`),
/// punctuation, digits and spaces dropped.
pub fn first_name(raw: &str) -> Option<String> {
    letters(raw)
}

pub fn last_name(raw: &str) -> Option<String> {
    letters(raw)
}

pub fn city(raw: &str) -> Option<String> {
    letters(raw)
}

/// Lowercase letters only; a US state's full name becomes its two-letter
/// code (`New York` → `ny`), as Meta asks for US states.
pub fn state(raw: &str) -> Option<String> {
    let s = letters(raw)?;
    match US_STATES.iter().find(|(name, _)| *name == s) {
        Some((_, code)) => Some((*code).to_owned()),
        None => Some(s),
    }
}

/// Lowercase without whitespace; a US ZIP+4 keeps its first five digits.
pub fn zip(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    match s.split_once('-') {
        Some((five, four))
            if five.len() == 5
                && five.bytes().all(|b| b.is_ascii_digit())
                && four.len() == 4
                && four.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(five.to_owned())
        }
        _ => non_empty(s),
    }
}

/// ISO 3166-1 alpha-2, lowercase. A few common spellings are mapped
/// (`USA`, `UK`); anything else that is not two letters is None.
pub fn country(raw: &str) -> Option<String> {
    let s = letters(raw)?;
    let aliased = match s.as_str() {
        "usa" | "unitedstates" | "unitedstatesofamerica" => "us",
        "uk" | "unitedkingdom" | "greatbritain" => "gb",
        other => other,
    };
    (aliased.chars().count() == 2 && aliased.chars().all(|c| c.is_ascii_lowercase()))
        .then(|| aliased.to_owned())
}

/// `m` or `f`, from m/male/f/female in any case.
pub fn gender(raw: &str) -> Option<String> {
    match raw.trim().to_lowercase().as_str() {
        "m" | "male" => Some("m".into()),
        "f" | "female" => Some("f".into()),
        _ => None,
    }
}

/// DOBY: four digits.
pub fn dob_year(raw: &str) -> Option<String> {
    let s = raw.trim();
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_owned())
}

/// DOBM: `01`..`12`.
pub fn dob_month(raw: &str) -> Option<String> {
    two_digits(raw, 1..=12)
}

/// DOBD: `01`..`31`.
pub fn dob_day(raw: &str) -> Option<String> {
    two_digits(raw, 1..=31)
}

/// A date of birth split into Meta's DOBY, DOBM and DOBD values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateOfBirth {
    pub year: String,
    pub month: String,
    pub day: String,
}

/// Parses `YYYY-MM-DD` (or `/`-separated; anything after the day, such as
/// a time, is ignored) or a whole number of Unix seconds, which is how
/// Customer.io stores date attributes.
pub fn date_of_birth(raw: &str) -> Option<DateOfBirth> {
    let s = raw.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return date_of_birth_from_unix(secs);
    }
    let date = s.get(..10)?;
    let mut parts = date.split(['-', '/']);
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    let (year, month, day) = (dob_year(y)?, dob_month(m)?, dob_day(d)?);
    if m.len() != 2 || d.len() != 2 {
        return None;
    }
    Some(DateOfBirth { year, month, day })
}

/// The UTC calendar date of a Unix timestamp in seconds.
pub fn date_of_birth_from_unix(secs: i64) -> Option<DateOfBirth> {
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp(secs, 0)?.date_naive();
    if !(0..=9999).contains(&d.year()) {
        return None;
    }
    Some(DateOfBirth {
        year: format!("{:04}", d.year()),
        month: format!("{:02}", d.month()),
        day: format!("{:02}", d.day()),
    })
}

fn letters(raw: &str) -> Option<String> {
    non_empty(
        raw.chars()
            .filter(|c| c.is_alphabetic())
            .flat_map(char::to_lowercase)
            .collect(),
    )
}

fn two_digits(raw: &str, range: std::ops::RangeInclusive<u32>) -> Option<String> {
    let s = raw.trim();
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    range.contains(&n).then(|| format!("{n:02}"))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// US states, DC and territories, as [`letters`] leaves their names.
const US_STATES: &[(&str, &str)] = &[
    ("alabama", "al"),
    ("alaska", "ak"),
    ("arizona", "az"),
    ("arkansas", "ar"),
    ("california", "ca"),
    ("colorado", "co"),
    ("connecticut", "ct"),
    ("delaware", "de"),
    ("districtofcolumbia", "dc"),
    ("florida", "fl"),
    ("georgia", "ga"),
    ("hawaii", "hi"),
    ("idaho", "id"),
    ("illinois", "il"),
    ("indiana", "in"),
    ("iowa", "ia"),
    ("kansas", "ks"),
    ("kentucky", "ky"),
    ("louisiana", "la"),
    ("maine", "me"),
    ("maryland", "md"),
    ("massachusetts", "ma"),
    ("michigan", "mi"),
    ("minnesota", "mn"),
    ("mississippi", "ms"),
    ("missouri", "mo"),
    ("montana", "mt"),
    ("nebraska", "ne"),
    ("nevada", "nv"),
    ("newhampshire", "nh"),
    ("newjersey", "nj"),
    ("newmexico", "nm"),
    ("newyork", "ny"),
    ("northcarolina", "nc"),
    ("northdakota", "nd"),
    ("ohio", "oh"),
    ("oklahoma", "ok"),
    ("oregon", "or"),
    ("pennsylvania", "pa"),
    ("rhodeisland", "ri"),
    ("southcarolina", "sc"),
    ("southdakota", "sd"),
    ("tennessee", "tn"),
    ("texas", "tx"),
    ("utah", "ut"),
    ("vermont", "vt"),
    ("virginia", "va"),
    ("washington", "wa"),
    ("westvirginia", "wv"),
    ("wisconsin", "wi"),
    ("wyoming", "wy"),
    ("puertorico", "pr"),
    ("guam", "gu"),
    ("virginislands", "vi"),
    ("americansamoa", "as"),
    ("northernmarianaislands", "mp"),
];

#[cfg(test)]
mod tests {
    use super::super::sha256_hex;
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(email("  Test@Example.COM \n"), some("test@example.com"));
        assert_eq!(email("\t\0test@example.com.\x0B"), some("test@example.com"));
        assert_eq!(email(" "), None);
        assert_eq!(email("not-an-email"), None);
        assert_eq!(email("@example.com"), None);
    }

    #[test]
    fn email_hash_matches_the_published_vector() {
        let e = email(" TEST@example.com ").unwrap();
        assert_eq!(
            sha256_hex(&e),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
    }

    #[test]
    fn phone_is_digits_with_country_code_and_no_plus() {
        assert_eq!(phone("+15551234567"), some("15551234567"));
        assert_eq!(phone("+1 (555) 123-4567"), some("15551234567"));
        assert_eq!(phone("0044 7700 900123"), some("447700900123"));
        assert_eq!(phone("+"), None);
        assert_eq!(phone("000"), None);
        // printf '15551234567' | sha256sum
        assert_eq!(
            sha256_hex(&phone("+15551234567").unwrap()),
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
    }

    #[test]
    fn names_keep_only_lowercase_letters() {
        assert_eq!(first_name(" John "), some("john"));
        assert_eq!(first_name("Mary-Jane"), some("maryjane"));
        assert_eq!(first_name("José"), some("josé"));
        assert_eq!(last_name("O'Brien Jr."), some("obrienjr"));
        assert_eq!(last_name("ÄLVAREZ"), some("älvarez"));
        assert_eq!(first_name("42 !"), None);
        // printf 'john' | sha256sum ; printf 'doe' | sha256sum ; printf 'josé' | sha256sum
        assert_eq!(
            sha256_hex(&first_name("John").unwrap()),
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            sha256_hex(&last_name("Doe").unwrap()),
            "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
        );
        assert_eq!(
            sha256_hex(&first_name("José").unwrap()),
            "d994e1d001886fe5b45b1267bd1fa2b752ac50742579bd3dad7b2a2aa0ed6866"
        );
    }

    #[test]
    fn city_and_state_drop_spaces_and_punctuation() {
        assert_eq!(city("San Francisco"), some("sanfrancisco"));
        assert_eq!(city("St. Paul"), some("stpaul"));
        assert_eq!(state("CA"), some("ca"));
        assert_eq!(state("California"), some("ca"));
        assert_eq!(state("New York"), some("ny"));
        assert_eq!(state("Île-de-France"), some("îledefrance"));
        assert_eq!(state(" "), None);
    }

    #[test]
    fn zip_is_lowercase_without_spaces_and_us_zip4_is_cut() {
        assert_eq!(zip("94107"), some("94107"));
        assert_eq!(zip("94107-1234"), some("94107"));
        assert_eq!(zip("SW1A 1AA"), some("sw1a1aa"));
        assert_eq!(zip("1000-001"), some("1000-001"));
        assert_eq!(zip("  "), None);
    }

    #[test]
    fn country_is_two_lowercase_letters() {
        assert_eq!(country("US"), some("us"));
        assert_eq!(country(" fr "), some("fr"));
        assert_eq!(country("USA"), some("us"));
        assert_eq!(country("UK"), some("gb"));
        assert_eq!(country("Germany"), None);
        assert_eq!(country(""), None);
    }

    #[test]
    fn gender_is_m_or_f() {
        assert_eq!(gender("M"), some("m"));
        assert_eq!(gender(" male "), some("m"));
        assert_eq!(gender("Female"), some("f"));
        assert_eq!(gender("f"), some("f"));
        assert_eq!(gender("other"), None);
        assert_eq!(gender(""), None);
    }

    #[test]
    fn birth_date_parts_are_zero_padded() {
        assert_eq!(dob_year("1990"), some("1990"));
        assert_eq!(dob_year("90"), None);
        assert_eq!(dob_month("3"), some("03"));
        assert_eq!(dob_month("12"), some("12"));
        assert_eq!(dob_month("13"), None);
        assert_eq!(dob_month("0"), None);
        assert_eq!(dob_day("7"), some("07"));
        assert_eq!(dob_day("31"), some("31"));
        assert_eq!(dob_day("32"), None);
        assert_eq!(dob_day("x"), None);
    }

    #[test]
    fn date_of_birth_parses_iso_dates_and_unix_seconds() {
        let want = DateOfBirth {
            year: "1990".into(),
            month: "03".into(),
            day: "07".into(),
        };
        assert_eq!(date_of_birth("1990-03-07"), Some(want.clone()));
        assert_eq!(date_of_birth("1990/03/07"), Some(want.clone()));
        assert_eq!(date_of_birth("1990-03-07T12:00:00Z"), Some(want.clone()));
        // date -u -d 1990-03-07T12:00:00Z +%s
        assert_eq!(date_of_birth("636811200"), Some(want));
        assert_eq!(
            date_of_birth("-86400"),
            Some(DateOfBirth {
                year: "1969".into(),
                month: "12".into(),
                day: "31".into()
            })
        );
        assert_eq!(date_of_birth("1990-13-07"), None);
        assert_eq!(date_of_birth("1990-3-7"), None);
        assert_eq!(date_of_birth("yesterday"), None);
        // printf '1990' | sha256sum
        assert_eq!(
            sha256_hex("1990"),
            "a7be8e1fe282a37cd666e0632b17d933fa13f21addf4798fc0455bc166e2488c"
        );
    }
}
