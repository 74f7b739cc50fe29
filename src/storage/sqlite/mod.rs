//! The SQLite store: the embedded default (`<data_dir>/ruyi.db`, WAL).

pub mod admin;
pub mod tx;
