//! Customer.io App API client for resync: segments, segment membership and
//! customer attributes.
//!
//! One client is built per process and cloned freely; every clone shares a
//! single rate limiter, because Customer.io's limit (10 requests/second) is
//! per workspace, not per caller. 429, 5xx and network failures are retried
//! with jittered exponential backoff, honouring `Retry-After`.

mod error;
mod model;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::Retryable;
use bytes::Bytes;
use futures::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use url::Url;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::outbound::{self, StatusClass};
use crate::secret::Secret;

pub use error::AppApiError;
pub use model::{
    bare_cio_id, parse_customers, parse_membership_page, Customer, IdType, Member, MembershipPage,
    Segment, MAX_BULK_LOOKUP, MAX_MEMBERSHIP_LIMIT,
};

use model::{CustomerCount, CustomerEnvelope, SegmentEnvelope, SegmentList};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error body to keep in [`AppApiError::Status`].
const ERROR_BODY_CHARS: usize = 300;

/// How failed requests are retried. `Default` is production; tests shorten it.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: usize,
    /// The first backoff delay; later ones double, with jitter.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// A larger `Retry-After` is cut to this, so a bad header cannot stall a resync.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// The App API client. Cheap to clone; clones share the rate limiter.
#[derive(Clone)]
pub struct AppApiClient {
    inner: Arc<Inner>,
    retry: RetryPolicy,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    limiter: DefaultDirectRateLimiter,
}

impl fmt::Debug for AppApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppApiClient")
            .field("base", &self.inner.base.as_str())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl AppApiClient {
    /// `base_url` is e.g. `https://api.customer.io` (a trailing `/v1` is
    /// accepted too). `requests_per_second` is the client-side limit.
    pub fn new(base_url: &str, api_key: Secret, requests_per_second: u32) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)
            .with_context(|| format!("Customer.io App API base URL {base_url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https") && !base.cannot_be_a_base(),
            "Customer.io App API base URL {base_url:?} must be http(s)"
        );
        anyhow::ensure!(
            !api_key.expose().trim().is_empty(),
            "the Customer.io App API key is empty"
        );

        let mut auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose().trim()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "the Customer.io App API key holds characters not allowed in a header"
                )
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("koala/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the App API HTTP client")?;

        Ok(AppApiClient {
            inner: Arc::new(Inner {
                http,
                base,
                limiter: RateLimiter::direct(pacing_quota(requests_per_second)?),
            }),
            retry: RetryPolicy::default(),
        })
    }

    /// The client the config describes; an error if no App API key is set.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let key = config
            .customerio
            .app_api_key
            .clone()
            .context("customerio.app_api_key is not set")?;
        let client = Self::new(
            &config.app_api_base_url(),
            key,
            config.customerio.app_api_requests_per_second,
        )?;
        Ok(client.with_retry_policy(RetryPolicy {
            max_attempts: config.customerio.app_api_max_attempts.max(1) as usize,
            ..RetryPolicy::default()
        }))
    }

    /// The same client (same limiter) with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// `GET /v1/segments`.
    pub async fn list_segments(&self) -> Result<Vec<Segment>, AppApiError> {
        let url = self.url(&["segments"], &[]);
        let list: SegmentList = self.get_json("list_segments", "segment list", url).await?;
        Ok(list.segments)
    }

    /// `GET /v1/segments/{id}`; [`AppApiError::NotFound`] for an unknown segment.
    pub async fn segment(&self, segment_id: u64) -> Result<Segment, AppApiError> {
        let url = self.url(&["segments", &segment_id.to_string()], &[]);
        let what = format!("segment {segment_id}");
        let env: SegmentEnvelope = self.get_json("segment", &what, url).await?;
        Ok(env.segment)
    }

    /// `GET /v1/segments/{id}/customer_count`.
    pub async fn customer_count(&self, segment_id: u64) -> Result<u64, AppApiError> {
        let url = self.url(
            &["segments", &segment_id.to_string(), "customer_count"],
            &[],
        );
        let what = format!("segment {segment_id}");
        let count: CustomerCount = self.get_json("customer_count", &what, url).await?;
        Ok(count.count)
    }

    /// One page of `GET /v1/segments/{id}/membership`. `start` is the
    /// previous page's `next` (None for the first page); `limit` is clamped
    /// to 1..=30000.
    pub async fn membership_page(
        &self,
        segment_id: u64,
        start: Option<&str>,
        limit: u32,
    ) -> Result<MembershipPage, AppApiError> {
        let limit = limit.clamp(1, MAX_MEMBERSHIP_LIMIT).to_string();
        let mut query = vec![("limit", limit.as_str())];
        if let Some(start) = start {
            query.insert(0, ("start", start));
        }
        let url = self.url(&["segments", &segment_id.to_string(), "membership"], &query);
        let what = format!("segment {segment_id}");
        let body = self.get("membership", &what, url).await?;
        model::parse_membership_page(&body).map_err(|e| AppApiError::Decode {
            endpoint: "membership",
            message: e.to_string(),
        })
    }

    /// A pager over every membership page of a segment.
    pub fn membership_pager(&self, segment_id: u64, limit: u32) -> MembershipPager {
        MembershipPager {
            client: self.clone(),
            segment_id,
            limit,
            cursor: None,
            done: false,
        }
    }

    /// Every membership page of a segment as a stream; it ends after the
    /// last page and after the first error.
    pub fn membership_stream(
        &self,
        segment_id: u64,
        limit: u32,
    ) -> impl Stream<Item = Result<MembershipPage, AppApiError>> + Send + 'static {
        self.membership_pager(segment_id, limit).into_stream()
    }

    /// `GET /v1/customers/{id}/attributes?id_type=…`; `None` if no such person.
    pub async fn customer_attributes(
        &self,
        id: &str,
        id_type: IdType,
    ) -> Result<Option<Customer>, AppApiError> {
        // URL parsing resolves `.` and `..` (even escaped), so they cannot be sent.
        if matches!(id.trim(), "" | "." | "..") {
            return Err(AppApiError::InvalidIdentifier(
                "a customer id must not be blank, \".\" or \"..\"",
            ));
        }
        let url = self.url(
            &["customers", id, "attributes"],
            &[("id_type", id_type.as_str())],
        );
        match self
            .get_json::<CustomerEnvelope>("customer_attributes", "customer", url)
            .await
        {
            Ok(env) => Ok(Some(env.customer)),
            Err(AppApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/customers/attributes?id_type=…` with `{"ids": [...]}`: the
    /// attributes of up to [`MAX_BULK_LOOKUP`] people known by ids of one
    /// type. Ids Customer.io does not know are left out of the answer
    /// (no error), so callers match what comes back to what they asked.
    /// <https://docs.customer.io/integrations/api/app/tag/customers/getPeopleById/>
    pub async fn customers_attributes(
        &self,
        ids: &[String],
        id_type: IdType,
    ) -> Result<Vec<Customer>, AppApiError> {
        // The endpoint answers 400 to an empty list or one over 100, and
        // a blank id can name nobody: refuse before spending a request.
        if ids.is_empty() || ids.len() > MAX_BULK_LOOKUP {
            return Err(AppApiError::InvalidIdentifier(
                "a bulk lookup takes 1 to 100 ids",
            ));
        }
        if ids.iter().any(|id| id.trim().is_empty()) {
            return Err(AppApiError::InvalidIdentifier(
                "a customer id must not be blank",
            ));
        }
        let url = self.url(
            &["customers", "attributes"],
            &[("id_type", id_type.as_str())],
        );
        let body = serde_json::to_vec(&serde_json::json!({ "ids": ids }))
            .expect("a list of strings serializes");
        let endpoint = "customers_attributes";
        let answer = self
            .call(endpoint, "customers", url, Some(Bytes::from(body)))
            .await?;
        model::parse_customers(&answer).map_err(|e| AppApiError::Decode {
            endpoint,
            message: e.to_string(),
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        build_url(&self.inner.base, segments, query)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        what: &str,
        url: Url,
    ) -> Result<T, AppApiError> {
        let body = self.get(endpoint, what, url).await?;
        serde_json::from_slice(&body).map_err(|e| AppApiError::Decode {
            endpoint,
            message: e.to_string(),
        })
    }

    /// A GET with rate limiting and retries.
    async fn get(
        &self,
        endpoint: &'static str,
        what: &str,
        url: Url,
    ) -> Result<Bytes, AppApiError> {
        self.call(endpoint, what, url, None).await
    }

    /// A request with rate limiting and retries: a GET, or a POST of
    /// `json` when given. Every App API call goes through here, so all of
    /// them share the one limiter and the one retry policy.
    async fn call(
        &self,
        endpoint: &'static str,
        what: &str,
        url: Url,
        json: Option<Bytes>,
    ) -> Result<Bytes, AppApiError> {
        let policy = &self.retry;
        // koala's one backoff (full jitter), as backon's delay sequence.
        let backoff = Backoff {
            base: policy.min_delay,
            max: policy.max_delay,
        }
        .retries(policy.max_attempts.saturating_sub(1));
        (|| self.attempt(endpoint, what, &url, json.as_ref()))
            .retry(backoff)
            .when(|f: &Failure| f.retryable)
            // Retry-After is a floor on the wait, never a way to exceed the attempt budget.
            .adjust(|f: &Failure, next: Option<Duration>| {
                next.map(|d| match f.retry_after {
                    Some(ra) => d.max(ra.min(policy.max_retry_after)),
                    None => d,
                })
            })
            .notify(|f: &Failure, wait: Duration| {
                tracing::warn!(endpoint, error = %f.error, wait_ms = wait.as_millis() as u64, "Customer.io App API call failed; retrying");
            })
            .await
            .map_err(|f| f.error)
    }

    async fn attempt(
        &self,
        endpoint: &'static str,
        what: &str,
        url: &Url,
        json: Option<&Bytes>,
    ) -> Result<Bytes, Failure> {
        self.inner.limiter.until_ready().await;
        let started = Instant::now();
        let result = self.send(endpoint, what, url, json).await;
        let status = match &result {
            Ok((status, _)) => status.to_string(),
            Err(f) => f
                .error
                .status()
                .map_or_else(|| "error".to_owned(), |s| s.to_string()),
        };
        metrics::counter!("koala_app_api_requests_total", "endpoint" => endpoint, "status" => status)
            .increment(1);
        metrics::histogram!("koala_app_api_request_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        result.map(|(_, body)| body)
    }

    async fn send(
        &self,
        endpoint: &'static str,
        what: &str,
        url: &Url,
        json: Option<&Bytes>,
    ) -> Result<(u16, Bytes), Failure> {
        let transport = |e: reqwest::Error| Failure {
            // The URL can hold a customer's email; the error must not.
            error: AppApiError::Transport {
                endpoint,
                source: e.without_url(),
            },
            retryable: true,
            retry_after: None,
        };
        let request = match json {
            None => self.inner.http.get(url.clone()),
            Some(body) => self
                .inner
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone()),
        };
        let resp = request.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return resp.bytes().await.map(|b| (status, b)).map_err(transport);
        }
        let retry_after = outbound::retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        let class = StatusClass::of(status);
        let error = match (class, status) {
            (StatusClass::Unauthorized, _) => AppApiError::Unauthorized { status },
            (_, 404) => AppApiError::NotFound {
                what: what.to_owned(),
            },
            _ => AppApiError::Status {
                endpoint,
                status,
                body: body.chars().take(ERROR_BODY_CHARS).collect(),
            },
        };
        Err(Failure {
            error,
            retryable: class.is_retryable(),
            retry_after,
        })
    }
}

/// One failed attempt, with what the retry loop needs to know.
struct Failure {
    error: AppApiError,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// A GCRA quota allowing no burst and pacing 10% under the configured rate:
/// the server counts requests per second window, and network jitter could
/// otherwise bunch rps+1 of them into one window.
fn pacing_quota(requests_per_second: u32) -> anyhow::Result<Quota> {
    let rps = NonZeroU32::new(requests_per_second)
        .context("customerio.app_api_requests_per_second must be greater than 0")?;
    let period = Duration::from_secs(1) * 11 / 10 / rps.get();
    Ok(Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(rps))
        .allow_burst(NonZeroU32::MIN))
}

/// `base` + `/v1/` + each segment, fully percent-encoded, + the query.
///
/// `Url::path_segments_mut` leaves `+` and `@` as they are, but Customer.io
/// asks for `%2B` and `%40`, so each segment is encoded with the
/// form-urlencoded byte set (only `A-Za-z0-9*-._` pass) and `+` (a space
/// there) becomes `%20`. `Url::set_path` keeps existing escapes.
fn build_url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    let mut path = base.path().trim_end_matches('/').to_owned();
    if !path.ends_with("/v1") {
        path.push_str("/v1");
    }
    for segment in segments {
        path.push('/');
        path.push_str(&encode_path_segment(segment));
    }
    url.set_path(&path);
    url.set_fragment(None);
    url.set_query(None);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

fn encode_path_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Walks a segment's membership page by page.
pub struct MembershipPager {
    client: AppApiClient,
    segment_id: u64,
    limit: u32,
    cursor: Option<String>,
    done: bool,
}

impl MembershipPager {
    /// The next page, or `None` after the last one. After an error the same
    /// page is asked for again on the next call.
    pub async fn next_page(&mut self) -> Result<Option<MembershipPage>, AppApiError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .client
            .membership_page(self.segment_id, self.cursor.as_deref(), self.limit)
            .await?;
        match &page.next {
            // A cursor that does not move would loop forever.
            Some(next) if self.cursor.as_deref() == Some(next.as_str()) => {
                self.done = true;
                return Err(AppApiError::Decode {
                    endpoint: "membership",
                    message: "the next cursor equals the current one".into(),
                });
            }
            Some(next) => self.cursor = Some(next.clone()),
            None => self.done = true,
        }
        Ok(Some(page))
    }

    /// The `start` the next request will send (None before the first page).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<MembershipPage, AppApiError>> + Send + 'static {
        futures::stream::unfold(Some(self), |pager| async move {
            let mut pager = pager?;
            match pager.next_page().await {
                Ok(Some(page)) => Some((Ok(page), Some(pager))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn urls_are_built_under_v1_whatever_the_base_looks_like() {
        for b in [
            "https://api.customer.io",
            "https://api.customer.io/",
            "https://api.customer.io/v1",
            "https://api.customer.io/v1/",
        ] {
            assert_eq!(
                build_url(&base(b), &["segments"], &[]).as_str(),
                "https://api.customer.io/v1/segments",
                "{b}"
            );
        }
        assert_eq!(
            build_url(&base("http://127.0.0.1:9/proxy/"), &["segments", "7"], &[]).as_str(),
            "http://127.0.0.1:9/proxy/v1/segments/7"
        );
    }

    #[test]
    fn membership_query_is_form_encoded() {
        let url = build_url(
            &base("https://api-eu.customer.io"),
            &["segments", "7", "membership"],
            &[("start", "ab+c/d=="), ("limit", "30000")],
        );
        assert_eq!(
            url.as_str(),
            "https://api-eu.customer.io/v1/segments/7/membership?start=ab%2Bc%2Fd%3D%3D&limit=30000"
        );
    }

    #[test]
    fn customer_ids_are_fully_path_encoded() {
        let cases = [
            ("+15551234567", "%2B15551234567"),
            ("a+b@example.com", "a%2Bb%40example.com"),
            ("x/y z", "x%2Fy%20z"),
            ("100%", "100%25"),
            ("ü", "%C3%BC"),
            ("plain-id_1.2", "plain-id_1.2"),
        ];
        for (raw, encoded) in cases {
            let url = build_url(
                &base("https://api.customer.io"),
                &["customers", raw, "attributes"],
                &[("id_type", "email")],
            );
            assert_eq!(
                url.as_str(),
                format!("https://api.customer.io/v1/customers/{encoded}/attributes?id_type=email"),
                "{raw}"
            );
        }
    }

    #[tokio::test]
    async fn unaddressable_customer_ids_are_refused_before_sending() {
        let c = AppApiClient::new("http://127.0.0.1:9", Secret::new("k"), 10).unwrap();
        for id in ["", " ", ".", ".."] {
            let e = c.customer_attributes(id, IdType::Id).await.unwrap_err();
            assert!(
                matches!(e, AppApiError::InvalidIdentifier(_)),
                "{id:?}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn bulk_lookups_outside_1_to_100_ids_are_refused_before_sending() {
        let c = AppApiClient::new("http://127.0.0.1:9", Secret::new("k"), 10).unwrap();
        let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        for ids in [&[][..], &many[..], &["1".to_owned(), " ".to_owned()][..]] {
            let e = c.customers_attributes(ids, IdType::Id).await.unwrap_err();
            assert!(matches!(e, AppApiError::InvalidIdentifier(_)), "{e}");
        }
    }

    #[test]
    fn pacing_stays_just_under_the_configured_rate() {
        let q = pacing_quota(10).unwrap();
        assert_eq!(q.replenish_interval(), Duration::from_millis(110));
        assert_eq!(q.burst_size().get(), 1);
        assert!(pacing_quota(0).is_err());
    }

    #[test]
    fn the_key_never_shows_in_debug_or_construction_errors() {
        let c =
            AppApiClient::new("https://api.customer.io", Secret::new("sekrit-key"), 10).unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
        let e = AppApiClient::new("https://api.customer.io", Secret::new("bad\nsekrit"), 10)
            .unwrap_err();
        assert!(!format!("{e:#}").contains("sekrit"));
        assert!(AppApiClient::new("ftp://x", Secret::new("k"), 10).is_err());
        assert!(AppApiClient::new("https://x", Secret::new(" "), 10).is_err());
    }
}
