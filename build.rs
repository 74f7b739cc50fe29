//! Records the git commit the binary is built from, for `--version`, `/varz` and the
//! `ruyi_build_info` metric. `RUYI_COMMIT` (and `RUYI_COMMIT_DATE`) set in the environment
//! win, for builds without a git checkout (a container image built from a tarball).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = std::env::var("RUYI_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let date = std::env::var("RUYI_COMMIT_DATE")
        .ok()
        .or_else(|| git(&["show", "-s", "--format=%cI", "HEAD"]))
        .unwrap_or_default();
    let tree = match git(&["status", "--porcelain", "--untracked-files=no"]) {
        _ if commit == "unknown" => "",
        Some(_) => "dirty",
        None => "clean",
    };
    println!("cargo:rustc-env=RUYI_COMMIT={commit}");
    println!("cargo:rustc-env=RUYI_COMMIT_DATE={date}");
    println!("cargo:rustc-env=RUYI_TREE_STATE={tree}");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let modified = if tree == "dirty" { ", modified" } else { "" };
    println!("cargo:rustc-env=RUYI_VERSION_LINE={version} ({commit}{modified})");
    println!("cargo:rerun-if-env-changed=RUYI_COMMIT");
    println!("cargo:rerun-if-env-changed=RUYI_COMMIT_DATE");
    // A new commit moves HEAD or the branch it names; the index changes with the tree.
    for path in [".git/HEAD", ".git/index"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{head}");
    }
}
