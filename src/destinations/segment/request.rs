//! The `/v1/batch` request: the write key as HTTP Basic user with an empty
//! password (`base64("{write_key}:")`, Segment and RudderStack) or as the
//! `X-Write-Key` header (Jitsu).

use base64::Engine as _;
use url::Url;

use super::config::Auth;
use crate::secret::Secret;

/// A request ready to send. `body` holds mapped attributes and the
/// `auth_value` the write key: never log either (Debug hides both).
#[derive(Clone)]
pub struct BatchRequest {
    pub url: Url,
    pub auth_header: &'static str,
    pub auth_value: Secret,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for BatchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRequest")
            .field("url", &self.url.as_str())
            .field("auth_header", &self.auth_header)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The header carrying the write key, and its value.
pub fn auth(auth: Auth, write_key: &Secret) -> (&'static str, Secret) {
    match auth {
        Auth::Basic => (
            "authorization",
            Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:", write_key.expose()))
            )),
        ),
        Auth::XWriteKey => ("x-write-key", write_key.clone()),
    }
}

pub fn build(url: &Url, auth: &(&'static str, Secret), body: Vec<u8>) -> BatchRequest {
    BatchRequest {
        url: url.clone(),
        auth_header: auth.0,
        auth_value: auth.1.clone(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_the_write_key_and_a_colon() {
        let (h, v) = auth(Auth::Basic, &Secret::new("abc"));
        assert_eq!(h, "authorization");
        // base64("abc:")
        assert_eq!(v.expose(), "Basic YWJjOg==");
        let (h, v) = auth(Auth::XWriteKey, &Secret::new("abc"));
        assert_eq!((h, v.expose()), ("x-write-key", "abc"));
        let req = build(
            &Url::parse("https://api.segment.io/v1/batch").unwrap(),
            &auth(Auth::Basic, &Secret::new("abc")),
            b"{}".to_vec(),
        );
        assert!(!format!("{req:?}").contains("YWJj"));
    }
}
