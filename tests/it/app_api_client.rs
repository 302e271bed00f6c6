//! The App API client against the fake App API: pagination, pacing,
//! retries, typed errors and identifier encoding.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use koala::customerio::app_api::{AppApiClient, AppApiError, IdType, Member, RetryPolicy};
use koala::secret::Secret;

use crate::support::fake_app_api::{FakeAppApi, FakeMember, FAKE_APP_API_KEY, FAKE_RATE_LIMIT};

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

fn client(fake: &FakeAppApi) -> AppApiClient {
    AppApiClient::new(&fake.base_url(), Secret::new(FAKE_APP_API_KEY), 10)
        .unwrap()
        .with_retry_policy(quick_retries())
}

async fn all_members(client: &AppApiClient, segment: u64, limit: u32) -> Vec<Member> {
    let pages: Vec<_> = client
        .membership_stream(segment, limit)
        .try_collect()
        .await
        .unwrap();
    pages.into_iter().flat_map(|p| p.members).collect()
}

#[tokio::test]
async fn pagination_returns_every_member_exactly_once() {
    let fake = FakeAppApi::start().await;
    fake.set_generated_segment(42, 5_000, "u");
    fake.add_member(42, FakeMember::email("only-email@example.com"));
    fake.add_member(42, FakeMember::default().with_cio_id("0300aa"));
    fake.remove_member(42, "u17");
    let c = client(&fake);

    let members = all_members(&c, 42, 250).await;

    assert_eq!(members.len(), 5_001);
    let keys: HashSet<_> = members
        .iter()
        .map(|m| format!("{:?}", (&m.id, &m.cio_id, &m.email)))
        .collect();
    assert_eq!(keys.len(), members.len(), "a member came twice");
    assert!(!members.iter().any(|m| m.id.as_deref() == Some("u17")));
    let first = &members[0];
    assert_eq!(first.id.as_deref(), Some("u0"));
    assert_eq!(first.email.as_deref(), Some("u0@example.com"));
    assert_eq!(first.cio_id.as_deref(), Some("uc0"));
    assert_eq!(c.customer_count(42).await.unwrap(), 5_001);
    // 5001 members / 250 = 21 pages, then the count.
    assert_eq!(fake.pages_served(), 21);
    assert!(fake.max_rate_observed() <= FAKE_RATE_LIMIT);
    assert_eq!(fake.rate_limited_count(), 0);
}

#[tokio::test]
async fn a_million_members_arrive_in_30000_member_pages() {
    let fake = FakeAppApi::start().await;
    fake.set_generated_segment(1, 1_000_000, "p");
    let c = client(&fake);

    let mut seen = vec![false; 1_000_000];
    let mut pager = c.membership_pager(1, 30_000);
    while let Some(page) = pager.next_page().await.unwrap() {
        for m in page.members {
            let i: usize = m.id.unwrap()[1..].parse().unwrap();
            assert!(!seen[i], "p{i} came twice");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(fake.pages_served(), 34);
}

#[tokio::test]
async fn the_client_side_limit_is_shared_by_every_clone() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "vip", vec![FakeMember::id("1")]);
    let c = client(&fake);

    let started = Instant::now();
    let calls = (0..25).map(|_| {
        let c = c.clone();
        async move { c.customer_count(7).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), 1);
    }

    // 25 requests at no more than 10/s need at least 2.4 s.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.request_count(), 25);
    assert!(
        fake.max_rate_observed() <= FAKE_RATE_LIMIT,
        "{}",
        fake.max_rate_observed()
    );
    assert_eq!(fake.rate_limited_count(), 0);
}

#[tokio::test]
async fn the_fakes_own_429s_are_waited_out() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "vip", vec![FakeMember::id("1")]);
    // A client paced far above the real limit trips the server's.
    let c = AppApiClient::new(&fake.base_url(), Secret::new(FAKE_APP_API_KEY), 1000)
        .unwrap()
        .with_retry_policy(RetryPolicy {
            max_attempts: 6,
            ..quick_retries()
        });

    let calls = (0..15).map(|_| c.customer_count(7));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), 1);
    }
    assert!(fake.rate_limited_count() > 0);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "vip", vec![FakeMember::id("1")]);
    let c = client(&fake);

    fake.fail_next(1, 429);
    fake.fail_next(1, 500);
    fake.fail_next(1, 503);
    assert_eq!(c.customer_count(7).await.unwrap(), 1);
    assert_eq!(fake.request_count(), 4);

    // Retry-After is a floor on the wait.
    fake.fail_next_with_retry_after(1, 429, 1);
    let started = Instant::now();
    assert_eq!(c.customer_count(7).await.unwrap(), 1);
    assert!(started.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn retries_stop_at_the_attempt_limit() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "vip", vec![FakeMember::id("1")]);
    fake.fail_next(10, 502);
    let c = client(&fake);

    let e = c.customer_count(7).await.unwrap_err();

    assert!(matches!(e, AppApiError::Status { status: 502, .. }), "{e}");
    assert!(e.is_transient());
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn an_unknown_segment_is_not_found_and_not_retried() {
    let fake = FakeAppApi::start().await;
    let c = client(&fake);

    for e in [
        c.segment(999).await.unwrap_err(),
        c.customer_count(999).await.unwrap_err(),
        c.membership_page(999, None, 100).await.unwrap_err(),
    ] {
        assert!(
            matches!(&e, AppApiError::NotFound { what } if what == "segment 999"),
            "{e}"
        );
        assert!(!e.is_transient());
    }
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn a_wrong_key_is_unauthorized_not_retried_and_never_echoed() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "vip", vec![]);
    let c = AppApiClient::new(&fake.base_url(), Secret::new("wrong-key-s3cr3t"), 10)
        .unwrap()
        .with_retry_policy(quick_retries());

    let e = c.list_segments().await.unwrap_err();

    assert!(
        matches!(e, AppApiError::Unauthorized { status: 401 }),
        "{e}"
    );
    assert_eq!(fake.request_count(), 1);
    let shown = format!("{e} {e:?}");
    let shown = format!("{shown} {:#}", anyhow::Error::from(e));
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[tokio::test]
async fn segments_are_listed_and_described() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(7, "VIP", vec![]);
    fake.set_segment(42, "Cart abandoners", vec![FakeMember::id("1")]);
    let c = client(&fake);

    let list = c.list_segments().await.unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|s| (s.id, s.name.clone().unwrap()))
        .collect();
    assert_eq!(
        names,
        [(7, "VIP".into()), (42, "Cart abandoners".to_string())]
    );
    let s = c.segment(42).await.unwrap();
    assert_eq!(s.name.as_deref(), Some("Cart abandoners"));
    assert_eq!(s.state.as_deref(), Some("finished"));

    // An empty segment is one empty, final page.
    let members = all_members(&c, 7, 100).await;
    assert!(members.is_empty());
}

#[tokio::test]
async fn identifiers_with_plus_and_at_are_path_encoded() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(
        5,
        "encoded",
        vec![FakeMember::id("x/y z+1")
            .with_email("a+b@example.com")
            .with_cio_id("03000001")
            .with_phone("+15551234567")],
    );
    let c = client(&fake);

    for (value, id_type) in [
        ("a+b@example.com", IdType::Email),
        ("+15551234567", IdType::Phone),
        ("x/y z+1", IdType::Id),
        ("03000001", IdType::CioId),
    ] {
        let customer = c
            .customer_attributes(value, id_type)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{value} not found"));
        assert_eq!(customer.id.as_deref(), Some("x/y z+1"));
        assert_eq!(
            customer.attribute("email").as_deref(),
            Some("a+b@example.com")
        );
    }
    let sent = fake.requests();
    assert!(
        sent.contains(&"/v1/customers/a%2Bb%40example.com/attributes?id_type=email".into()),
        "{sent:?}"
    );
    assert!(
        sent.contains(&"/v1/customers/%2B15551234567/attributes?id_type=phone".into()),
        "{sent:?}"
    );
    assert!(
        sent.contains(&"/v1/customers/x%2Fy%20z%2B1/attributes?id_type=id".into()),
        "{sent:?}"
    );

    assert!(c
        .customer_attributes("nobody@example.com", IdType::Email)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_scan_interrupted_by_an_outage_resumes_from_its_cursor() {
    let fake = FakeAppApi::start().await;
    fake.set_generated_segment(3, 1_000, "m");
    fake.fail_after_pages(2);
    let c = client(&fake);
    let mut pager = c.membership_pager(3, 300);
    let mut members = Vec::new();

    for _ in 0..2 {
        members.extend(pager.next_page().await.unwrap().unwrap().members);
    }
    let e = pager.next_page().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.status(), Some(503));

    fake.end_outage();
    while let Some(page) = pager.next_page().await.unwrap() {
        members.extend(page.members);
    }
    let ids: HashSet<_> = members.iter().map(|m| m.id.clone().unwrap()).collect();
    assert_eq!((members.len(), ids.len()), (1_000, 1_000));
}

#[tokio::test]
async fn without_identifiers_the_ids_are_used() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(
        9,
        "ids only",
        vec![
            FakeMember::id("1").with_email("a@example.com"),
            FakeMember::email("no-id@example.com"),
        ],
    );
    fake.set_identifiers_enabled(false);
    let c = client(&fake);

    let page = c.membership_page(9, None, 10).await.unwrap();

    assert_eq!(
        page.members,
        vec![Member {
            id: Some("1".into()),
            ..Member::default()
        }]
    );
    assert_eq!(page.skipped, 1);
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn the_fake_enforces_the_documented_limit_bounds() {
    let fake = FakeAppApi::start().await;
    fake.set_generated_segment(1, 1_500, "d");
    fake.set_rate_limit(None);
    let http = reqwest::Client::new();
    let get = |query: &str| {
        http.get(format!(
            "{}/v1/segments/1/membership{query}",
            fake.base_url()
        ))
        .bearer_auth(FAKE_APP_API_KEY)
        .send()
    };

    assert_eq!(get("?limit=30001").await.unwrap().status(), 400);
    assert_eq!(get("?limit=0").await.unwrap().status(), 400);
    assert_eq!(get("?start=bogus").await.unwrap().status(), 400);
    let body: serde_json::Value = get("").await.unwrap().json().await.unwrap();
    assert_eq!(body["ids"].as_array().unwrap().len(), 1_000);
    let next = body["next"].as_str().unwrap();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/segments/1/membership", fake.base_url()),
        [("start", next)],
    )
    .unwrap();
    let body: serde_json::Value = http
        .get(url)
        .bearer_auth(FAKE_APP_API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ids"].as_array().unwrap().len(), 500);
    assert_eq!(body["next"], "");
}

#[tokio::test]
async fn the_fake_holds_the_bulk_lookup_to_its_contract() {
    let fake = FakeAppApi::start().await;
    fake.set_segment(
        7,
        "vip",
        vec![
            FakeMember::id("1")
                .with_email("a@example.com")
                .with_cio_id("c1"),
            FakeMember::id("2").with_phone("+14155550102"),
        ],
    );
    fake.set_rate_limit(None);
    let http = reqwest::Client::new();
    let url = |q: &str| format!("{}/v1/customers/attributes{q}", fake.base_url());
    let post = |q: &str, body: serde_json::Value, key: &str| {
        http.post(url(q)).bearer_auth(key).json(&body).send()
    };
    let ids =
        |n: usize| serde_json::json!({ "ids": (0..n).map(|i| i.to_string()).collect::<Vec<_>>() });
    let k = FAKE_APP_API_KEY;
    assert_eq!(
        post("?id_type=id", ids(1), "wrong").await.unwrap().status(),
        401
    );
    assert_eq!(post("", ids(1), k).await.unwrap().status(), 400);
    assert_eq!(
        post("?id_type=nope", ids(1), k).await.unwrap().status(),
        400
    );
    assert_eq!(post("?id_type=id", ids(0), k).await.unwrap().status(), 400);
    assert_eq!(
        post("?id_type=id", ids(101), k).await.unwrap().status(),
        400
    );
    assert_eq!(
        post("?id_type=id", ids(100), k).await.unwrap().status(),
        200
    );
    let not_json = http
        .post(url("?id_type=id"))
        .bearer_auth(k)
        .body("ids=1")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    // Unknown ids are left out; each entry is wrapped like the single lookup.
    let body: serde_json::Value = post(
        "?id_type=id",
        serde_json::json!({"ids": ["1", "nobody", "2"]}),
        k,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let customers = body["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 2, "{body}");
    assert_eq!(
        customers[0]["customer"]["attributes"]["email"],
        "a@example.com"
    );
    assert_eq!(
        customers[1]["customer"]["attributes"]["phone"],
        "+14155550102"
    );
    let by_cio: serde_json::Value = post("?id_type=cio_id", serde_json::json!({"ids": ["c1"]}), k)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_cio["customers"][0]["customer"]["id"], "1");
    // Answered ones are counted (the refused ones are not).
    assert_eq!(fake.bulk_lookups().len(), 3);
    assert_eq!(fake.single_lookups(), 0);
    // The 10-per-second window is shared with every other endpoint.
    fake.set_rate_limit(Some(FAKE_RATE_LIMIT));
    for _ in 0..FAKE_RATE_LIMIT {
        http.get(format!("{}/v1/segments", fake.base_url()))
            .bearer_auth(k)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(post("?id_type=id", ids(1), k).await.unwrap().status(), 429);
}

#[tokio::test]
async fn the_client_looks_up_a_hundred_people_in_one_request() {
    let fake = FakeAppApi::start().await;
    fake.set_generated_segment_with_phones(7, 150, "g");
    let c = client(&fake);
    let mut ids: Vec<String> = (0..99).map(|i| format!("g{i}")).collect();
    ids.push("nobody".into());
    let found = c.customers_attributes(&ids, IdType::Id).await.unwrap();
    assert_eq!(found.len(), 99);
    assert_eq!(found[5].key(IdType::Id).as_deref(), Some("g5"));
    assert_eq!(found[5].attribute("phone").as_deref(), Some("+14150000005"));
    // 429s and 5xx are retried by the client's one policy.
    fake.fail_next(2, 503);
    let again = c
        .customers_attributes(&["gc3".to_owned()], IdType::CioId)
        .await
        .unwrap();
    assert_eq!(again[0].key(IdType::Id).as_deref(), Some("g3"));
    assert_eq!(fake.request_count(), 4);
    assert_eq!(fake.bulk_lookups().len(), 2);
}
