//! Text logs carry colour codes only on a terminal: the test runs itself again as a child that
//! logs with `--log-format text` into a file.

use std::process::{Command, Stdio};

const CHILD: &str = "RF_CLI_TEST_CHILD";

#[test]
fn text_logs_written_to_a_file_have_no_colour_codes() {
    if std::env::var_os(CHILD).is_some() {
        rf_cli::init_tracing(rf_cli::LogFormat::Text);
        tracing::info!(key = "value", "hello from the child");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "text_logs_written_to_a_file_have_no_colour_codes",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("hello from the child"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}
