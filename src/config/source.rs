//! Where a config value came from: the file text and overrides, so that an error names
//! `file:line: key`; and the small parsers every section uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::locate::{self, Seg};
use super::{ConfigError, Origin};

/// The file text plus what is needed to point at a line.
pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) doc: toml_edit::Document<String>,
    pub(super) overridden: Vec<Vec<String>>,
}

impl Source<'_> {
    pub(super) fn error(&self, path: &[Seg], reason: impl Into<String>) -> ConfigError {
        let keys: Vec<&str> = path
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect();
        let from_set = self
            .overridden
            .iter()
            .any(|o| keys.len() >= o.len() && keys[..o.len()].iter().zip(o).all(|(a, b)| *a == b));
        let origin = if from_set {
            Origin::Override
        } else {
            Origin::File {
                line: locate::line_of(&self.doc, self.text, path),
            }
        };
        ConfigError {
            file: self.file.to_path_buf(),
            origin,
            key: locate::render(path),
            reason: reason.into(),
        }
    }
}

pub(super) fn key(path: &str) -> Vec<Seg> {
    path.split('.').map(|k| Seg::Key(k.to_string())).collect()
}

pub(super) fn key_idx(path: &str, i: usize) -> Vec<Seg> {
    let mut p = key(path);
    p.push(Seg::Index(i));
    p
}

pub(super) fn parse_addr(src: &Source, path: &[Seg], s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        src.error(
            path,
            format!("invalid listen address {s:?}: expected IP:port, e.g. \"127.0.0.1:8080\""),
        )
    })
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
