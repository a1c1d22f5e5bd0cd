//! What the command-line tests share: running the built `ghostmesh` in a directory.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the built `ghostmesh` with `args` in `dir` and returns what it did.
pub fn ghostmesh(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghostmesh"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ghostmesh runs")
}
