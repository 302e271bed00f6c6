//! Key-pair JWTs for the SQL API
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/authenticating>):
//! RS256, `iss` = `<ACCOUNT>.<USER>.SHA256:<public key fingerprint>`,
//! `sub` = `<ACCOUNT>.<USER>`, `iat` now, `exp` at most an hour later. The
//! account in the claims is the identifier without its region or cloud
//! (`xy12345.us-east-1` → `XY12345`), uppercase, as Snowflake's own JWT
//! generator for the SQL API prepares it; for a replication (`.global`)
//! account, the part before the first `-`. One token is cached and signed
//! anew `margin` before it expires, or at once when Snowflake refused it.

use std::time::Duration;

use serde::Serialize;

use crate::destinations::signed_jwt::RsaSigningKey;
use crate::secret::Secret;

/// The account as the JWT names it.
pub fn jwt_account(account: &str) -> String {
    let account = account.trim();
    let account = account
        .strip_suffix(".snowflakecomputing.com")
        .unwrap_or(account);
    let short = if account.contains(".global") {
        account.split('-').next().unwrap_or(account)
    } else {
        account.split('.').next().unwrap_or(account)
    };
    short.to_ascii_uppercase()
}

#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

/// The claims for `account`/`user` signed at `now` (unix seconds).
pub fn claims(
    account: &str,
    user: &str,
    fingerprint: &str,
    now: u64,
    lifetime: Duration,
) -> Claims {
    let qualified = format!(
        "{}.{}",
        jwt_account(account),
        user.trim().to_ascii_uppercase()
    );
    Claims {
        iss: format!("{qualified}.{fingerprint}"),
        sub: qualified,
        iat: now,
        exp: now + lifetime.as_secs().max(1),
    }
}

pub struct KeyPairAuth {
    key: RsaSigningKey,
    account: String,
    user: String,
    lifetime: Duration,
    margin: Duration,
    /// The token and its `exp` (unix seconds).
    cached: std::sync::Mutex<Option<(Secret, u64)>>,
}

impl KeyPairAuth {
    pub fn new(
        key: RsaSigningKey,
        account: &str,
        user: &str,
        lifetime: Duration,
        margin: Duration,
    ) -> Self {
        KeyPairAuth {
            key,
            account: account.to_owned(),
            user: user.to_owned(),
            lifetime,
            margin,
            cached: std::sync::Mutex::new(None),
        }
    }

    pub fn fingerprint(&self) -> &str {
        self.key.fingerprint()
    }

    /// A token valid for at least `margin` more: the cached one, unless it
    /// is `refused` (Snowflake answered 401 to it).
    pub fn token(&self, refused: Option<&Secret>) -> Result<Secret, String> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let mut cached = self.cached.lock().expect("jwt cache");
        if let Some((tok, exp)) = cached.as_ref() {
            if now + self.margin.as_secs() < *exp && refused != Some(tok) {
                return Ok(tok.clone());
            }
        }
        let c = claims(
            &self.account,
            &self.user,
            self.key.fingerprint(),
            now,
            self.lifetime,
        );
        let exp = c.exp;
        let tok = Secret::new(self.key.sign(&c)?);
        *cached = Some((tok.clone(), exp));
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    const PRIVATE: &str = include_str!("../../../tests/fixtures/test-rsa-private.pem");
    const PUBLIC: &str = include_str!("../../../tests/fixtures/test-rsa-public.pem");

    #[test]
    fn the_account_loses_region_and_cloud_and_is_uppercase() {
        for (given, jwt) in [
            ("xy12345", "XY12345"),
            ("xy12345.us-east-1", "XY12345"),
            ("xy12345.us-east-2.aws", "XY12345"),
            ("myorg-myaccount", "MYORG-MYACCOUNT"),
            ("myorg-myaccount.snowflakecomputing.com", "MYORG-MYACCOUNT"),
            ("xy12345-myorg.global", "XY12345"),
        ] {
            assert_eq!(jwt_account(given), jwt, "{given}");
        }
    }

    #[test]
    fn claims_name_the_qualified_user_and_the_fingerprint() {
        let c = claims(
            "xy12345.us-east-1",
            "koala_svc",
            "SHA256:abc=",
            1_700_000_000,
            Duration::from_secs(3540),
        );
        assert_eq!(c.iss, "XY12345.KOALA_SVC.SHA256:abc=");
        assert_eq!(c.sub, "XY12345.KOALA_SVC");
        assert_eq!(c.exp - c.iat, 3540);
    }

    #[test]
    fn a_token_is_cached_verified_and_signed_anew_when_refused() {
        let key = RsaSigningKey::from_pem(PRIVATE).unwrap();
        let auth = KeyPairAuth::new(
            key,
            "xy12345",
            "koala",
            Duration::from_secs(3540),
            Duration::from_secs(300),
        );
        let t1 = auth.token(None).unwrap();
        assert_eq!(auth.token(None).unwrap(), t1, "cached");
        let mut v = Validation::new(Algorithm::RS256);
        v.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Claims>(
            t1.expose(),
            &DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(
            decoded.claims.iss,
            "XY12345.KOALA.SHA256:HpbLRKlR5HkEulsmgpJaRVJqEBi9XlHA4LLHq97TRmA="
        );
        // A refused token is signed anew (the same second gives the same
        // claims, so the same text: what matters is that it was re-signed,
        // and that a lifetime inside the margin never serves a stale one).
        assert!(auth.token(Some(&t1)).is_ok());
        let short = KeyPairAuth::new(
            RsaSigningKey::from_pem(PRIVATE).unwrap(),
            "xy12345",
            "koala",
            Duration::from_secs(10),
            Duration::from_secs(20),
        );
        let a = short.token(None).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_ne!(
            short.token(None).unwrap(),
            a,
            "inside the margin: re-signed"
        );
    }
}
