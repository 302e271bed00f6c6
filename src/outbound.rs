//! Calls koala makes to other services (destinations, Customer.io's App
//! API): one classification of HTTP answers and transport failures that
//! every caller starts from and refines with its platform's own codes, one
//! reading of `Retry-After`, one way to build a client.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// What an HTTP status says before a platform's body says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 429: too many requests; try again later.
    Throttled,
    /// 408 and 5xx: the server failed for now; try again later.
    Transient,
    /// 401 and 403: the credentials are wrong or lack a permission; no
    /// request will succeed until someone acts.
    Unauthorized,
    /// Another 4xx: this request will never succeed as it is.
    Refused,
    /// Anything else (a redirect not followed, a 1xx): something between
    /// koala and the service is misconfigured.
    Unexpected,
}

impl StatusClass {
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => StatusClass::Success,
            429 => StatusClass::Throttled,
            408 | 500..=599 => StatusClass::Transient,
            401 | 403 => StatusClass::Unauthorized,
            400..=499 => StatusClass::Refused,
            _ => StatusClass::Unexpected,
        }
    }

    /// Worth another try later (throttled or transient).
    pub fn is_retryable(self) -> bool {
        matches!(self, StatusClass::Throttled | StatusClass::Transient)
    }
}

/// Why a request did not get an answer. Every kind is worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    Timeout,
    Connect,
    /// The answer broke off while being read.
    Body,
    Other,
}

impl TransportFailure {
    pub fn of(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            TransportFailure::Timeout
        } else if e.is_connect() {
            TransportFailure::Connect
        } else if e.is_body() || e.is_decode() {
            TransportFailure::Body
        } else {
            TransportFailure::Other
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TransportFailure::Timeout => "timed out",
            TransportFailure::Connect => "could not connect",
            TransportFailure::Body => "broke off reading the answer",
            TransportFailure::Other => "failed",
        }
    }
}

/// A failed request's description: its kind and the innermost cause (the
/// OS or TLS problem). reqwest's own text names the URL, which can hold a
/// customer id or an email, so only the cause is kept.
pub fn describe_transport(e: &reqwest::Error) -> String {
    let kind = TransportFailure::of(e).describe();
    let mut innermost = None;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        innermost = Some(c);
        cause = c.source();
    }
    match innermost {
        Some(c) => format!("{kind}: {c}"),
        None => kind.to_owned(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?)
}

pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A status, the `Retry-After` it carried and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl Answer {
    pub fn class(&self) -> StatusClass {
        StatusClass::of(self.status)
    }

    /// `"{who} answered HTTP {status}"`, then at most 200 printable
    /// characters of what it said: a reason for the operator that holds
    /// the service's words, never what koala sent.
    pub fn describe(&self, who: &str) -> String {
        let said: String = String::from_utf8_lossy(&self.body)
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        match said.trim() {
            "" => format!("{who} answered HTTP {}", self.status),
            said => format!("{who} answered HTTP {}: {said}", self.status),
        }
    }
}

/// Sends a request and reads its whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let resp = request.send().await?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let body = resp.bytes().await?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// A client with koala's user agent, `timeout` per request and a connect
/// timeout no longer than 10 s.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("koala/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_classes() {
        assert_eq!(StatusClass::of(204), StatusClass::Success);
        assert_eq!(StatusClass::of(429), StatusClass::Throttled);
        for s in [408, 500, 502, 503, 599] {
            assert_eq!(StatusClass::of(s), StatusClass::Transient, "{s}");
            assert!(StatusClass::of(s).is_retryable());
        }
        assert_eq!(StatusClass::of(401), StatusClass::Unauthorized);
        assert_eq!(StatusClass::of(403), StatusClass::Unauthorized);
        assert_eq!(StatusClass::of(400), StatusClass::Refused);
        assert_eq!(StatusClass::of(404), StatusClass::Refused);
        assert!(!StatusClass::of(400).is_retryable());
        assert_eq!(StatusClass::of(302), StatusClass::Unexpected);
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
