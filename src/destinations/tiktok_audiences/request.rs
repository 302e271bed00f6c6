//! The TikTok requests koala makes (audience segment API, v1.3): create
//! `POST /segment/audience/`, members `POST /segment/mapping/`
//! (<https://business-api.tiktok.com/portal/docs?id=1739940585975809>).
//! The token travels in the `Access-Token` header, added when sent.

use serde::Serialize;
use serde_json::Value;
use url::Url;

/// A POST ready to send. `body` may hold hashes: never log it.
#[derive(Debug, Clone)]
pub struct TiktokRequest {
    pub url: Url,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Endpoints {
    base: Url,
    advertiser_id: String,
}

impl Endpoints {
    pub fn new(base_url: &str, advertiser_id: &str) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)?;
        if base.cannot_be_a_base() {
            anyhow::bail!("base_url cannot hold a path");
        }
        Ok(Endpoints {
            base,
            advertiser_id: advertiser_id.trim().to_owned(),
        })
    }

    /// `{"advertiser_ids", "action", "id_schema", "batch_data"}`.
    pub fn mapping(
        &self,
        action: &str,
        id_schema: &[&str],
        rows: Vec<Vec<Value>>,
    ) -> TiktokRequest {
        #[derive(Serialize)]
        struct Body<'a> {
            advertiser_ids: [&'a str; 1],
            action: &'a str,
            id_schema: &'a [&'a str],
            batch_data: Vec<Vec<Value>>,
        }
        TiktokRequest {
            url: self.url("segment/mapping/"),
            body: to_json(&Body {
                advertiser_ids: [&self.advertiser_id],
                action,
                id_schema,
                batch_data: rows,
            }),
        }
    }

    /// `{"custom_audience_name", "advertiser_id", "id_type", "action": "create"}`.
    pub fn create(&self, name: &str, id_type: &str) -> TiktokRequest {
        #[derive(Serialize)]
        struct Body<'a> {
            custom_audience_name: &'a str,
            advertiser_id: &'a str,
            id_type: &'a str,
            action: &'static str,
        }
        TiktokRequest {
            url: self.url("segment/audience/"),
            body: to_json(&Body {
                custom_audience_name: name,
                advertiser_id: &self.advertiser_id,
                id_type,
                action: "create",
            }),
        }
    }

    /// `{base}/segment/mapping/` — TikTok's paths end with a slash.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        {
            let mut segs = url.path_segments_mut().expect("checked in new");
            segs.pop_if_empty();
            for s in path.split('/') {
                segs.push(s);
            }
        }
        url
    }
}

fn to_json(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("serializable body")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapping_and_create_bodies() {
        let e = Endpoints::new("https://business-api.tiktok.com/open_api/v1.3", "7001").unwrap();
        let r = e.mapping(
            "add",
            &["EMAIL_SHA256", "PHONE_SHA256"],
            vec![vec![json!({"id": "h", "audience_ids": ["9"]}), json!({})]],
        );
        assert_eq!(
            r.url.as_str(),
            "https://business-api.tiktok.com/open_api/v1.3/segment/mapping/"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"advertiser_ids": ["7001"], "action": "add", "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
                   "batch_data": [[{"id": "h", "audience_ids": ["9"]}, {}]]})
        );
        let c = e.create("CIO__Cart", "EMAIL_SHA256");
        assert_eq!(
            c.url.as_str(),
            "https://business-api.tiktok.com/open_api/v1.3/segment/audience/"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&c.body).unwrap(),
            json!({"custom_audience_name": "CIO__Cart", "advertiser_id": "7001", "id_type": "EMAIL_SHA256", "action": "create"})
        );
    }
}
