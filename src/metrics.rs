//! Prometheus metrics. One process-wide recorder (the `metrics` facade is
//! global); every app started in the process renders the same registry.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets from 1 ms to 5 minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 100000.0,
];

/// Installs the recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("valid buckets")
                .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be set (a test harness); then the
            // handle still renders what this recorder would have seen.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "koala_webhooks_total",
        "Webhooks received, by endpoint and outcome"
    );
    describe_counter!(
        "koala_webhook_signature_failures_total",
        "Webhooks refused for their signature, by endpoint and reason"
    );
    describe_counter!(
        "koala_webhook_duplicates_total",
        "Repeated deliveries recognised and ignored, by endpoint"
    );
    describe_counter!(
        "koala_membership_stale_total",
        "Membership events older than the stored state (history only), by audience"
    );
    describe_counter!(
        "koala_membership_changes_total",
        "Membership changes applied, by audience and direction"
    );
    describe_counter!(
        "koala_segment_ignored_total",
        "Segment webhooks for a segment no audience uses, by segment"
    );
    describe_counter!(
        "koala_reporting_events_total",
        "Reporting webhook events stored, by object_type and metric"
    );
    describe_counter!(
        "koala_reporting_events_not_stored_total",
        "Reporting webhook events counted but not stored (retention.store_reporting_events = \"used\"), by object_type and metric"
    );
    describe_counter!(
        "koala_store_pruned_rows_total",
        "Rows deleted by retention, by table (received, events, sync_state)"
    );
    describe_counter!(
        "koala_store_prune_failures_total",
        "Pruning passes that failed (the next one retries)"
    );
    describe_gauge!(
        "koala_store_prune_last_pass_seconds",
        Unit::Seconds,
        "Duration of the last pruning pass"
    );
    describe_gauge!(
        "koala_store_prune_last_pass_timestamp_seconds",
        Unit::Seconds,
        "When the last pruning pass ended (unix time)"
    );
    describe_gauge!(
        "koala_store_size_bytes",
        Unit::Bytes,
        "The store's size on disk after the last pruning pass"
    );
    describe_gauge!(
        "koala_store_free_bytes",
        Unit::Bytes,
        "Of the store's size, pages freed by deletes and reused before the file grows"
    );
    describe_histogram!(
        "koala_ingest_seconds",
        Unit::Seconds,
        "Webhook handling time from receipt to durable commit, by endpoint"
    );
    describe_histogram!(
        "koala_ingest_commit_seconds",
        Unit::Seconds,
        "Duration of one group commit"
    );
    describe_histogram!(
        "koala_ingest_group_size",
        "Webhooks committed per transaction"
    );
    describe_gauge!("koala_audience_members", "Members per audience");
    describe_histogram!(
        "koala_delivery_event_to_ack_seconds",
        Unit::Seconds,
        "From Customer.io's occurred-at to the destination's acknowledgement"
    );
    describe_histogram!(
        "koala_delivery_receipt_to_ack_seconds",
        Unit::Seconds,
        "From webhook receipt to the destination's acknowledgement"
    );
    describe_histogram!(
        "koala_destination_request_seconds",
        Unit::Seconds,
        "Destination request latency, by destination and outcome class"
    );
    describe_counter!(
        "koala_destination_requests_total",
        "Destination requests, by destination, op and outcome class"
    );
    describe_histogram!(
        "koala_destination_batch_size",
        "People per destination request"
    );
    describe_gauge!(
        "koala_destination_pending",
        "Rows waiting to be sent, per destination"
    );
    describe_gauge!(
        "koala_destination_oldest_pending_seconds",
        Unit::Seconds,
        "Age of the oldest pending change, per destination"
    );
    describe_counter!(
        "koala_dead_letters_total",
        "Rows parked as dead letters, per destination"
    );
    describe_counter!(
        "koala_destination_retries_total",
        "Rows returned for a later retry, per destination"
    );
    describe_gauge!(
        "koala_destination_paused",
        "1 while a destination is paused after a destination-wide failure"
    );
    describe_counter!(
        "koala_destination_unmatched_total",
        "People not sent for lack of a usable identifier"
    );
    describe_counter!(
        "koala_destination_invalid_entries_total",
        "Rows the destination reported invalid"
    );
    describe_counter!(
        "koala_webhook_refusals_total",
        "Webhooks refused (4xx), by endpoint and reason"
    );
    describe_counter!(
        "koala_identifier_unusable_total",
        "Emails and phones given in webhooks that cannot be used, by identifier and reason"
    );
    describe_gauge!(
        "koala_audience_identifier_coverage",
        "Members per audience with an email, a phone, neither, or only an unusable one"
    );
    describe_gauge!(
        "koala_audience_addressable_members",
        "Members a destination holds for an audience (acknowledged minus those it cannot address)"
    );
    describe_counter!(
        "koala_mapping_coercion_failures_total",
        "Mapped attribute values that could not be coerced to the platform field's type, by destination and field"
    );
    describe_counter!(
        "koala_destination_batch_splits_total",
        "Batches refused as a whole and split to find the bad rows"
    );
    describe_counter!(
        "koala_resync_runs_total",
        "Resync jobs finished, by audience, trigger and outcome"
    );
    describe_counter!(
        "koala_resync_changes_total",
        "Membership changes applied by resyncs, by audience and direction"
    );
    describe_gauge!(
        "koala_resync_running",
        "1 while a resync of the audience runs"
    );
    describe_gauge!(
        "koala_resync_phase",
        "1 for the phase the audience's running resync is in"
    );
    describe_gauge!(
        "koala_resync_members_seen",
        "Members the running resync has read so far"
    );
    describe_gauge!(
        "koala_resync_pages_fetched",
        "Membership pages the running resync has read so far"
    );
}
