//! One runner per kind of job.

pub mod diagnostic;
pub mod embed;

use std::path::PathBuf;

/// Where `scripts/fetch-models` keeps model weights: `$DEEPHARDWAY_MODELS`, else
/// `$DEEPHARDWAY_CACHE/models`, else `~/.cache/deephardway/models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEEPHARDWAY_MODELS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("DEEPHARDWAY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/deephardway"));
    cache.join("models")
}
