//! The documented config and the schema agree: `config.toml` is the
//! default, and the README's key table names every key the proxy reads,
//! and no other.
//!
//! The keys come from the schema itself: every section rejects unknown
//! keys, and its error lists the ones it knows.

use std::collections::BTreeSet;
use std::path::Path;

use directline_proxy::config::Config;

const PROBE: &str = "probe_key_that_does_not_exist";

fn manifest_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sections whose errors never show what was written, since their keys
/// hold secrets: their keys are listed here, and checked to be accepted.
const SECRET_SECTIONS: [(&str, &str); 1] = [("sso.static", "[sso.static]\ntoken = \"t\"\n")];

/// The keys a section accepts, or `None` when `path` is a value, not a
/// section.
fn section_keys(path: &str) -> Option<Vec<String>> {
    if let Some((_, example)) = SECRET_SECTIONS.iter().find(|(section, _)| *section == path) {
        Config::from_toml(example, Path::new("probe.toml"), Vec::new())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let keys = example.lines().skip(1).filter_map(|l| l.split_once(" = "));
        return Some(keys.map(|(key, _)| key.to_owned()).collect());
    }
    let text = if path.is_empty() {
        format!("{PROBE} = 1\n")
    } else {
        format!("[{path}]\n{PROBE} = 1\n")
    };
    let error = Config::from_toml(&text, Path::new("probe.toml"), Vec::new())
        .expect_err("an unknown key is refused")
        .to_string();
    let (_, expected) = error.split_once(&format!("unknown field `{PROBE}`, expected "))?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every leaf key of the schema, as `section.key` (nested sections such as
/// `sso.oauth2` included).
fn schema_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut sections = vec![String::new()];
    while let Some(section) = sections.pop() {
        for key in section_keys(&section).expect("a section") {
            let path = if section.is_empty() {
                key
            } else {
                format!("{section}.{key}")
            };
            if section_keys(&path).is_some() {
                sections.push(path);
            } else {
                keys.insert(path);
            }
        }
    }
    keys
}

/// Keys named in the first column of the README's configuration table; a
/// cell may name several (`a.b`, `a.c` or `a.b` / `c`, which is `a.c`).
/// `sso.*` rows point to sections documented elsewhere.
fn readme_table() -> (BTreeSet<String>, Vec<String>) {
    let readme = manifest_file("README.md");
    let table = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Configuration section");
    let mut keys = BTreeSet::new();
    let mut elsewhere = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap_or_default();
        let mut section = "";
        for name in cell.split('`').skip(1).step_by(2) {
            if let Some(documented_elsewhere) = name.strip_suffix(".*") {
                elsewhere.push(documented_elsewhere.to_owned());
            } else if let Some((head, _)) = name.rsplit_once('.') {
                section = head;
                keys.insert(name.to_owned());
            } else {
                keys.insert(format!("{section}.{name}"));
            }
        }
    }
    (keys, elsewhere)
}

/// Keys in a TOML text, as `section.key`, commented-out ones included
/// (`# [sso.http]`, `# url = ...`); comments after a value are ignored.
fn toml_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        let code = line.split(" #").next().unwrap_or_default().trim();
        if let Some(header) = code.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = header.to_owned();
        } else if let Some((key, _)) = code.split_once(" = ")
            && !key.contains(' ')
            && !section.is_empty()
        {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// What the README's ```toml blocks set or show.
fn readme_toml_keys(readme: &str) -> BTreeSet<String> {
    readme
        .split("```toml")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .flat_map(toml_keys)
        .collect()
}

#[test]
fn the_readme_table_names_every_config_key_and_no_other() {
    let schema = schema_keys();
    let (table, elsewhere) = readme_table();
    let readme = manifest_file("README.md");
    let in_table = |key: &String| {
        !elsewhere
            .iter()
            .any(|section| key.starts_with(&format!("{section}.")))
    };
    let missing: Vec<_> = schema
        .iter()
        .filter(|key| in_table(key) && !table.contains(*key))
        .collect();
    assert!(missing.is_empty(), "not in the README's table: {missing:?}");
    let unknown: Vec<_> = table.difference(&schema).collect();
    assert!(
        unknown.is_empty(),
        "in the README's table, not in the schema: {unknown:?}"
    );
    // Sections documented in their own README section name each key there,
    // as `section.key` or in a TOML example.
    let examples = readme_toml_keys(&readme);
    let undocumented: Vec<_> = schema
        .iter()
        .filter(|key| {
            !in_table(key) && !readme.contains(&format!("`{key}`")) && !examples.contains(*key)
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "never named in the README (as `section.key` or in a TOML example): {undocumented:?}"
    );
    let unknown_examples: Vec<_> = examples.difference(&schema).collect();
    assert!(
        unknown_examples.is_empty(),
        "the README's TOML examples name keys the schema does not know: {unknown_examples:?}"
    );
}

#[test]
fn config_toml_is_the_default_config() {
    let shipped = Config::from_toml(
        &manifest_file("config.toml"),
        Path::new("config.toml"),
        Vec::new(),
    )
    .expect("config.toml is valid");
    assert_eq!(
        format!("{shipped:#?}"),
        format!("{:#?}", Config::default()),
        "config.toml sets something other than the defaults (examples belong in comments)"
    );
}

#[test]
fn config_toml_examples_are_valid_keys() {
    // Commented-out examples (`# [sso.http]`, `# url = ...`) name keys the
    // schema knows.
    let schema = schema_keys();
    let unknown: Vec<_> = toml_keys(&manifest_file("config.toml"))
        .into_iter()
        .filter(|key| !schema.contains(key))
        .collect();
    assert!(
        unknown.is_empty(),
        "config.toml names unknown keys: {unknown:?}"
    );
}
