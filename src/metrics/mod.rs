//! What the server measures about itself and how it is exported: latency histograms any
//! thread records into, the process's resource use, the build's identity, and the
//! Prometheus text format (`/metrics`) with WuKongIM's `/varz` (`export.rs`).

pub mod export;
pub mod histogram;
pub mod process;

pub use histogram::Histogram;
use std::fmt::{Display, Write as _};

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from (`build.rs`), or "unknown".
pub const COMMIT: &str = env!("RUYI_COMMIT");
/// That commit's date (ISO 8601), or "".
pub const COMMIT_DATE: &str = env!("RUYI_COMMIT_DATE");
/// "clean", "dirty" (uncommitted changes were built) or "".
pub const TREE_STATE: &str = env!("RUYI_TREE_STATE");

/// `ruyi --version`: the version and the commit, "modified" when the tree was dirty.
pub const VERSION_LINE: &str = env!("RUYI_VERSION_LINE");

/// Latencies the pools record, exported as `ruyi_*_seconds` histograms (the storage
/// writer's and the webhooks' live with their other counters).
#[derive(Debug, Default)]
pub struct Latencies {
    /// A client's SEND decoded to its SENDACK handed to the connection's loop.
    pub sendack: Histogram,
    /// An HTTP API request taken by a worker to its answer handed to the loop.
    pub http: Histogram,
}

/// A Prometheus text-format document under construction: each family's `# HELP` and
/// `# TYPE` lines directly above its samples, as standard parsers require.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts family `name` of `kind` ("counter", "gauge", "histogram").
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family; `labels` is `""` or `a="x",b="y"`.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) -> &mut Self {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help).sample(name, "", value);
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        h.write(&mut self.out, name);
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}
