//! The engine settings every destination has — how big a batch may be, how
//! many requests may be in flight, how fast, how long to wait for fuller
//! batches, how long a request may take, how retries back off — declared
//! once here. A destination type gives its defaults (and its platform's
//! hard batch limit); a `[[destinations]]` table overrides any of them with
//! the same flat keys whatever its type; one function validates them.

use std::time::Duration;

use serde::Deserialize;

/// The resolved settings the engine enforces for one destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliverySettings {
    /// Most people in one request.
    pub max_batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per second (the platform's quota).
    pub requests_per_second: f64,
    /// Wait at least this long for a batch to fill (0: send at once).
    pub min_linger: Duration,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// First backoff step.
    pub base_backoff: Duration,
    /// Longest backoff between retries of the same rows.
    pub max_backoff: Duration,
}

/// The keys a `[[destinations]]` table may set to override the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryOverrides {
    pub max_batch: Option<usize>,
    pub concurrency: Option<usize>,
    pub requests_per_second: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub min_linger: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub base_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
}

impl DeliveryOverrides {
    /// The table keys that belong here rather than to the platform.
    pub const KEYS: &'static [&'static str] = &[
        "max_batch",
        "concurrency",
        "requests_per_second",
        "min_linger",
        "request_timeout",
        "base_backoff",
        "max_backoff",
    ];
}

impl DeliverySettings {
    /// These settings with any overrides applied.
    pub fn with(self, o: &DeliveryOverrides) -> Self {
        DeliverySettings {
            max_batch: o.max_batch.unwrap_or(self.max_batch),
            concurrency: o.concurrency.unwrap_or(self.concurrency),
            requests_per_second: o.requests_per_second.unwrap_or(self.requests_per_second),
            min_linger: o.min_linger.unwrap_or(self.min_linger),
            request_timeout: o.request_timeout.unwrap_or(self.request_timeout),
            base_backoff: o.base_backoff.unwrap_or(self.base_backoff),
            max_backoff: o.max_backoff.unwrap_or(self.max_backoff),
        }
    }

    /// Problems, each starting with its key; `platform_max_batch` is the
    /// most rows the platform takes in one request.
    pub fn problems(&self, platform_max_batch: usize) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=platform_max_batch).contains(&self.max_batch) {
            p.push(format!(
                "max_batch: must be between 1 and {platform_max_batch}"
            ));
        }
        if self.concurrency == 0 {
            p.push("concurrency: must be at least 1".into());
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            p.push("requests_per_second: must be greater than 0".into());
        }
        if self.request_timeout.is_zero() {
            p.push("request_timeout: must be greater than 0s".into());
        }
        if self.base_backoff.is_zero() {
            p.push("base_backoff: must be greater than 0s".into());
        }
        if self.max_backoff < self.base_backoff {
            p.push("max_backoff: must not be shorter than base_backoff".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: DeliverySettings = DeliverySettings {
        max_batch: 100,
        concurrency: 2,
        requests_per_second: 5.0,
        min_linger: Duration::ZERO,
        request_timeout: Duration::from_secs(30),
        base_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
    };

    #[test]
    fn overrides_replace_only_what_they_set() {
        let o = DeliveryOverrides {
            max_batch: Some(10),
            min_linger: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let s = DEFAULTS.with(&o);
        assert_eq!(s.max_batch, 10);
        assert_eq!(s.min_linger, Duration::from_secs(2));
        assert_eq!(s.concurrency, 2);
        assert_eq!(s.max_backoff, Duration::from_secs(300));
    }

    #[test]
    fn every_bad_setting_names_its_key() {
        let s = DeliverySettings {
            max_batch: 101,
            concurrency: 0,
            requests_per_second: 0.0,
            min_linger: Duration::ZERO,
            request_timeout: Duration::ZERO,
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(1),
        };
        let p = s.problems(100);
        for key in [
            "max_batch: must be between 1 and 100",
            "concurrency",
            "requests_per_second",
            "request_timeout",
            "max_backoff",
        ] {
            assert!(p.iter().any(|x| x.starts_with(key)), "{key}: {p:?}");
        }
        assert!(DEFAULTS.problems(100).is_empty());
    }
}
