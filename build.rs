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

/// Keeps what a commit id or an ISO date can hold: the value lands in a Prometheus label
/// and in cargo directives, where a quote or a newline would break them.
fn clean(s: String) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-.:_".contains(*c))
        .take(64)
        .collect()
}

fn main() {
    let given = std::env::var("RUYI_COMMIT").ok().map(clean);
    let from_git = given.is_none();
    let commit = given
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]).map(clean))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let date = clean(
        std::env::var("RUYI_COMMIT_DATE")
            .ok()
            .or_else(|| git(&["show", "-s", "--format=%cI", "HEAD"]))
            .unwrap_or_default(),
    );
    // Unknown unless git itself answered for this tree.
    let tree = match (from_git, commit.as_str()) {
        (false, _) | (_, "unknown") => "",
        _ => match Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
        {
            Ok(out) if out.status.success() && out.stdout.is_empty() => "clean",
            Ok(out) if out.status.success() => "dirty",
            _ => "",
        },
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
    // Only paths that exist: cargo reruns a script on every build while one is missing (a
    // tarball, a worktree, a branch ref packed by `git gc`).
    let mut watched = vec![".git/HEAD".to_owned(), ".git/index".to_owned()];
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(format!(".git/{head}"));
        watched.push(".git/packed-refs".to_owned());
    }
    for path in watched {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    // With nothing watched cargo would rerun on any change in the package; the commit
    // cannot change without git then, so watch this script alone.
    println!("cargo:rerun-if-changed=build.rs");
}
