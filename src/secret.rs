//! Secrets: tokens and keys read from the config, never printed.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A secret value. Written as `${ENV_VAR}` it is read from the environment
/// when the config loads. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<Secret> for String {
    fn from(_: Secret) -> String {
        // Serializing a config never writes the secret back out.
        "***".into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw)
            .map(Secret)
            .map_err(serde::de::Error::custom)
    }
}

/// Replaces every `${NAME}` with the environment variable NAME.
pub fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{…}} in {raw:?}"))?;
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
