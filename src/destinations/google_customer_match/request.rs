//! The Data Manager requests koala makes
//! (<https://developers.google.com/data-manager/api/reference/rest/v1/audienceMembers/ingest>,
//! `…/remove`, `…/requestStatus/retrieve`). The access token is added when
//! sent.

use serde::Serialize;
use url::Url;

use super::config::{Account, Consent, TermsStatus};
use super::encoder::Member;
use crate::audiences::SyncOp;

/// A POST ready to send. `body` holds hashes: never log it.
#[derive(Debug, Clone)]
pub struct GoogleRequest {
    pub url: Url,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct AccountJson<'a> {
    account_type: &'static str,
    account_id: &'a str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct DestinationJson<'a> {
    operating_account: AccountJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login_account: Option<AccountJson<'a>>,
    product_destination_id: &'a str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsentJson {
    ad_user_data: &'static str,
    ad_personalization: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct TermsJson {
    customer_match_terms_of_service_status: &'static str,
}

/// `audienceMembers:ingest`. Consent and terms exist only here: the
/// remove request has neither field.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IngestBody<'a> {
    destinations: [DestinationJson<'a>; 1],
    audience_members: &'a [Member],
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<ConsentJson>,
    encoding: &'static str,
    terms_of_service: TermsJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RemoveBody<'a> {
    destinations: [DestinationJson<'a>; 1],
    audience_members: &'a [Member],
    encoding: &'static str,
}

/// Everything a request needs besides the members.
#[derive(Debug, Clone)]
pub struct Endpoints {
    base: Url,
    operating: (Account, String),
    login: Option<(Account, String)>,
    consent: Option<Consent>,
    terms: TermsStatus,
}

impl Endpoints {
    pub fn new(
        base_url: &str,
        operating: &Account,
        login: Option<&Account>,
        consent: Option<Consent>,
        terms: TermsStatus,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)?;
        if base.cannot_be_a_base() {
            anyhow::bail!("base_url cannot hold a path");
        }
        Ok(Endpoints {
            base,
            operating: (operating.clone(), operating.id_digits()),
            login: login.map(|l| (l.clone(), l.id_digits())),
            consent,
            terms,
        })
    }

    /// Ingest (add) or remove `members` for the audience
    /// `product_destination_id`.
    pub fn members(
        &self,
        op: SyncOp,
        product_destination_id: &str,
        members: &[Member],
    ) -> GoogleRequest {
        fn account((a, id): &(Account, String)) -> AccountJson<'_> {
            AccountJson {
                account_type: a.account_type.as_str(),
                account_id: id.as_str(),
            }
        }
        let destination = DestinationJson {
            operating_account: account(&self.operating),
            login_account: self.login.as_ref().map(account),
            product_destination_id,
        };
        // An update re-ingests: Customer Match keeps no attributes beyond
        // the identifiers, and ingesting a member again is idempotent.
        let (method, body) = match op {
            SyncOp::Add | SyncOp::Update => (
                "audienceMembers:ingest",
                to_json(&IngestBody {
                    destinations: [destination],
                    audience_members: members,
                    consent: self.consent.map(|c| ConsentJson {
                        ad_user_data: c.ad_user_data.as_str(),
                        ad_personalization: c.ad_personalization.as_str(),
                    }),
                    encoding: "HEX",
                    terms_of_service: TermsJson {
                        customer_match_terms_of_service_status: self.terms.as_str(),
                    },
                }),
            ),
            SyncOp::Remove => (
                "audienceMembers:remove",
                to_json(&RemoveBody {
                    destinations: [destination],
                    audience_members: members,
                    encoding: "HEX",
                }),
            ),
        };
        GoogleRequest {
            url: self.url(method),
            body,
        }
    }

    /// `GET /v1/requestStatus:retrieve?requestId=…`.
    pub fn request_status(&self, request_id: &str) -> Url {
        let mut url = self.url("requestStatus:retrieve");
        url.query_pairs_mut().append_pair("requestId", request_id);
        url
    }

    fn url(&self, method: &str) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .pop_if_empty()
            .push("v1")
            .push(method);
        url
    }
}

fn to_json(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("serializable body")
}

#[cfg(test)]
mod tests {
    use super::super::config::{AccountType, ConsentStatus};
    use super::super::encoder::{UserData, UserIdentifier};
    use super::*;
    use serde_json::{json, Value};

    fn members() -> Vec<Member> {
        vec![Member {
            user_data: UserData {
                user_identifiers: vec![UserIdentifier::EmailAddress("ab".repeat(32))],
            },
            consent: None,
        }]
    }

    fn endpoints() -> Endpoints {
        Endpoints::new(
            "https://datamanager.googleapis.com",
            &Account {
                account_type: AccountType::GoogleAds,
                account_id: "123-456-7890".into(),
            },
            Some(&Account {
                account_type: AccountType::GoogleAds,
                account_id: "1112223333".into(),
            }),
            Some(Consent {
                ad_user_data: ConsentStatus::Granted,
                ad_personalization: ConsentStatus::Denied,
            }),
            TermsStatus::Accepted,
        )
        .unwrap()
    }

    #[test]
    fn ingest_carries_destination_consent_encoding_and_terms() {
        let r = endpoints().members(SyncOp::Add, "555", &members());
        assert_eq!(
            r.url.as_str(),
            "https://datamanager.googleapis.com/v1/audienceMembers:ingest"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "destinations": [{
                    "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                    "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "1112223333"},
                    "productDestinationId": "555"}],
                "audienceMembers": [{"userData": {"userIdentifiers": [{"emailAddress": "ab".repeat(32)}]}}],
                "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"},
                "encoding": "HEX",
                "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
            })
        );
    }

    #[test]
    fn remove_has_neither_consent_nor_terms() {
        let r = endpoints().members(SyncOp::Remove, "555", &members());
        assert_eq!(
            r.url.as_str(),
            "https://datamanager.googleapis.com/v1/audienceMembers:remove"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["audienceMembers", "destinations", "encoding"]);
    }

    #[test]
    fn request_status_url_and_base_paths() {
        let e = Endpoints::new(
            "http://proxy.local/google/",
            &Account {
                account_type: AccountType::GoogleAds,
                account_id: "1".into(),
            },
            None,
            None,
            TermsStatus::Accepted,
        )
        .unwrap();
        assert_eq!(
            e.request_status("a b").as_str(),
            "http://proxy.local/google/v1/requestStatus:retrieve?requestId=a+b"
        );
    }
}
