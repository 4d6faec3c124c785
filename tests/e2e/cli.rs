//! The command line: `check` and environment overrides.

use std::process::Command;

fn proxy_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_directline-proxy"))
}

/// `directline-proxy check` on a file holding `text`, with `env` set.
fn check(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let file = write_config(text);
    let output = proxy_command()
        .arg("check")
        .arg("--config")
        .arg(file.path())
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write");
    file
}

#[test]
fn check_accepts_the_shipped_config() {
    let output = proxy_command()
        .args(["check", "--config"])
        .arg(crate::common::repo_path("config.toml"))
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_rejects_a_bad_value_naming_key_value_and_allowed() {
    let (code, stderr) = check("[upstream]\nurl = \"ftp://nowhere\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("upstream.url"), "{stderr}");
    assert!(stderr.contains("ftp://nowhere"), "{stderr}");
    assert!(stderr.contains("http/https"), "{stderr}");
}

#[test]
fn check_rejects_unknown_keys() {
    let (code, stderr) = check("[listen]\naddress = \"127.0.0.1:1\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("address"), "{stderr}");
}

#[test]
fn environment_overrides_are_checked_too() {
    let (code, stderr) = check(
        "[listen]\naddr = \"127.0.0.1:8080\"\n",
        &[("DLPROXY_LISTEN__ADDR", "not-an-address")],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("listen.addr") && stderr.contains("not-an-address"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let output = proxy_command()
        .args(["check", "--config", "/nonexistent/dlproxy.toml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/dlproxy.toml"));
}

#[test]
fn check_warns_about_settings_that_leave_a_hole_open_but_accepts_them() {
    let (code, stderr) = check(
        "[listen]\ntrust_forwarded_headers = true\nallowed_origins = [\"https://www.contoso.com\"]\n[sso]\nprovider = \"header\"\n",
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    for key in [
        "listen.public_url",
        "listen.trust_forwarded_headers",
        "directline.user_id_header",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("warning:") && l.contains(key)),
            "no warning naming {key}: {stderr}"
        );
    }
}

#[test]
fn check_refuses_a_provider_reading_the_users_request_without_allowed_origins() {
    let (code, stderr) = check("[sso]\nprovider = \"header\"\n", &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("listen.allowed_origins"), "{stderr}");
}

#[test]
fn print_effective_shows_the_config_as_run_with_overrides_and_no_secret() {
    let seal_key = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    let file = write_config(
        "[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"https://auth.example.com/t?code=function-key\"\n[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n",
    );
    let output = proxy_command()
        .args(["check", "--print-effective", "--config"])
        .arg(file.path())
        .env("DLPROXY_LISTEN__ADDR", "0.0.0.0:9999")
        .env("DLPROXY_SSO__SEAL_KEYS", format!("[\"{seal_key}\"]"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let effective: toml::Table = printed.parse().expect("the output is TOML");
    assert_eq!(effective["listen"]["addr"].as_str(), Some("0.0.0.0:9999"));
    assert_eq!(
        effective["websocket"]["read_buffer_bytes"].as_integer(),
        Some(65536),
        "defaults are filled in"
    );
    assert_eq!(
        effective["sso"]["http"]["url"].as_str(),
        Some("https://auth.example.com/t?<redacted>")
    );
    assert_eq!(
        effective["sso"]["seal_keys"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(!printed.contains(seal_key), "{printed}");
    assert!(!printed.contains("function-key"), "{printed}");
}
