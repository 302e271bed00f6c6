//! OAuth 2.0 access tokens from a refresh token
//! (<https://developers.google.com/identity/protocols/oauth2/web-server#offline>):
//! a form POST with `grant_type=refresh_token`. The token is cached and
//! refreshed `margin` before it expires; one refresh at a time.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::destinations::SendOutcome;
use crate::secret::Secret;

pub struct TokenSource {
    client: reqwest::Client,
    token_url: String,
    client_id: Secret,
    client_secret: Secret,
    refresh_token: Secret,
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
    pub fn new(
        client: reqwest::Client,
        token_url: String,
        client_id: Secret,
        client_secret: Secret,
        refresh_token: Secret,
        margin: Duration,
    ) -> Self {
        TokenSource {
            client,
            token_url,
            client_id,
            client_secret,
            refresh_token,
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

    async fn refresh(&self) -> Result<(Secret, Duration), SendOutcome> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", self.client_id.expose())
            .append_pair("client_secret", self.client_secret.expose())
            .append_pair("refresh_token", self.refresh_token.expose())
            .finish();
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
        classify_token_answer(status, answer)
    }
}

/// The token endpoint's answer. 5xx and 429 are passing; `invalid_grant`
/// (revoked or expired refresh token) and every other refusal need someone
/// to act, so the destination pauses with a reason saying what to do.
fn classify_token_answer(
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
    let hint = if error == "invalid_grant" {
        "the refresh token was revoked or expired: authorize again and set refresh_token"
    } else if error == "invalid_client" {
        "check client_id and client_secret"
    } else {
        "check client_id, client_secret, refresh_token and token_url"
    };
    let description = description
        .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    Err(SendOutcome::DestinationDown {
        reason: format!("google refused to refresh the access token: {error}{description}; {hint}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Option<TokenAnswer> {
        serde_json::from_str(json).ok()
    }

    #[test]
    fn a_token_and_its_lifetime() {
        let (tok, life) = classify_token_answer(
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
    }

    #[test]
    fn server_errors_retry() {
        assert_eq!(
            classify_token_answer(503, None).unwrap_err().class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(429, None).unwrap_err().class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(200, answer("{}"))
                .unwrap_err()
                .class(),
            "retry"
        );
        assert_eq!(
            classify_token_answer(401, None).unwrap_err().class(),
            "destination_down"
        );
    }
}
