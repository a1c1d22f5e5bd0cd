//! Style checks over the workspace, run by `cargo test` (see tests/tidy.rs).
