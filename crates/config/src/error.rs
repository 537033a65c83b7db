//! Configuration errors that say what is wrong and exactly where: file, line, column and the key
//! path, plus the nearest valid key when the problem is a typo.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::locate::{Locations, Position};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    /// Key path such as `routes[1].match.headers`; empty for the document root.
    pub path: String,
    pub message: String,
    pub suggestion: Option<String>,
}

impl ConfigError {
    /// An error about `path`, positioned from the document's location index.
    pub(crate) fn at(file: &Path, locations: &Locations, path: &str, message: String) -> Self {
        Self {
            file: file.to_path_buf(),
            position: locations.find(path),
            path: path.to_string(),
            message,
            suggestion: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one file, reported together so a user fixes them in one pass.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// From a serde message such as "unknown field `timout`, expected one of `name`, `timeout`",
/// the unknown word and the closest allowed one.
pub(crate) fn suggest_from_message(message: &str) -> Option<String> {
    let (head, expected) = message.split_once("expected")?;
    if !(head.starts_with("unknown field") || head.starts_with("unknown variant")) {
        return None;
    }
    let unknown = head.split('`').nth(1)?;
    let candidates = expected.split('`').skip(1).step_by(2);
    nearest(unknown, candidates)
}

/// The candidate within a small edit distance of `word`, if any.
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (word.len() / 3).max(2);
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_field() {
        let msg = "unknown field `timout`, expected one of `name`, `match`, `pool`, `timeout`";
        assert_eq!(suggest_from_message(msg).as_deref(), Some("timeout"));
        let msg = "unknown variant `round_robbin`, expected `round_robin` or `random`";
        assert_eq!(suggest_from_message(msg).as_deref(), Some("round_robin"));
        let msg = "unknown field `zzzzzzzz`, expected one of `name`, `pool`";
        assert_eq!(suggest_from_message(msg), None);
    }
}
