//! `Secret`: a string that holds an API key or signing secret and refuses to print itself.

use std::fmt;

use serde::Deserialize;

/// An API key or webhook signing secret.
///
/// `Debug` and `Display` print `Secret(***)` so a secret cannot leak through a log line, an
/// error message or a `{:?}` of a config struct. Reading the value takes an explicit
/// [`Secret::expose`], which is easy to spot in review. There is deliberately no `Serialize`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; call only where it is put on the wire or fed to a MAC.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("pk_live_supersecret");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{secret}"), "Secret(***)");
        assert_eq!(secret.expose(), "pk_live_supersecret");
    }

    #[test]
    fn deserializes_from_a_plain_string() {
        #[derive(Debug, Deserialize)]
        struct Config {
            key: Secret,
        }
        let config: Config = serde_json::from_str(r#"{"key":"whsec_abc"}"#).unwrap();
        assert_eq!(config.key.expose(), "whsec_abc");
        assert!(!format!("{config:?}").contains("whsec_abc"));
    }
}
