//! Environment overrides: `DLPROXY_SECTION__KEY=value` merged into the
//! parsed file before it is deserialised, so an override is checked like a
//! value in the file and an error names its key.

use super::ConfigError;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "DLPROXY_";
/// Separator between the section and key parts of an override's name.
pub const ENV_SEPARATOR: &str = "__";

/// Merges `DLPROXY_SECTION__KEY=value` variables into `table`.
///
/// A value is read as a TOML literal when it is one (numbers, booleans,
/// arrays, quoted strings), otherwise as a plain string, so that
/// `DLPROXY_LISTEN__ADDR=0.0.0.0:8080` needs no quoting.
pub fn apply_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "expected {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>, e.g. DLPROXY_LISTEN__ADDR"
                ),
            });
        }
        insert_at(table, &path, parse_value(&raw)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}
