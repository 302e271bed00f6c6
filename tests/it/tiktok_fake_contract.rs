//! The fake TikTok API holds to koala's reading of TikTok's contract, and
//! the TikTok destination speaks it: positional hashed rows, the
//! Access-Token header, HTTP 200 answers classified by their `code`.

use std::time::Duration;

use koala::audiences::AudienceDef;
use koala::destinations::tiktok_audiences::{TiktokConfig, TiktokDestination, DELIVERY};
use koala::destinations::{Destination, SendOutcome, SendTarget};
use koala::normalization::sha256_hex;
use koala::normalization::tiktok::PhoneFormat;
use koala::secret::Secret;
use koala::store::{PersonRecord, SyncOp};
use serde_json::{json, Value};

use crate::support::fake_tiktok::*;

const AUDIENCE: &str = "1780000999";

fn destination_with(fake: &FakeTiktok, edit: impl FnOnce(&mut TiktokConfig)) -> TiktokDestination {
    let mut c = TiktokConfig::new(Secret::new(TOKEN), ADVERTISER);
    c.base_url = fake.base_url();
    edit(&mut c);
    let delivery = koala::destinations::DeliverySettings {
        request_timeout: Duration::from_secs(2),
        ..DELIVERY
    };
    TiktokDestination::new("tiktok", c, delivery).unwrap()
}

fn def() -> AudienceDef {
    AudienceDef {
        id: 1,
        name: "CIO__Test".into(),
        segment_id: 42,
        mode: Default::default(),
        destinations: vec!["tiktok".into()],
    }
}

async fn send(d: &TiktokDestination, op: SyncOp, people: &[PersonRecord]) -> SendOutcome {
    let def = def();
    let mapping = koala::destinations::Mapping::resolve(
        koala::destinations::tiktok_audiences::FIELDS,
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
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        ..Default::default()
    }
}

async fn raw(fake: &FakeTiktok, token: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}/segment/mapping/", fake.base_url()))
        .header("Access-Token", token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn tiktok_rows_land_positionally_and_remove_deletes() {
    let fake = FakeTiktok::start().await;
    let d = destination_with(&fake, |c| c.phone_format = PhoneFormat::Digits);
    let people = [
        person(Some("Test@Example.com"), None),
        person(None, Some("+15551234567")),
    ];
    assert_eq!(send(&d, SyncOp::Add, &people).await.class(), "success");
    let email = sha256_hex("test@example.com");
    let phone = sha256_hex("15551234567");
    assert_eq!(
        fake.members(AUDIENCE),
        [email.clone(), phone.clone()].into()
    );
    let m = &fake.mappings()[0];
    assert_eq!((m.action.as_str(), m.rows), ("add", 2));
    assert_eq!(m.id_schema, ["EMAIL_SHA256", "PHONE_SHA256"]);
    assert_eq!(
        send(&d, SyncOp::Remove, &people[..1]).await.class(),
        "success"
    );
    assert_eq!(fake.mappings()[1].action, "delete");
    assert_eq!(fake.members(AUDIENCE), [phone].into());
}

#[tokio::test]
async fn the_fake_refuses_what_tiktok_refuses() {
    let fake = FakeTiktok::start().await;
    let row = json!([[{"id": sha256_hex("a@example.com"), "audience_ids": [AUDIENCE]}, {}]]);
    let body = json!({"advertiser_ids": [ADVERTISER], "action": "add",
                      "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"], "batch_data": row});
    assert_eq!(raw(&fake, TOKEN, body.clone()).await["code"], 0);
    // The header takes the bare token.
    assert_eq!(
        raw(&fake, &format!("Bearer {TOKEN}"), body.clone()).await["code"],
        40105
    );
    // A row with a cell missing, an unhashed id, too many rows.
    let mut short = body.clone();
    short["batch_data"] =
        json!([[{"id": sha256_hex("a@example.com"), "audience_ids": [AUDIENCE]}]]);
    assert_eq!(raw(&fake, TOKEN, short).await["code"], 40002);
    let mut clear = body.clone();
    clear["batch_data"] = json!([[{"id": "a@example.com", "audience_ids": [AUDIENCE]}, {}]]);
    assert_eq!(raw(&fake, TOKEN, clear).await["code"], 40002);
    let mut many = body.clone();
    many["batch_data"] = json!(vec![row[0].clone(); MAX_ROWS + 1]);
    assert_eq!(raw(&fake, TOKEN, many).await["code"], 40002);
}

#[tokio::test]
async fn tiktok_http_200_codes_are_classified() {
    let fake = FakeTiktok::start().await;
    let d = destination_with(&fake, |_| {});
    let one = [person(Some("a@example.com"), None)];
    fake.push_code(40100, "Too many requests");
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "retry");
    fake.push_code(51000, "System error");
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "retry");
    fake.push_code(40001, "No permission to operate advertiser");
    assert_eq!(
        send(&d, SyncOp::Add, &one).await.class(),
        "destination_down"
    );
    fake.push_code(41234, "Something new");
    assert_eq!(
        send(&d, SyncOp::Add, &one).await,
        SendOutcome::Permanent {
            reason: "tiktok code 41234 (HTTP 200): Something new".into()
        }
    );
    fake.poison(&sha256_hex("a@example.com"));
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "permanent");
    fake.push_reply(503, json!({}));
    assert_eq!(send(&d, SyncOp::Add, &one).await.class(), "retry");
    // A wrong token: TikTok's 40105, a pause.
    let wrong = destination_with(&fake, |c| c.access_token = Secret::new("nope"));
    assert_eq!(
        send(&wrong, SyncOp::Add, &one).await.class(),
        "destination_down"
    );
}

#[tokio::test]
async fn tiktok_creates_an_audience_for_the_first_id_type() {
    let fake = FakeTiktok::start().await;
    let d = destination_with(&fake, |_| {});
    let id = d.create_audience(&def()).await.unwrap();
    let created = fake.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, id);
    assert_eq!(created[0].name, "CIO__Test");
    assert_eq!(created[0].id_type, "EMAIL_SHA256");
}
