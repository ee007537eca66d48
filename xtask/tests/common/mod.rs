//! Shared by the xtask tests: running the built binary on the embedded dataset.

use std::process::{Command, Output};

/// `cargo xtask ARGS` without the shared data (the embedded dataset is used).
pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env_remove("MMBAL_SHARED_DATA")
        .output()
        .unwrap()
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
