//! Records what `ctr version` prints for the client: the rustc version (the
//! counterpart of stock ctr's "Go version") and the source revision.

use std::path::Path;
use std::process::Command;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CRATED_REVISION");

    // "rustc 1.95.0 (f2d3ce0bd 2026-03-21)" -> "1.95.0"
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rust_version = output(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CTR_RUST_VERSION={rust_version}");

    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let git = |args: &[&str]| output(Command::new("git").args(args).current_dir(&dir));
    let revision = match std::env::var("CRATED_REVISION") {
        Ok(r) if !r.is_empty() => r,
        _ => {
            // Rebuild when HEAD moves; only watch files that exist, or cargo
            // would rerun this script on every build.
            if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let git_dir = Path::new(&git_dir);
                // refs/heads is a directory: cargo watches every file under it,
                // which also catches the first commit creating the branch ref.
                let mut watch = vec![git_dir.join("HEAD"), git_dir.join("packed-refs"), git_dir.join("refs/heads")];
                if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(git_dir.join(head_ref));
                }
                for p in watch.iter().filter(|p| p.exists()) {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_default()
        }
    };
    println!("cargo:rustc-env=CTR_REVISION={revision}");
}
