//! Records the git revision the binaries were built from as `GHOSTMESH_GIT_REVISION`, for
//! `--version`: `git rev-parse --short HEAD`, or "unknown" where git or the repository is absent
//! (a source tarball). It reruns when HEAD or the branch it names moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let revision = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GHOSTMESH_GIT_REVISION={revision}");
    // Watch HEAD, the branch it points at and packed-refs (paths differ in worktrees).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            let path = std::fs::canonicalize(&path).map_or(path, |p| p.display().to_string());
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
