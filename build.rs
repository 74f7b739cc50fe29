//! Records the git commit the binary is built from, for `--version`, `/varz` and the
//! `ruyi_build_info` metric. `RUYI_COMMIT` (and `RUYI_COMMIT_DATE`) set in the environment
//! win, for builds without a git checkout (a container image built from a tarball).

use std::io::Write as _;
use std::process::Command;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The browser files `src/http/assets.rs` serves: (URL path, file under
/// `src/http/assets/`, content type).
const ASSETS: &[(&str, &str, &str)] = &[
    ("/console/", "console/index.html", HTML),
    ("/console/api.js", "console/api.js", JS),
    ("/console/app.js", "console/app.js", JS),
    ("/console/style.css", "console/style.css", CSS),
    ("/demo/", "demo/index.html", HTML),
    ("/demo/app.js", "demo/app.js", JS),
    ("/vendor/uPlot.iife.min.js", "vendor/uPlot.iife.min.js", JS),
    ("/vendor/uPlot.min.css", "vendor/uPlot.min.css", CSS),
    ("/vendor/wukongimjssdk.js", "vendor/wukongimjssdk.js", JS),
];

/// FNV-1a, 64 bits: an ETag needs to change with the bytes, not to resist an attacker.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes `$OUT_DIR/assets.rs`: a table of every asset with its bytes, its gzip form
/// (empty where gzip does not save a tenth) and its ETag, so serving one costs no
/// compression and no hashing at run time.
fn embed_assets() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("src/http/assets");
    let mut table = String::from("&[\n");
    for (i, (path, file, content_type)) in ASSETS.iter().enumerate() {
        let source = root.join(file);
        println!("cargo:rerun-if-changed={}", source.display());
        let body =
            std::fs::read(&source).unwrap_or_else(|e| panic!("asset {}: {e}", source.display()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&body).expect("gzip into memory");
        let gz = gz.finish().expect("gzip into memory");
        let gz_path = out.join(format!("asset{i}.gz"));
        let worth = gz.len() * 10 < body.len() * 9;
        std::fs::write(&gz_path, if worth { &gz[..] } else { &[] }).expect("write to OUT_DIR");
        table.push_str(&format!(
            "    Asset {{ path: {path:?}, content_type: {content_type:?}, body: include_bytes!({:?}), gzip: include_bytes!({:?}), etag: \"\\\"{:016x}\\\"\" }},\n",
            source.display().to_string(),
            gz_path.display().to_string(),
            fnv64(&body)
        ));
    }
    table.push(']');
    std::fs::write(out.join("assets.rs"), table).expect("write to OUT_DIR");
}

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
    embed_assets();
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
