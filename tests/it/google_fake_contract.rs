//! The fake Data Manager API holds to Google's contract, and the Google
//! destination speaks it: members land hashed, tokens refresh, and every
//! failure is classified.

use std::time::Duration;

use koala::audiences::AudienceDef;
use koala::destinations::google_customer_match::{
    Consent, ConsentStatus, GoogleConfig, GoogleDestination, GoogleKey, DELIVERY,
};
use koala::destinations::{Destination, SendOutcome, SendTarget};
use koala::normalization::sha256_hex;
use koala::secret::Secret;
use koala::store::{PersonRecord, SyncOp};
use serde_json::{json, Value};

use crate::support::fake_google::*;
use crate::support::wait::until;

const AUDIENCE: &str = "5550001";
// printf 'test@example.com' | sha256sum ; printf '+15551234567' | sha256sum
const EMAIL_HASH: &str = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b";
const PHONE_HASH: &str = "8a59780bb8cd2ba022bfa5ba2ea3b6e07af17a7d8b30c1f9b3390e36f69019e4";

fn destination_with(fake: &FakeGoogle, edit: impl FnOnce(&mut GoogleConfig)) -> GoogleDestination {
    let mut c = GoogleConfig::new(
        Secret::new(CLIENT_ID),
        Secret::new(CLIENT_SECRET),
        Secret::new(REFRESH_TOKEN),
        OPERATING_ACCOUNT,
    );
    c.base_url = fake.base_url();
    c.token_url = fake.token_url();
    c.project = Some(format!("contract-{}", fake.base_url()));
    c.request_status_interval = Duration::from_millis(50);
    edit(&mut c);
    let delivery = koala::destinations::DeliverySettings {
        request_timeout: Duration::from_secs(2),
        ..DELIVERY
    };
    GoogleDestination::new("google", c, delivery).unwrap()
}

fn destination(fake: &FakeGoogle) -> GoogleDestination {
    destination_with(fake, |_| {})
}

async fn send(d: &GoogleDestination, op: SyncOp, people: &[PersonRecord]) -> SendOutcome {
    let def = AudienceDef {
        id: 1,
        name: "CIO__Test".into(),
        segment_id: 42,
        mode: Default::default(),
        destinations: vec!["google".into()],
    };
    let mapping = koala::destinations::Mapping::resolve(
        koala::destinations::google_customer_match::FIELDS,
        false,
        &[],
    )
    .unwrap();
    let target = SendTarget {
        audience: &def,
        platform_audience_id: AUDIENCE,
        mapping: &mapping,
        changed_at: &[],
    };
    d.send(&target, op, people).await
}

fn person(email: Option<&str>, phone: Option<&str>) -> PersonRecord {
    PersonRecord {
        person_id: 1,
        customer_id: Some("c1".into()),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        ..Default::default()
    }
}

fn many(n: usize) -> Vec<PersonRecord> {
    (0..n)
        .map(|i| person(Some(&format!("p{i}@example.com")), None))
        .collect()
}

/// A raw call, for checking the fake itself: an access token first.
async fn raw(fake: &FakeGoogle, path: &str, body: Value) -> (u16, Value) {
    let http = reqwest::Client::new();
    let tok: Value = http
        .post(fake.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&refresh_token={}",
            url::form_urlencoded::byte_serialize(REFRESH_TOKEN.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!("{}{path}", fake.base_url()))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn good_body(members: Value) -> Value {
    json!({
        "destinations": [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": OPERATING_ACCOUNT},
                          "productDestinationId": AUDIENCE}],
        "audienceMembers": members,
        "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
    })
}

#[tokio::test]
async fn google_members_land_hashed_with_consent_terms_and_encoding() {
    let fake = FakeGoogle::start().await;
    let d = destination_with(&fake, |c| {
        c.identifiers = vec![GoogleKey::Email, GoogleKey::Phone];
        c.consent = Some(Consent {
            ad_user_data: ConsentStatus::Granted,
            ad_personalization: ConsentStatus::Granted,
        });
    });
    let out = send(
        &d,
        SyncOp::Add,
        &[person(Some("Test@Example.com"), Some("+15551234567"))],
    )
    .await;
    assert_eq!(
        out,
        SendOutcome::Success {
            received: 1,
            invalid: 0
        }
    );
    assert_eq!(fake.members(AUDIENCE), [EMAIL_HASH.to_owned()].into());
    let r = &fake.successful_requests()[0];
    assert_eq!(r.kind, Kind::Ingest);
    assert_eq!(
        r.body["audienceMembers"][0]["userData"]["userIdentifiers"],
        json!([{"emailAddress": EMAIL_HASH}, {"phoneNumber": PHONE_HASH}])
    );
    assert_eq!(r.body["consent"]["adUserData"], "CONSENT_GRANTED");
    assert_eq!(r.body["encoding"], "HEX");
    assert_eq!(r.body["destinations"][0]["productDestinationId"], AUDIENCE);

    let out = send(
        &d,
        SyncOp::Remove,
        &[person(Some("test@example.com"), None)],
    )
    .await;
    assert_eq!(out.class(), "success");
    assert!(fake.members(AUDIENCE).is_empty());
    let r = fake.successful_requests().last().unwrap().clone();
    assert_eq!(r.kind, Kind::Remove);
    assert!(r.body.get("consent").is_none() && r.body.get("termsOfService").is_none());
    // One token for both calls.
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn the_fake_refuses_what_google_refuses() {
    let fake = FakeGoogle::start().await;
    let member = json!({"userData": {"userIdentifiers": [{"emailAddress": EMAIL_HASH}]}});
    assert_eq!(
        raw(
            &fake,
            "/v1/audienceMembers:ingest",
            good_body(json!([member.clone()]))
        )
        .await
        .0,
        200
    );
    // Consent and terms do not exist on remove.
    let (status, body) = raw(
        &fake,
        "/v1/audienceMembers:remove",
        good_body(json!([member.clone()])),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    // Too many members, too many identifiers, bad hashes, no encoding.
    let too_many = vec![member.clone(); MAX_MEMBERS + 1];
    assert_eq!(
        raw(
            &fake,
            "/v1/audienceMembers:ingest",
            good_body(json!(too_many))
        )
        .await
        .0,
        400
    );
    let ids = vec![json!({"emailAddress": EMAIL_HASH}); MAX_IDENTIFIERS + 1];
    let wide = json!([{"userData": {"userIdentifiers": ids}}]);
    assert_eq!(
        raw(&fake, "/v1/audienceMembers:ingest", good_body(wide))
            .await
            .0,
        400
    );
    let upper =
        json!([{"userData": {"userIdentifiers": [{"emailAddress": EMAIL_HASH.to_uppercase()}]}}]);
    assert_eq!(
        raw(&fake, "/v1/audienceMembers:ingest", good_body(upper))
            .await
            .0,
        400
    );
    let two = json!([{"userData": {"userIdentifiers": [{"emailAddress": EMAIL_HASH, "phoneNumber": PHONE_HASH}]}}]);
    assert_eq!(
        raw(&fake, "/v1/audienceMembers:ingest", good_body(two))
            .await
            .0,
        400
    );
    let mut no_encoding = good_body(json!([member.clone()]));
    no_encoding.as_object_mut().unwrap().remove("encoding");
    assert_eq!(
        raw(&fake, "/v1/audienceMembers:ingest", no_encoding)
            .await
            .0,
        400
    );
    // No token, no entry.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/audienceMembers:ingest", fake.base_url()))
        .json(&good_body(json!([member])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_batch_over_ten_thousand_goes_in_two_requests() {
    let fake = FakeGoogle::start().await;
    let d = destination(&fake);
    let out = send(&d, SyncOp::Add, &many(MAX_MEMBERS + 1)).await;
    assert_eq!(out.class(), "success");
    let sizes: Vec<usize> = fake
        .successful_requests()
        .iter()
        .map(|r| r.members.len())
        .collect();
    assert_eq!(sizes, [MAX_MEMBERS, 1]);
    assert_eq!(fake.members(AUDIENCE).len(), MAX_MEMBERS + 1);
}

#[tokio::test]
async fn google_failures_are_classified() {
    let fake = FakeGoogle::start().await;
    let d = destination(&fake);
    let one = [person(Some("a@example.com"), None)];
    fake.push(Scripted::throttle());
    let SendOutcome::RetryLater { after, reason } = send(&d, SyncOp::Add, &one).await else {
        panic!("a throttle is not retried");
    };
    // RetryInfo's delay.
    assert_eq!(after, Some(Duration::from_millis(50)));
    assert!(reason.contains("RESOURCE_EXHAUSTED"), "{reason}");
    fake.push(Scripted::daily_quota());
    let SendOutcome::PausedUntil { until_ms, reason } = send(&d, SyncOp::Add, &one).await else {
        panic!("daily quota does not pause");
    };
    assert!(
        reason.contains("IngestionMutateRequestsPerDayPerProject"),
        "{reason}"
    );
    let reset =
        koala::destinations::google_customer_match::next_pacific_midnight(chrono::Utc::now());
    assert!((until_ms - reset.timestamp_millis()).abs() < 5_000);
    fake.push(Scripted::unavailable());
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "retry");
    fake.push(Scripted::permission_denied());
    assert_eq!(
        send(&d, SyncOp::Add, &one).await.class(),
        "destination_down"
    );
    fake.poison(&sha256_hex("a@example.com"));
    let out = send(&d, SyncOp::Add, &one).await;
    assert_eq!(out.class(), "permanent", "{out:?}");
    // Nobody the destination can address: no request at all.
    let before = fake.requests().len();
    assert_eq!(
        send(&d, SyncOp::Add, &[person(None, Some("5551234"))])
            .await
            .class(),
        "permanent"
    );
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_a_refused_refresh_pauses() {
    let fake = FakeGoogle::start().await;
    let d = destination(&fake);
    let one = [person(Some("a@example.com"), None)];
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "success");
    fake.expire_tokens();
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "success");
    assert_eq!(fake.token_requests(), 2);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200]);

    fake.expire_tokens();
    fake.refuse_refresh(true);
    let SendOutcome::DestinationDown { reason } = send(&d, SyncOp::Add, &one).await else {
        panic!("a refused refresh does not pause");
    };
    assert!(
        reason.contains("invalid_grant") && reason.contains("refresh_token"),
        "{reason}"
    );
    assert!(!reason.contains(REFRESH_TOKEN) && !reason.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_token_near_its_expiry_is_refreshed_before_use() {
    let fake = FakeGoogle::start().await;
    // Tokens live 60 s; the margin is 5 minutes: every call refreshes.
    fake.set_token_lifetime(Duration::from_secs(60));
    let d = destination(&fake);
    let one = [person(Some("a@example.com"), None)];
    send(&d, SyncOp::Add, &one).await;
    send(&d, SyncOp::Add, &one).await;
    assert_eq!(fake.token_requests(), 2);
    assert!(fake.requests().iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn google_request_status_errors_are_kept_for_the_admin_api() {
    let fake = FakeGoogle::start().await;
    let d = destination(&fake);
    fake.next_request_status(
        "FAILED",
        json!([{"recordCount": "1", "reason": "PROCESSING_ERROR_REASON_INVALID_HASH"}]),
    );
    assert_eq!(
        send(&d, SyncOp::Add, &[person(Some("a@example.com"), None)])
            .await
            .class(),
        "success"
    );
    until(
        "the request status is read",
        Duration::from_secs(10),
        || async { !d.platform_notes().is_empty() },
    )
    .await;
    let notes = d.platform_notes();
    assert!(
        notes[0].contains("fake-request-1") && notes[0].contains("INVALID_HASH"),
        "{notes:?}"
    );
    assert!(notes[0].contains("failed"), "{notes:?}");
    assert_eq!(d.pending_request_statuses(), 0);
}
