//! OAuth 2.0 access tokens for Google APIs, one cache for every grant:
//! a refresh token (Google Customer Match,
//! <https://developers.google.com/identity/protocols/oauth2/web-server#offline>)
//! or a service account's signed JWT assertion (BigQuery,
//! <https://developers.google.com/identity/protocols/oauth2/service-account#httprest>).
//! Either is a form POST to the token endpoint; the token is cached and
//! refreshed `margin` before it expires, one refresh at a time, and a call
//! the API answers 401 is retried once with a fresh token.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::signed_jwt::RsaSigningKey;
use crate::destinations::SendOutcome;
use crate::outbound::Answer;
use crate::secret::Secret;

/// The JWT-bearer grant's `grant_type` (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google's longest assertion lifetime: `exp` at most an hour after `iat`.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How an access token is obtained.
pub enum Grant {
    /// `grant_type=refresh_token` with an OAuth client.
    RefreshToken {
        client_id: Secret,
        client_secret: Secret,
        refresh_token: Secret,
    },
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an
    /// RS256 assertion signed by a service account's key: `iss` the
    /// account's email, `scope`, `aud` the token endpoint, `iat`, `exp`.
    ServiceAccount {
        client_email: String,
        key: RsaSigningKey,
        scope: String,
    },
}

impl Grant {
    /// What a refused exchange is called in a reason.
    fn refusal(&self) -> &'static str {
        match self {
            Grant::RefreshToken { .. } => "google refused to refresh the access token",
            Grant::ServiceAccount { .. } => {
                "google refused the service account's assertion for an access token"
            }
        }
    }
}

/// The claims of a service account's assertion.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenSource {
    client: reqwest::Client,
    token_url: String,
    grant: Grant,
    margin: Duration,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenSource {
    pub fn new(client: reqwest::Client, token_url: String, grant: Grant, margin: Duration) -> Self {
        TokenSource {
            client,
            token_url,
            grant,
            margin,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid access token: the cached one unless it is within `margin`
    /// of expiring, or `rejected` is the token the platform just refused.
    pub async fn token(&self, rejected: Option<&Secret>) -> Result<Secret, SendOutcome> {
        let mut cached = self.cached.lock().await;
        if let Some((tok, expires)) = cached.as_ref() {
            let fresh = Instant::now() + self.margin < *expires;
            if fresh && rejected != Some(tok) {
                return Ok(tok.clone());
            }
        }
        let (tok, lifetime) = self.refresh().await?;
        *cached = Some((tok.clone(), Instant::now() + lifetime));
        Ok(tok)
    }

    /// Calls with the cached token; on 401, once more with a fresh one
    /// (the second answer, whatever it is, is the caller's to classify).
    pub async fn authorized<F, Fut>(&self, who: &str, call: F) -> Result<Answer, SendOutcome>
    where
        F: Fn(Secret) -> Fut,
        Fut: std::future::Future<Output = Result<Answer, SendOutcome>>,
    {
        let tok = self.token(None).await?;
        let a = call(tok.clone()).await?;
        if a.status != 401 {
            return Ok(a);
        }
        tracing::info!("{who} refused the access token; refreshing it once");
        let fresh = self.token(Some(&tok)).await?;
        call(fresh).await
    }

    /// The assertion a service account grant sends now.
    pub fn assertion(&self) -> Result<Option<String>, String> {
        let Grant::ServiceAccount {
            client_email,
            key,
            scope,
        } = &self.grant
        else {
            return Ok(None);
        };
        let iat = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: client_email.clone(),
            scope: scope.clone(),
            aud: self.token_url.clone(),
            iat,
            exp: iat + MAX_ASSERTION_LIFETIME.as_secs() as i64,
        };
        key.sign(&claims).map(Some)
    }

    fn form(&self) -> Result<String, SendOutcome> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        match &self.grant {
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", client_id.expose())
                    .append_pair("client_secret", client_secret.expose())
                    .append_pair("refresh_token", refresh_token.expose());
            }
            Grant::ServiceAccount { .. } => {
                let assertion = self
                    .assertion()
                    .map_err(|e| SendOutcome::DestinationDown {
                        reason: format!("google service account assertion: {e}"),
                    })?
                    .unwrap_or_default();
                form.append_pair("grant_type", JWT_BEARER)
                    .append_pair("assertion", &assertion);
            }
        }
        Ok(form.finish())
    }

    async fn refresh(&self) -> Result<(Secret, Duration), SendOutcome> {
        let body = self.form()?;
        let resp = self
            .client
            .post(&self.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| SendOutcome::RetryLater {
                after: None,
                reason: format!(
                    "google token endpoint {}",
                    crate::outbound::describe_transport(&e)
                ),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let answer: Option<TokenAnswer> = serde_json::from_slice(&bytes).ok();
        classify_token_answer(&self.grant, status, answer)
    }
}

/// The token endpoint's answer. 5xx and 429 are passing; `invalid_grant`
/// (a revoked or expired refresh token, a deleted service account key or
/// a bad assertion) and every other refusal need someone to act, so the
/// destination pauses with a reason saying what to do.
fn classify_token_answer(
    grant: &Grant,
    status: u16,
    answer: Option<TokenAnswer>,
) -> Result<(Secret, Duration), SendOutcome> {
    if (200..300).contains(&status) {
        if let Some(TokenAnswer {
            access_token: Some(tok),
            expires_in,
            ..
        }) = answer
        {
            if !tok.is_empty() {
                return Ok((
                    Secret::new(tok),
                    Duration::from_secs(expires_in.unwrap_or(3600)),
                ));
            }
        }
        return Err(SendOutcome::RetryLater {
            after: None,
            reason: "google token endpoint answered without an access_token".into(),
        });
    }
    if status == 429 || status >= 500 {
        return Err(SendOutcome::RetryLater {
            after: None,
            reason: format!("google token endpoint answered HTTP {status}"),
        });
    }
    let (error, description) = answer
        .map(|a| (a.error, a.error_description))
        .unwrap_or_default();
    let error = error.unwrap_or_else(|| format!("HTTP {status}"));
    let hint = match (grant, error.as_str()) {
        (Grant::RefreshToken { .. }, "invalid_grant") => {
            "the refresh token was revoked or expired: authorize again and set refresh_token"
        }
        (Grant::RefreshToken { .. }, "invalid_client") => "check client_id and client_secret",
        (Grant::RefreshToken { .. }, _) => {
            "check client_id, client_secret, refresh_token and token_url"
        }
        (Grant::ServiceAccount { .. }, "invalid_grant") => {
            "the assertion was refused: check that the service account key is current (not deleted or disabled) and this machine's clock"
        }
        (Grant::ServiceAccount { .. }, _) => {
            "check the service account key (client_email, private_key) and token_url"
        }
    };
    let description = description
        .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    Err(SendOutcome::DestinationDown {
        reason: format!("{}: {error}{description}; {hint}", grant.refusal()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const PRIVATE: &str = include_str!("../../tests/fixtures/test-rsa-private.pem");
    const PUBLIC: &str = include_str!("../../tests/fixtures/test-rsa-public.pem");

    fn refresh() -> Grant {
        Grant::RefreshToken {
            client_id: Secret::new("cid"),
            client_secret: Secret::new("cs"),
            refresh_token: Secret::new("rt"),
        }
    }

    fn service_account() -> Grant {
        Grant::ServiceAccount {
            client_email: "koala@proj.iam.gserviceaccount.com".into(),
            key: RsaSigningKey::from_pem(PRIVATE).unwrap(),
            scope: "https://www.googleapis.com/auth/bigquery".into(),
        }
    }

    fn answer(json: &str) -> Option<TokenAnswer> {
        serde_json::from_str(json).ok()
    }

    #[test]
    fn a_token_and_its_lifetime() {
        let (tok, life) = classify_token_answer(
            &refresh(),
            200,
            answer(r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#),
        )
        .unwrap();
        assert_eq!(tok.expose(), "ya29.x");
        assert_eq!(life, Duration::from_secs(3599));
    }

    #[test]
    fn invalid_grant_pauses_with_a_clear_reason() {
        let e = classify_token_answer(
            &refresh(),
            400,
            answer(r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#),
        )
        .unwrap_err();
        let SendOutcome::DestinationDown { reason } = e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("invalid_grant") && reason.contains("refresh_token"),
            "{reason}"
        );
        let e = classify_token_answer(
            &service_account(),
            400,
            answer(r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
        )
        .unwrap_err();
        let SendOutcome::DestinationDown { reason } = e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("service account")
                && reason.contains("Invalid JWT Signature")
                && !reason.contains("refresh_token"),
            "{reason}"
        );
    }

    #[test]
    fn server_errors_retry() {
        let g = refresh();
        assert_eq!(
            classify_token_answer(&g, 503, None).unwrap_err().class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(&g, 429, None).unwrap_err().class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(&g, 200, answer("{}"))
                .unwrap_err()
                .class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(&g, 401, None).unwrap_err().class(),
            "destination_down"
        );
    }

    #[test]
    fn the_assertion_is_signed_with_the_documented_claims() {
        let source = TokenSource::new(
            reqwest::Client::new(),
            "https://oauth2.googleapis.com/token".into(),
            service_account(),
            Duration::from_secs(300),
        );
        let jwt = source.assertion().unwrap().unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["https://oauth2.googleapis.com/token"]);
        let claims = jsonwebtoken::decode::<AssertionClaims>(
            &jwt,
            &DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims.iss, "koala@proj.iam.gserviceaccount.com");
        assert_eq!(claims.scope, "https://www.googleapis.com/auth/bigquery");
        assert_eq!(claims.exp - claims.iat, 3600);
        assert!((claims.iat - chrono::Utc::now().timestamp()).abs() < 5);
        let form = source.form().unwrap();
        assert!(
            form.starts_with(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
            ),
            "{form}"
        );
        let refresh = TokenSource::new(
            reqwest::Client::new(),
            "https://oauth2.googleapis.com/token".into(),
            refresh(),
            Duration::from_secs(300),
        );
        assert_eq!(refresh.assertion(), Ok(None));
        assert!(refresh
            .form()
            .unwrap()
            .starts_with("grant_type=refresh_token&"));
    }
}
