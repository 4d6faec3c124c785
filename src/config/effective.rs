//! `check --print-effective`: the config as the proxy runs it, with what
//! must not be printed hidden.

use super::{Config, ConfigError, value};

/// Keys whose values are secrets (a prefix names a whole section).
const SECRETS: [&str; 2] = ["sso.seal_keys", "sso.static"];

/// Keys whose values are URLs, whose userinfo or query may hold a
/// credential (an Azure Functions `code=`).
const URLS: [&str; 5] = [
    "listen.public_url",
    "upstream.url",
    "sso.http.url",
    "sso.oauth2.token_url",
    "telemetry.otlp_endpoint",
];

const HIDDEN: &str = "<redacted>";

/// Whether the value at `key` is a secret, so that no message shows it.
pub fn holds_secret(key: &str) -> bool {
    SECRETS.iter().any(|secret| key.starts_with(secret))
}

impl Config {
    /// The config as the proxy would run it, defaults filled in and
    /// environment overrides applied, as TOML: so tools read what the proxy
    /// reads instead of re-implementing the override rules. Secrets and the
    /// userinfo and query of URLs are redacted.
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| ConfigError::Print(e.to_string()))?;
        redact(&mut table, "");
        toml::to_string(&table).map_err(|e| ConfigError::Print(e.to_string()))
    }
}

fn redact(table: &mut toml::Table, prefix: &str) {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let hidden = || toml::Value::String(HIDDEN.into());
        if let toml::Value::Table(inner) = value {
            redact(inner, &path);
        } else if holds_secret(&path) {
            *value = match value {
                toml::Value::Array(items) => toml::Value::Array(vec![hidden(); items.len()]),
                _ => hidden(),
            };
        } else if let (true, toml::Value::String(url)) =
            (URLS.contains(&path.as_str()), &mut *value)
        {
            *url = value::redacted_url(url);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn effective(text: &str) -> toml::Table {
        let config = Config::from_toml(text, Path::new("test.toml"), Vec::new()).expect("valid");
        let printed = config.effective_toml().expect("printable");
        printed.parse().expect("the output is TOML")
    }

    #[test]
    fn the_printed_config_loads_back_as_the_same_config() {
        let text = "[listen]\nidle_timeout_ms = 1500\npublic_url = \"https://chat.example.com/bot\"\n\
                    [admin]\naddr = \"127.0.0.1:9090\"\n[reload]\nwatch_interval_ms = 0\n\
                    [sso]\ndecision_ttl_secs = 60\n";
        let config = Config::from_toml(text, Path::new("test.toml"), Vec::new()).expect("valid");
        let printed = config.effective_toml().expect("printable");
        let reloaded =
            Config::from_toml(&printed, Path::new("printed.toml"), Vec::new()).expect("loads");
        assert_eq!(format!("{reloaded:?}"), format!("{config:?}"));
    }

    #[test]
    fn url_userinfo_and_query_are_redacted() {
        let printed = effective(
            "[upstream]\nurl = \"https://dl-user:dl-pass@directline.example.com/base\"\n\
             [listen]\npublic_url = \"https://ops:hunter2@chat.example.com\"\n\
             allowed_origins = [\"https://www.contoso.com\"]\n\
             [sso]\nprovider = \"http\"\n\
             [sso.http]\nurl = \"https://u:p@auth.example.com/t?code=function-key\"\n",
        );
        assert_eq!(
            printed["upstream"]["url"].as_str(),
            Some("https://<redacted>@directline.example.com/base")
        );
        assert_eq!(
            printed["listen"]["public_url"].as_str(),
            Some("https://<redacted>@chat.example.com/")
        );
        assert_eq!(
            printed["sso"]["http"]["url"].as_str(),
            Some("https://<redacted>@auth.example.com/t?<redacted>")
        );
        let all = printed.to_string();
        for secret in ["dl-pass", "hunter2", "function-key", "u:p"] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_is_kept() {
        let printed = effective(
            "[sso]\nprovider = \"static\"\nseal_keys = [\"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=\"]\n\
             [sso.static]\ntoken = \"the-token\"\n",
        );
        assert_eq!(printed["sso"]["static"]["token"].as_str(), Some(HIDDEN));
        assert_eq!(
            printed["sso"]["seal_keys"].as_array(),
            Some(&vec![toml::Value::String(HIDDEN.into())])
        );
        assert_eq!(printed["listen"]["addr"].as_str(), Some("127.0.0.1:8080"));
        assert_eq!(
            printed["listen"]["header_read_timeout_ms"].as_integer(),
            Some(10_000)
        );
    }
}
