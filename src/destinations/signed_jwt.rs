//! RS256-signed JWTs from an RSA private key in PEM, the credential of
//! warehouses that authenticate a service by key pair: a Google service
//! account's assertion exchanged for an access token
//! (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>)
//! and Snowflake's key-pair JWT
//! (<https://docs.snowflake.com/en/developer-guide/sql-api/authenticating>).
//! The key never appears in an error or a log.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// An RSA private key, ready to sign.
#[derive(Clone)]
pub struct RsaSigningKey {
    encoding: EncodingKey,
    /// `SHA256:` + base64 of the SHA-256 of the public key's DER
    /// (SubjectPublicKeyInfo): what Snowflake records as
    /// `RSA_PUBLIC_KEY_FP` and expects in a JWT's issuer.
    fingerprint: String,
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigningKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl RsaSigningKey {
    /// Reads a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE
    /// KEY`) PEM. Escaped newlines (`\n`, as a key pasted into an
    /// environment variable or a JSON key file carries them) are accepted.
    /// Encrypted keys are not: the error says so, never what the text was.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let pem = pem.trim().replace("\\n", "\n");
        if pem.contains("ENCRYPTED") {
            return Err(
                "the private key is encrypted: give it unencrypted (PKCS#8 or PKCS#1 PEM)".into(),
            );
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
            .map_err(|_| {
                "the private key is not an RSA key in PEM (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                    .to_string()
            })?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| "the private key's public half cannot be encoded".to_string())?;
        let fingerprint = format!(
            "SHA256:{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                Sha256::digest(der.as_bytes())
            )
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| "the private key cannot sign RS256".to_string())?;
        Ok(RsaSigningKey {
            encoding,
            fingerprint,
        })
    }

    /// `SHA256:<base64>` of the public key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A compact JWT with `{"alg":"RS256","typ":"JWT"}` over `claims`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.encoding)
            .map_err(|e| format!("signing the JWT failed: {}", kind_name(&e)))
    }
}

/// A jsonwebtoken error by its kind, without any payload.
fn kind_name(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => "invalid RSA key",
        ErrorKind::Json(_) => "claims do not serialize",
        _ => "signing error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const PRIVATE: &str = include_str!("../../tests/fixtures/test-rsa-private.pem");
    const PUBLIC: &str = include_str!("../../tests/fixtures/test-rsa-public.pem");

    #[derive(Serialize, serde::Deserialize)]
    struct Claims {
        iss: String,
        exp: u64,
    }

    #[test]
    fn signs_what_the_public_key_verifies() {
        let key = RsaSigningKey::from_pem(PRIVATE).unwrap();
        let token = key
            .sign(&Claims {
                iss: "koala".into(),
                exp: 4_000_000_000,
            })
            .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims.iss, "koala");
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_public_der() {
        // Computed with: openssl pkey -pubout -outform DER | openssl dgst -sha256 -binary | base64
        let key = RsaSigningKey::from_pem(PRIVATE).unwrap();
        assert_eq!(
            key.fingerprint(),
            "SHA256:HpbLRKlR5HkEulsmgpJaRVJqEBi9XlHA4LLHq97TRmA="
        );
    }

    #[test]
    fn escaped_newlines_are_read() {
        let escaped = PRIVATE.replace('\n', "\\n");
        assert!(RsaSigningKey::from_pem(&escaped).is_ok());
    }

    #[test]
    fn errors_never_echo_the_key() {
        let broken = PRIVATE.replace("A", "!");
        let err = RsaSigningKey::from_pem(&broken).unwrap_err();
        assert!(!err.contains("MII"), "{err}");
        assert!(
            RsaSigningKey::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----")
                .unwrap_err()
                .contains("encrypted")
        );
    }
}
