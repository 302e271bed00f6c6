//! openapi.yaml stays true: its operations are exactly the router's, and
//! every one of them is really served.

use std::collections::BTreeSet;

use crate::support::app::*;

fn spec_routes() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths") {
        for (method, _) in item.as_mapping().unwrap() {
            let m = method.as_str().unwrap();
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_spec_lists_exactly_the_routes_of_the_router() {
    let router: BTreeSet<_> = koala::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let spec = spec_routes();
    let missing: Vec<_> = router.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.yaml: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.yaml documents routes the router lacks: {extra:?}"
    );
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let app = TestApp::start().await;
    for (method, path) in koala::http::ROUTES {
        let concrete = path.replace("{name}", CART).replace("{id}", "someone");
        let r = app
            .http
            .request(method.parse().unwrap(), app.url(&concrete))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 405, "{method} {path}");
        if r.status() == 404 {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is not routed"
            );
        }
    }
    app.stop().await;
}
