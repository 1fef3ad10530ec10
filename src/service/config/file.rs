//! The configuration file: `key = value` lines read into raw settings,
//! each with its file and line.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::settings::{known_key, ConfigError, KEYS, MAX_FILE_BYTES};

/// Parse the file's text. `path` is only used in messages.
pub fn parse_file(
    path: &Path,
    text: &str,
) -> Result<Vec<(&'static str, String, usize)>, ConfigError> {
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(syntax(
                line_no,
                format!("expected `key = value`, found {line:?}"),
            ));
        };
        let name = name.trim();
        let Some(key) = known_key(name) else {
            return Err(syntax(
                line_no,
                format!("unknown key {name:?} (known: {})", KEYS.join(", ")),
            ));
        };
        if let Some(first) = seen.insert(key, line_no) {
            return Err(syntax(
                line_no,
                format!("{key} is already set on line {first}"),
            ));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"') {
            match inner.strip_suffix('"') {
                Some(inner) if !inner.contains('"') => inner,
                _ => {
                    return Err(syntax(
                        line_no,
                        format!(
                        "{key}: unbalanced quotes (a quoted value is \"...\" with no \" inside)"
                    ),
                    ))
                }
            }
        } else {
            value
        };
        if value.is_empty() {
            return Err(syntax(
                line_no,
                format!("{key} has an empty value; remove the line to use the default"),
            ));
        }
        out.push((key, value.to_string(), line_no));
    }
    Ok(out)
}

pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes)
        .map_err(|_| read_err(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")))
}
