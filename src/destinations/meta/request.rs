//! The Graph API requests koala makes (reference §1.2, §1.3). Bodies are
//! JSON; the token travels in the Authorization header, added when sent.

use reqwest::Method;
use serde::Serialize;
use url::Url;

use super::config::CustomerFileSource;
use super::encoder::Payload;
use crate::audiences::SyncOp;
use crate::destinations::ReplaceSession;

/// A request ready to send. `body` is serialized JSON and may hold hashes:
/// never log it.
#[derive(Debug, Clone)]
pub struct MetaRequest {
    pub method: Method,
    pub url: Url,
    pub body: Vec<u8>,
}

/// Builds URLs under `{base_url}/{api_version}/`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    base: Url,
    version: String,
}

impl Endpoints {
    pub fn new(base_url: &str, api_version: &str) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)?;
        if base.cannot_be_a_base() {
            anyhow::bail!("base_url cannot hold a path");
        }
        Ok(Endpoints {
            base,
            version: api_version.to_owned(),
        })
    }

    /// Add: `POST /{version}/{audience_id}/users`;
    /// remove: `DELETE` on the same path with the same body shape.
    pub fn users(&self, audience_id: &str, op: SyncOp, payload: &Payload) -> MetaRequest {
        #[derive(Serialize)]
        struct Body<'a> {
            payload: &'a Payload,
        }
        let method = match op {
            // An update adds again: Meta keeps only the matching keys, and
            // an add of a member it holds is idempotent.
            SyncOp::Add | SyncOp::Update => Method::POST,
            SyncOp::Remove => Method::DELETE,
        };
        MetaRequest {
            method,
            url: self.url(&[audience_id, "users"]),
            body: to_json(&Body { payload }),
        }
    }

    /// Full replace, one batch: `POST /{version}/{audience_id}/usersreplace`
    /// with the session (reference §1.3; sub-field names are confirmed only
    /// by third-party code) and the same payload as `/users`.
    pub fn users_replace(
        &self,
        audience_id: &str,
        session: &ReplaceSession,
        payload: &Payload,
    ) -> MetaRequest {
        #[derive(Serialize)]
        struct Session {
            session_id: u64,
            batch_seq: u32,
            last_batch_flag: bool,
            estimated_num_total: u64,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            session: Session,
            payload: &'a Payload,
        }
        MetaRequest {
            method: Method::POST,
            url: self.url(&[audience_id, "usersreplace"]),
            body: to_json(&Body {
                session: Session {
                    session_id: session.session_id,
                    batch_seq: session.batch_seq,
                    last_batch_flag: session.last_batch,
                    estimated_num_total: session.estimated_total,
                },
                payload,
            }),
        }
    }

    /// `POST /{version}/act_{ad_account}/customaudiences`; answers `{"id"}`.
    pub fn create_audience(
        &self,
        ad_account: &str,
        name: &str,
        description: &str,
        source: CustomerFileSource,
    ) -> MetaRequest {
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            subtype: &'static str,
            description: &'a str,
            customer_file_source: &'static str,
        }
        let account = format!("act_{ad_account}");
        MetaRequest {
            method: Method::POST,
            url: self.url(&[&account, "customaudiences"]),
            body: to_json(&Body {
                name,
                subtype: "CUSTOM",
                description,
                customer_file_source: source.as_str(),
            }),
        }
    }

    /// Segments are percent-encoded, so an odd audience id stays one segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .push(&self.version)
            .extend(segments);
        url
    }
}

fn to_json(body: &impl Serialize) -> Vec<u8> {
    // Plain structs of strings: serializing cannot fail.
    serde_json::to_vec(body).expect("serializable body")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn payload() -> Payload {
        Payload {
            schema: vec!["EXTERN_ID", "EMAIL"],
            is_raw: true,
            data: vec![vec!["c1".into(), "".into()]],
        }
    }

    fn body(r: &MetaRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn add_posts_and_remove_deletes_the_users_edge() {
        let e = Endpoints::new("https://graph.facebook.com", "v25.0").unwrap();
        let add = e.users("23850001", SyncOp::Add, &payload());
        assert_eq!(add.method, Method::POST);
        assert_eq!(
            add.url.as_str(),
            "https://graph.facebook.com/v25.0/23850001/users"
        );
        assert_eq!(
            body(&add),
            json!({"payload": {"schema": ["EXTERN_ID", "EMAIL"], "is_raw": true, "data": [["c1", ""]]}})
        );
        let remove = e.users("23850001", SyncOp::Remove, &payload());
        assert_eq!(remove.method, Method::DELETE);
        assert_eq!(remove.url, add.url);
        assert_eq!(body(&remove), body(&add));
    }

    #[test]
    fn replace_posts_the_session_and_payload_to_usersreplace() {
        let e = Endpoints::new("https://graph.facebook.com", "v25.0").unwrap();
        let session = ReplaceSession {
            session_id: 9_876_543_210,
            batch_seq: 2,
            last_batch: true,
            estimated_total: 25_000,
        };
        let r = e.users_replace("23850001", &session, &payload());
        assert_eq!(r.method, Method::POST);
        assert_eq!(
            r.url.as_str(),
            "https://graph.facebook.com/v25.0/23850001/usersreplace"
        );
        assert_eq!(
            body(&r),
            json!({
                "session": {"session_id": 9_876_543_210u64, "batch_seq": 2,
                            "last_batch_flag": true, "estimated_num_total": 25_000},
                "payload": {"schema": ["EXTERN_ID", "EMAIL"], "is_raw": true, "data": [["c1", ""]]},
            })
        );
    }

    #[test]
    fn a_base_url_path_is_kept_and_odd_ids_stay_one_segment() {
        let e = Endpoints::new("http://proxy.local/meta/", "v24.0").unwrap();
        let r = e.users("12/../x", SyncOp::Add, &payload());
        assert_eq!(
            r.url.as_str(),
            "http://proxy.local/meta/v24.0/12%2F..%2Fx/users"
        );
    }

    #[test]
    fn create_posts_a_custom_audience_to_the_ad_account() {
        let e = Endpoints::new("https://graph.facebook.com", "v25.0").unwrap();
        let r = e.create_audience(
            "123",
            "CartAbandon",
            "Synced by koala from Customer.io segment 42",
            CustomerFileSource::UserProvidedOnly,
        );
        assert_eq!(r.method, Method::POST);
        assert_eq!(
            r.url.as_str(),
            "https://graph.facebook.com/v25.0/act_123/customaudiences"
        );
        assert_eq!(
            body(&r),
            json!({
                "name": "CartAbandon",
                "subtype": "CUSTOM",
                "description": "Synced by koala from Customer.io segment 42",
                "customer_file_source": "USER_PROVIDED_ONLY",
            })
        );
    }
}
