//! One audience live on Meta, Google and TikTok at once: it converges
//! exactly on all three through duplicates, reordering and faults, and a
//! sick destination never delays a healthy one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use koala::normalization::sha256_hex;
use serde_json::json;

use crate::support::app::*;
use crate::support::fake_google::{FakeGoogle, Scripted};
use crate::support::fake_meta::FakeMeta;
use crate::support::fake_tiktok::FakeTiktok;
use crate::support::wait::until;

const META_AUD: &str = "23850000000000111";
const GOOGLE_AUD: &str = "5551234";
const TIKTOK_AUD: &str = "7001234";
const T0: i64 = 1_750_000_000;
const LONG: Duration = Duration::from_secs(60);

struct Fakes {
    meta: FakeMeta,
    google: FakeGoogle,
    tiktok: FakeTiktok,
}

impl Fakes {
    async fn start() -> Fakes {
        Fakes {
            meta: FakeMeta::start().await,
            google: FakeGoogle::start().await,
            tiktok: FakeTiktok::start().await,
        }
    }

    fn config(&self) -> String {
        base_config("")
            + &self
                .meta
                .destination_toml("meta", "request_timeout = \"2s\"")
            + &self.google.destination_toml("google", "")
            + &self.tiktok.destination_toml("tiktok", "")
            + &cart_audience(
                &format!(
                    r#"{{ destination = "meta", audience_id = "{META_AUD}" }},
                       {{ destination = "google", audience_id = "{GOOGLE_AUD}" }},
                       {{ destination = "tiktok", audience_id = "{TIKTOK_AUD}" }}"#
                ),
                "mirror",
            )
    }

    /// True when every platform holds exactly `people`.
    fn hold_exactly(&self, people: &BTreeSet<String>) -> bool {
        let hashes: BTreeSet<String> = people
            .iter()
            .map(|p| sha256_hex(&format!("{p}@example.com")))
            .collect();
        self.meta.members(META_AUD) == *people
            && self.google.members(GOOGLE_AUD) == hashes
            && self.tiktok.members(TIKTOK_AUD) == hashes
    }
}

#[tokio::test]
async fn one_audience_converges_exactly_on_three_platforms_through_duplicates_reordering_and_faults(
) {
    let fakes = Fakes::start().await;
    // TikTok throttles for a while (HTTP 200, code 40100); Google answers
    // 503 for a while.
    for _ in 0..6 {
        fakes.tiktok.push_code(40100, "Too many requests");
        fakes.google.push(Scripted::unavailable());
    }
    let app = TestApp::start_with(&fakes.config()).await;
    let person = |i: usize| format!("p{i}");
    // Everyone enters; p0..p9 leave later. Some exits arrive before their
    // (older) entries, and some deliveries are repeated.
    for i in 0..10 {
        app.segment_event(CART_SEGMENT, &person(i), "exited", T0 + 100 + i as i64)
            .await;
    }
    for i in 0..40 {
        let (status, _) = app
            .segment_event(CART_SEGMENT, &person(i), "entered", T0 + i as i64)
            .await;
        assert_eq!(status, 200);
        if i % 7 == 0 {
            let (_, again) = app
                .segment_event(CART_SEGMENT, &person(i), "entered", T0 + i as i64)
                .await;
            assert_eq!(again["status"], "duplicate");
        }
    }
    // p40..p44 enter and leave in order while the faults last.
    for i in 40..45 {
        app.segment_event(CART_SEGMENT, &person(i), "entered", T0 + i as i64)
            .await;
        app.segment_event(CART_SEGMENT, &person(i), "exited", T0 + 200 + i as i64)
            .await;
    }
    let want: BTreeSet<String> = (10..40).map(person).collect();
    assert_eq!(app.members(CART).await, 30);
    until(
        "all three platforms hold exactly the audience",
        LONG,
        || async { fakes.hold_exactly(&want) },
    )
    .await;
    let audience = app.audience(CART).await;
    for d in audience["destinations"].as_array().unwrap() {
        assert_eq!(d["pending_adds"], 0, "{d}");
        assert_eq!(d["pending_removes"], 0, "{d}");
        assert_eq!(d["dead_letters"], 0, "{d}");
    }
    let m = app.metrics().await;
    for d in ["google", "tiktok"] {
        assert!(
            metric_value(&m, "koala_destination_retries_total", &[("destination", d)]) >= 1.0,
            "{d} was retried"
        );
    }
    app.stop().await;
}

/// Google is stuck (every request hangs) while Meta and TikTok are well:
/// their changes still arrive at once, and Google catches up afterwards.
#[tokio::test]
async fn a_stuck_destination_does_not_delay_the_healthy_ones() {
    let fakes = Fakes::start().await;
    fakes.google.hold();
    let app = TestApp::start_with(&fakes.config()).await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let p = format!("h{i}");
        let sent = Instant::now();
        app.segment_webhook(
            &json!({"segment_id": CART_SEGMENT, "action": "entered", "occurred_at": T0 + i,
            "identifiers": {"id": p, "email": format!("{p}@example.com")}}),
        )
        .await;
        let hash = sha256_hex(&format!("{p}@example.com"));
        until("meta and tiktok have the person", LONG, || async {
            fakes.meta.members(META_AUD).contains(&p)
                && fakes.tiktok.members(TIKTOK_AUD).contains(&hash)
        })
        .await;
        latencies.push(sent.elapsed());
    }
    // Google has had requests in flight the whole time and holds nobody.
    assert!(fakes.google.members(GOOGLE_AUD).is_empty());
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(5),
        "healthy destinations waited {worst:?} behind the stuck one"
    );
    eprintln!("healthy destinations' latency while google was stuck: {latencies:?}");
    fakes.google.release();
    let want: BTreeSet<String> = (0..5).map(|i| format!("h{i}")).collect();
    until("google catches up", LONG, || async {
        fakes.hold_exactly(&want)
    })
    .await;
    app.stop().await;
}
