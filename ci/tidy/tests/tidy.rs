//! Style checks over every Rust file of the workspace (CONTRIBUTING.md, "Style"), run by
//! `cargo test`.
//!
//! Goal: keep the rules that a reviewer would otherwise have to remember mechanical. Method:
//! walk the workspace's `.rs` files (skipping build output and the standalone peer crates' build
//! dirs) and check each rule; report every offence at once, with its path and line.

// A CI tool, not system code: it reads the real source tree (CONTRIBUTING.md: the `Env` rule
// binds system code, not `ci/`).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

const COLUMNS_MAX: usize = 100;
const FUNCTION_LINES_MAX: usize = 70;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("readable").flatten().collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, files);
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
}

/// Lengths of functions: from a line opening `fn` to the closing brace at the same indent.
fn long_functions(text: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "async fn ", "pub async fn "]
            .iter()
            .any(|prefix| trimmed.starts_with(prefix));
        if !is_fn {
            continue;
        }
        // A declaration without a body (a trait method) ends with `;` before any `{`.
        let signature_end = lines[start..].iter().find(|line| {
            let line = line.trim_end();
            line.ends_with('{') || line.ends_with(';')
        });
        if signature_end.is_some_and(|line| line.trim_end().ends_with(';')) {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let closing = " ".repeat(indent) + "}";
        if let Some(length) = lines[start..].iter().position(|line| *line == closing)
            && length + 1 > FUNCTION_LINES_MAX
        {
            found.push((start + 1, length + 1));
        }
    }
    found
}

#[test]
fn tidy() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found only {} files under {}", files.len(), root.display());
    let mut offences = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("utf-8 source");
        let shown = path.strip_prefix(&root).unwrap_or(path).display().to_string();
        if !text.starts_with("//!") {
            offences.push(format!("{shown}: does not open with a //! doc comment"));
        }
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.chars().count() > COLUMNS_MAX {
                offences.push(format!("{shown}:{number}: longer than {COLUMNS_MAX} columns"));
            }
            let marker = ["dbg", "!("].concat();
            if line.contains(&marker) {
                offences.push(format!("{shown}:{number}: leftover {marker}"));
            }
            for word in [["FIX", "ME"].concat(), ["TO", "DO"].concat(), ["X", "XX"].concat()] {
                if line.contains(&word) {
                    offences.push(format!("{shown}:{number}: leftover {word}"));
                }
            }
        }
        for (line, length) in long_functions(&text) {
            offences.push(format!("{shown}:{line}: function of {length} lines (max 70)"));
        }
    }
    assert!(offences.is_empty(), "tidy found:\n{}", offences.join("\n"));
}
