//! The fake Graph API holds to Meta's contract, and the Meta destination
//! speaks it: members land hashed, and every failure is classified.

use std::time::{Duration, Instant};

use koala::audiences::AudienceDef;
use koala::destinations::meta::{MetaConfig, MetaDestination, DELIVERY};
use koala::destinations::{DeliverySettings, Destination, Mapping, SendOutcome, SendTarget};
use koala::secret::Secret;
use koala::store::{PersonRecord, SyncOp};
use serde_json::{json, Value};

use crate::support::fake_meta::{FakeMeta, ScriptedResponse, FAKE_META_TOKEN};

// printf 'test@example.com' | sha256sum ; printf '15551234567' | sha256sum
const EMAIL_HASH: &str = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b";
const PHONE_HASH: &str = "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a";
const AUDIENCE: &str = "23850000000000999";

fn destination_with(
    fake: &FakeMeta,
    edit: impl FnOnce(&mut MetaConfig, &mut DeliverySettings),
) -> MetaDestination {
    let mut c = MetaConfig::new(Secret::new(FAKE_META_TOKEN));
    c.base_url = fake.base_url();
    c.ad_account_id = Some("act_1234567890".into());
    let mut delivery = DELIVERY;
    edit(&mut c, &mut delivery);
    MetaDestination::new("meta", c, delivery).unwrap()
}

/// Sends for a koala audience synced to the platform audience AUDIENCE.
async fn send(d: &MetaDestination, op: SyncOp, people: &[PersonRecord]) -> SendOutcome {
    send_to(d, AUDIENCE, op, people).await
}

async fn send_to(
    d: &MetaDestination,
    platform_audience_id: &str,
    op: SyncOp,
    people: &[PersonRecord],
) -> SendOutcome {
    let def = AudienceDef {
        id: 1,
        name: "CIO__Test".into(),
        segment_id: 42,
        mode: Default::default(),
        destinations: vec!["meta".into()],
    };
    // The default mapping: names and address from the usual attributes.
    let mapping = Mapping::resolve(koala::destinations::meta::FIELDS, false, &[]).unwrap();
    let target = SendTarget {
        audience: &def,
        platform_audience_id,
        mapping: &mapping,
        changed_at: &[],
    };
    d.send(&target, op, people).await
}

fn destination(fake: &FakeMeta) -> MetaDestination {
    destination_with(fake, |_, _| {})
}

fn person(id: Option<&str>, email: Option<&str>, phone: Option<&str>) -> PersonRecord {
    PersonRecord {
        person_id: 1,
        customer_id: id.map(Into::into),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        ..Default::default()
    }
}

fn people() -> Vec<PersonRecord> {
    vec![
        person(
            Some("cust-1"),
            Some("test@example.com"),
            Some("+15551234567"),
        ),
        person(Some("cust-2"), None, None),
        person(None, Some("test@example.com"), None),
    ]
}

/// A raw `/users` call, for checking the fake itself.
async fn raw_users(
    fake: &FakeMeta,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", fake.base_url()))
        .bearer_auth(FAKE_META_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn payload(schema: &[&str], data: Value) -> Value {
    json!({ "payload": { "schema": schema, "is_raw": true, "data": data } })
}

// --- the fake itself ---------------------------------------------------

#[tokio::test]
async fn fake_counts_bad_hashes_and_empty_rows_as_invalid() {
    let fake = FakeMeta::start().await;
    let (status, body) = raw_users(
        &fake,
        reqwest::Method::POST,
        &format!("/v25.0/{AUDIENCE}/users"),
        payload(
            &["EXTERN_ID", "EMAIL"],
            json!([
                ["c1", ""],
                ["", EMAIL_HASH],
                ["", "test@example.com"],
                ["", ""],
                ["c2", "ABC"]
            ]),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["num_received"], 5);
    assert_eq!(body["num_invalid_entries"], 3);
    assert_eq!(
        fake.members(AUDIENCE),
        ["c1".to_owned(), EMAIL_HASH.to_owned()].into()
    );
}

#[tokio::test]
async fn fake_refuses_what_meta_refuses() {
    let fake = FakeMeta::start().await;
    let users = format!("/v25.0/{AUDIENCE}/users");
    let ok = payload(&["EXTERN_ID"], json!([["c1"]]));
    let too_many = payload(&["EXTERN_ID"], Value::Array(vec![json!(["c"]); 10_001]));
    for (path, body, code) in [
        (format!("/25.0/{AUDIENCE}/users"), ok.clone(), 2500),
        (
            users.clone(),
            payload(&["EXTERN_ID"], json!([["c1", "x"]])),
            100,
        ),
        (users.clone(), payload(&["NICKNAME"], json!([["c1"]])), 100),
        (
            users.clone(),
            json!({ "payload": { "schema": ["EXTERN_ID"], "data": [["c1"]] } }),
            100,
        ),
        (users.clone(), too_many, 100),
        ("/v25.0/not-an-id/users".to_owned(), ok.clone(), 100),
    ] {
        let (status, answer) = raw_users(&fake, reqwest::Method::POST, &path, body).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(answer["error"]["code"], code, "{path}: {answer}");
    }
    assert!(fake.members(AUDIENCE).is_empty());

    fake.set_token("rotated");
    let (status, answer) = raw_users(&fake, reqwest::Method::POST, &users, ok).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], 190);
}

#[tokio::test]
async fn fake_applies_latency_and_scripted_replies_in_order() {
    let fake = FakeMeta::start().await;
    fake.set_latency(Duration::from_millis(100));
    fake.push_response(ScriptedResponse::throttle());
    let users = format!("/v25.0/{AUDIENCE}/users");
    let body = payload(&["EXTERN_ID"], json!([["c1"]]));
    let start = Instant::now();
    let (status, answer) = raw_users(&fake, reqwest::Method::POST, &users, body.clone()).await;
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!(17)));
    let (status, _) = raw_users(&fake, reqwest::Method::POST, &users, body).await;
    assert_eq!(status, 200);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [400, 200]);
}

// --- the destination against the fake ----------------------------------

#[tokio::test]
async fn add_records_members_by_extern_id_or_hash() {
    let fake = FakeMeta::start().await;
    let out = send(&destination(&fake), SyncOp::Add, &people()).await;
    assert_eq!(
        out,
        SendOutcome::Success {
            received: 3,
            invalid: 0
        }
    );
    assert_eq!(
        fake.members(AUDIENCE),
        [
            "cust-1".to_owned(),
            "cust-2".to_owned(),
            EMAIL_HASH.to_owned()
        ]
        .into()
    );
    let req = &fake.requests()[0];
    assert_eq!(req.method, reqwest::Method::POST);
    assert_eq!(req.schema, ["EXTERN_ID", "EMAIL", "PHONE"]);
    assert_eq!(req.rows[0], ["cust-1", EMAIL_HASH, PHONE_HASH]);
    assert_eq!(req.rows[1], ["cust-2", "", ""]);
}

#[tokio::test]
async fn remove_takes_members_out() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    send(&d, SyncOp::Add, &people()).await;
    let out = send(&d, SyncOp::Remove, &people()[..2]).await;
    assert_eq!(
        out,
        SendOutcome::Success {
            received: 2,
            invalid: 0
        }
    );
    assert_eq!(fake.members(AUDIENCE), [EMAIL_HASH.to_owned()].into());
    assert_eq!(fake.requests()[1].method, reqwest::Method::DELETE);
}

#[tokio::test]
async fn unaddressable_people_are_left_out_and_counted_invalid() {
    let fake = FakeMeta::start().await;
    let mut batch = people();
    batch.push(person(None, None, None));
    let out = send(&destination(&fake), SyncOp::Add, &batch).await;
    assert_eq!(
        out,
        SendOutcome::Success {
            received: 4,
            invalid: 1
        }
    );
    assert_eq!(fake.requests()[0].rows.len(), 3);
}

#[tokio::test]
async fn throttles_are_retried_later_with_retry_after_when_given() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    fake.push_response(ScriptedResponse::throttle());
    fake.push_response(ScriptedResponse::ad_account_throttle().with_retry_after(30));
    fake.push_response(ScriptedResponse::too_many_requests().with_retry_after(5));
    let first = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(
        first,
        SendOutcome::RetryLater {
            after: None,
            reason: "meta error 17/2446079: User request limit reached".into()
        }
    );
    let second = send(&d, SyncOp::Add, &people()).await;
    assert!(
        matches!(second, SendOutcome::RetryLater { after: Some(a), .. } if a == Duration::from_secs(30)),
        "{second:?}"
    );
    let third = send(&d, SyncOp::Add, &people()).await;
    assert!(
        matches!(third, SendOutcome::RetryLater { after: Some(a), .. } if a == Duration::from_secs(5)),
        "{third:?}"
    );
    assert!(fake.members(AUDIENCE).is_empty());
    assert_eq!(send(&d, SyncOp::Add, &people()).await.class(), "success");
}

#[tokio::test]
async fn token_errors_take_the_destination_down() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    fake.push_response(ScriptedResponse::expired_token());
    let out = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(
        out,
        SendOutcome::DestinationDown {
            reason: "meta error 190/463: Error validating access token: Session has expired."
                .into()
        }
    );
    fake.set_token("a-rotated-token");
    let out = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(out.class(), "destination_down", "{out:?}");
}

#[tokio::test]
async fn invalid_parameters_and_flagged_audiences_are_permanent() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    fake.push_response(ScriptedResponse::invalid_parameter());
    fake.push_response(ScriptedResponse::flagged_audience());
    let out = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(
        out,
        SendOutcome::Permanent {
            reason: "meta error 100: Invalid parameter".into()
        }
    );
    let out = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(
        out,
        SendOutcome::Permanent {
            reason: "meta error 100/1713230: Invalid parameter (Audience Upload Blocked)".into()
        }
    );
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried_later() {
    let fake = FakeMeta::start().await;
    let d = destination_with(&fake, |_, d| d.request_timeout = Duration::from_millis(200));
    fake.push_response(ScriptedResponse::server_error());
    let out = send(&d, SyncOp::Add, &people()).await;
    assert_eq!(
        out,
        SendOutcome::RetryLater {
            after: None,
            reason: "meta answered HTTP 500".into()
        }
    );
    fake.push_response(ScriptedResponse::delay(Duration::from_secs(2)));
    let start = Instant::now();
    let out = send(&d, SyncOp::Add, &people()).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    match out {
        SendOutcome::RetryLater {
            after: None,
            reason,
        } => {
            assert!(reason.starts_with("meta request timed out"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_meta_is_retried_later() {
    // A port that was just free: connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = MetaConfig::new(Secret::new(FAKE_META_TOKEN));
    c.base_url = format!("http://127.0.0.1:{port}");
    let d = MetaDestination::new("meta", c, DELIVERY).unwrap();
    let out = send(&d, SyncOp::Add, &people()).await;
    match out {
        SendOutcome::RetryLater {
            after: None,
            reason,
        } => {
            assert!(
                reason.starts_with("meta request could not connect"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_audience_fails_until_cleared_and_others_are_untouched() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    fake.reject_audience(AUDIENCE, 613);
    assert_eq!(send(&d, SyncOp::Add, &people()).await.class(), "retry");
    assert_eq!(
        send_to(&d, "111", SyncOp::Add, &people()).await.class(),
        "success"
    );
    fake.clear_rejections();
    assert_eq!(send(&d, SyncOp::Add, &people()).await.class(), "success");
    fake.reject_all(200);
    assert_eq!(
        send_to(&d, "111", SyncOp::Add, &people()).await.class(),
        "destination_down"
    );
}

#[tokio::test]
async fn create_audience_makes_one_and_members_can_be_added_to_it() {
    let fake = FakeMeta::start().await;
    let d = destination(&fake);
    let def = AudienceDef {
        id: 1,
        name: "CIO__CartAbandon".into(),
        segment_id: 42,
        mode: Default::default(),
        destinations: vec!["meta".into()],
    };
    let id = d.create_audience(&def).await.unwrap();
    let created = fake.created_audiences();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, id);
    assert_eq!(created[0].ad_account_id, "1234567890");
    assert_eq!(created[0].name, "CIO__CartAbandon");
    assert_eq!(
        created[0].description.as_deref(),
        Some("Synced by koala from Customer.io segment 42")
    );
    assert_eq!(
        created[0].customer_file_source.as_deref(),
        Some("USER_PROVIDED_ONLY")
    );
    assert_eq!(
        send_to(&d, &id, SyncOp::Add, &people()).await.class(),
        "success"
    );
    assert_eq!(fake.members(&id).len(), 3);

    fake.reject_all(17);
    assert_eq!(d.create_audience(&def).await.unwrap_err().class(), "retry");
}
