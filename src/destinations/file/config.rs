//! `[[destinations]] type = "file"`: JSON Lines of changes and a members
//! file per audience, in a local directory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::destinations::{DeliverySettings, FieldSpec};

/// The most people koala writes in one batch.
pub const MAX_ROWS_LIMIT: usize = 100_000;

/// Any mapped attribute is written (`takes_any_field`).
pub const FIELDS: &[FieldSpec] = &[];

/// Engine defaults: one batch at a time (the members file of an audience
/// is read, changed and replaced whole), up to 1,000 rows, no rate to
/// speak of (a local disk).
pub const DELIVERY: DeliverySettings = DeliverySettings {
    max_batch: 1000,
    concurrency: 1,
    requests_per_second: 100.0,
    min_linger: Duration::ZERO,
    request_timeout: Duration::from_secs(30),
    base_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(60),
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where `{audience}.jsonl` and `{audience}.members.json` live;
    /// created if missing. Relative to koala's working directory.
    pub directory: String,
}

impl FileConfig {
    pub fn new(directory: impl Into<String>) -> Self {
        FileConfig {
            directory: directory.into(),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.directory.trim().is_empty() {
            p.push("directory: must not be empty".into());
        }
        p
    }
}

/// An audience name as a file name: `/`, `\` and control characters become
/// `_`, and a name of dots only is refused by prefixing `_`.
pub fn file_stem(audience: &str) -> String {
    let s: String = audience
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_is_a_problem() {
        assert_eq!(
            FileConfig::new(" ").problems(),
            ["directory: must not be empty"]
        );
        assert!(FileConfig::new("data/out").problems().is_empty());
    }

    #[test]
    fn audience_names_stay_in_the_directory() {
        assert_eq!(file_stem("CIO__Cart"), "CIO__Cart");
        assert_eq!(file_stem("../etc/x"), ".._etc_x");
        assert_eq!(file_stem(".."), "_..");
    }
}
