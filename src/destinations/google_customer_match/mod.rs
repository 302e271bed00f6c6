//! Google Customer Match through the Data Manager API
//! (<https://developers.google.com/data-manager/api/devguides/audiences/google-ads/customer-match/upload-data>).
//!
//! `config` is the TOML table, `encoder` turns people into hashed
//! audience members, `request` builds the calls, the shared
//! [`google_oauth`](crate::destinations::google_oauth) keeps an OAuth
//! access token, `quota` shares the Cloud project's limit, `service`
//! sends and classifies, and `status` follows the asynchronous outcome of
//! each accepted request.

mod config;
mod encoder;
mod quota;
mod request;
mod service;
mod status;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use config::{
    Account, AccountType, Consent, ConsentStatus, GoogleConfig, GoogleKey, TermsStatus, DELIVERY,
    FIELDS, MAX_IDENTIFIERS_PER_MEMBER, MAX_MEMBERS_PER_REQUEST,
};
pub use encoder::{Encoder, Member};
pub use quota::next_pacific_midnight;
pub use status::Verdict;

use super::google_oauth::{Grant, TokenSource};
use super::{DeliverySettings, Destination, SendOutcome, SendTarget, UNMATCHED};
use crate::audiences::SyncOp;
use crate::person::PersonRecord;
use request::Endpoints;
use service::Service;
use status::{Tracked, Tracker};

/// What the destination and its status task share.
struct Inner {
    name: String,
    endpoints: Endpoints,
    service: Service,
    tracker: Tracker,
    interval: Duration,
}

pub struct GoogleDestination {
    name: String,
    config: GoogleConfig,
    delivery: DeliverySettings,
    encoder: Encoder,
    inner: Arc<Inner>,
    /// Stops the status task when the destination is dropped (a reload
    /// builds a new one).
    cancel: CancellationToken,
    poller: OnceLock<()>,
}

impl Drop for GoogleDestination {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl GoogleDestination {
    /// Fails on settings with problems (see [`GoogleConfig::problems`]
    /// and [`DeliverySettings::problems`]).
    pub fn new(
        name: impl Into<String>,
        config: GoogleConfig,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut problems = config.problems();
        problems.extend(delivery.problems(MAX_MEMBERS_PER_REQUEST));
        if !problems.is_empty() {
            anyhow::bail!("destination {name:?}: {}", problems.join("; "));
        }
        let client = crate::outbound::client(delivery.request_timeout)?;
        let tokens = TokenSource::new(
            client.clone(),
            config.token_url.clone(),
            Grant::RefreshToken {
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                refresh_token: config.refresh_token.clone(),
            },
            config.token_refresh_margin,
        );
        // Unnamed, the OAuth client stands for its project; its id is kept
        // only as a hash in memory.
        let project = match &config.project {
            Some(p) => format!("project:{p}"),
            None => format!(
                "client:{}",
                &crate::normalization::sha256_hex(config.client_id.expose())[..16]
            ),
        };
        let limiter = quota::project_limiter(&project, config.project_requests_per_minute);
        let inner = Inner {
            name: name.clone(),
            endpoints: Endpoints::new(
                &config.base_url,
                &config.operating_account,
                config.login_account.as_ref(),
                config.consent,
                config.customer_match_terms_of_service,
            )?,
            service: Service::new(client, tokens, limiter, config.daily_quota_pause),
            tracker: Tracker::new(config.request_status_max_tracked),
            interval: config.request_status_interval,
        };
        Ok(GoogleDestination {
            encoder: Encoder::new(&name, &config.identifiers),
            inner: Arc::new(inner),
            cancel: CancellationToken::new(),
            poller: OnceLock::new(),
            name,
            config,
            delivery,
        })
    }

    pub fn config(&self) -> &GoogleConfig {
        &self.config
    }

    /// The last requestStatus errors (newest last): request id, operation
    /// and Google's error counts, never row data.
    pub fn request_status_errors(&self) -> Vec<String> {
        self.inner.tracker.notes()
    }

    /// Request ids accepted and not yet checked.
    pub fn pending_request_statuses(&self) -> usize {
        self.inner.tracker.pending()
    }

    fn record(&self, request_id: String, op: SyncOp, rows: usize) {
        let dropped = self.inner.tracker.record(Tracked {
            request_id,
            op,
            rows,
            recorded: Instant::now(),
        });
        if dropped.is_some() {
            count_status(&self.inner.name, "untracked");
        }
        // Spawned on first use: `new` may run where there is no runtime
        // (`koala check`).
        self.poller.get_or_init(|| {
            let inner = self.inner.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(poll_statuses(inner, cancel));
        });
    }
}

fn count_status(destination: &str, status: &'static str) {
    metrics::counter!("koala_google_request_status_total", "destination" => destination.to_owned(), "status" => status)
        .increment(1);
}

/// Checks recorded requests every `interval` until cancelled.
async fn poll_statuses(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.interval) => {}
            _ = cancel.cancelled() => return,
        }
        for t in inner.tracker.due() {
            if cancel.is_cancelled() {
                return;
            }
            let url = inner.endpoints.request_status(&t.request_id);
            match inner.service.get(url).await {
                Ok(body) => {
                    let v = status::verdict(&body);
                    if v == Verdict::Processing {
                        if Tracker::too_old(&t) {
                            inner.tracker.done(&t.request_id);
                            count_status(&inner.name, "expired");
                        }
                        continue;
                    }
                    inner.tracker.done(&t.request_id);
                    count_status(&inner.name, v.label());
                    if let Verdict::Failed { status, summary } = &v {
                        let note = format!(
                            "request {} ({} of {} members): {status}: {summary}",
                            t.request_id,
                            t.op.as_str(),
                            t.rows
                        );
                        tracing::warn!(destination = %inner.name, %note, "google request status");
                        inner.tracker.note(note);
                    }
                }
                Err(reason) => {
                    tracing::debug!(destination = %inner.name, request_id = %t.request_id, %reason, "request status not read; trying again later");
                    if Tracker::too_old(&t) {
                        inner.tracker.done(&t.request_id);
                        count_status(&inner.name, "expired");
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Destination for GoogleDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> DeliverySettings {
        self.delivery
    }

    fn can_address(&self, person: &PersonRecord) -> bool {
        self.encoder.can_address(person)
    }

    fn needs_profile(&self) -> bool {
        self.config
            .identifiers
            .iter()
            .any(|k| !matches!(k, GoogleKey::Email))
    }

    fn platform_notes(&self) -> Vec<String> {
        self.request_status_errors()
    }

    /// One request per 10,000 members. A request Google refuses whole
    /// (INVALID_ARGUMENT) comes back Permanent and the engine splits it.
    async fn send(
        &self,
        target: &SendTarget<'_>,
        op: SyncOp,
        people: &[PersonRecord],
    ) -> SendOutcome {
        let with_consent = op.desired();
        let mut received = 0;
        let mut invalid = 0;
        for chunk in people.chunks(MAX_MEMBERS_PER_REQUEST) {
            let members: Vec<Member> = chunk
                .iter()
                .filter_map(|p| self.encoder.member(p, target.mapping, with_consent))
                .collect();
            invalid += chunk.len() - members.len();
            received += chunk.len() - members.len();
            if members.is_empty() {
                continue;
            }
            let rows = members.len();
            let req = self
                .inner
                .endpoints
                .members(op, target.platform_audience_id, &members);
            let outcome = self.inner.service.mutate(req).await;
            tracing::debug!(
                destination = %self.name,
                audience_id = target.platform_audience_id,
                op = op.as_str(),
                rows,
                ok = outcome.is_ok(),
                "google audience members"
            );
            match outcome {
                Ok(Some(id)) => self.record(id, op, rows),
                Ok(None) => {}
                Err(other) => return other,
            }
            received += rows;
        }
        if received == invalid && !people.is_empty() {
            return SendOutcome::Permanent {
                reason: UNMATCHED.into(),
            };
        }
        SendOutcome::Success { received, invalid }
    }
}

impl super::DestinationType for GoogleConfig {
    const TYPE_NAME: &'static str = "google_customer_match";
    const DELIVERY: DeliverySettings = DELIVERY;
    const MAX_BATCH: usize = MAX_MEMBERS_PER_REQUEST;
    const FIELDS: &'static [super::FieldSpec] = FIELDS;
    type Running = GoogleDestination;

    fn check(&self) -> Vec<String> {
        GoogleConfig::problems(self)
    }

    fn start(
        name: String,
        config: Self,
        delivery: DeliverySettings,
    ) -> anyhow::Result<Self::Running> {
        GoogleDestination::new(name, config, delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiences::AudienceDef;
    use crate::secret::Secret;

    fn config() -> GoogleConfig {
        let mut c = GoogleConfig::new(
            Secret::new("cid"),
            Secret::new("cs"),
            Secret::new("rt"),
            "1234567890",
        );
        c.base_url = "http://127.0.0.1:9".into();
        c.token_url = "http://127.0.0.1:9/token".into();
        c
    }

    #[tokio::test]
    async fn unaddressable_people_are_unmatched_without_a_request() {
        let d = GoogleDestination::new("google", config(), DELIVERY).unwrap();
        let def = AudienceDef {
            id: 1,
            name: "a".into(),
            segment_id: 42,
            mode: Default::default(),
            destinations: vec!["google".into()],
        };
        let mapping = crate::destinations::Mapping::resolve(FIELDS, false, &[]).unwrap();
        let target = SendTarget {
            audience: &def,
            platform_audience_id: "555",
            mapping: &mapping,
            changed_at: &[],
        };
        assert_eq!(
            d.send(&target, SyncOp::Add, &[PersonRecord::default()])
                .await,
            SendOutcome::Permanent {
                reason: UNMATCHED.into()
            }
        );
        // Google cannot create Customer Match lists here: the default pause.
        assert_eq!(
            d.create_audience(&def).await.unwrap_err().class(),
            "destination_down"
        );
    }

    #[test]
    fn a_config_with_problems_is_refused() {
        let delivery = DeliverySettings {
            max_batch: 0,
            ..DELIVERY
        };
        let e = GoogleDestination::new("google", config(), delivery)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("max_batch"), "{e}");
        assert_eq!(
            GoogleDestination::new("google", config(), DELIVERY)
                .unwrap()
                .limits()
                .max_batch,
            10_000
        );
    }
}
