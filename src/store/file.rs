//! The file backend: the TOML store file of SPEC section 3.
//!
//! A file that fails to parse or validate is rejected whole, with line and column for every
//! problem; a file that does not exist is an empty store.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Backend, EndpointRecord, LoadError, Snapshot};

/// The store as a TOML file on disk.
#[derive(Clone, Debug)]
pub struct FileBackend {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    webhooks: Vec<toml::Spanned<toml::Table>>,
}

impl FileBackend {
    /// A backend reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file. A missing file is `Ok(None)`.
    pub fn load_file(&self) -> Result<Option<Snapshot>, LoadError> {
        let display = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => Zeroizing::new(text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LoadError::Read {
                    path: display,
                    source,
                })
            }
        };
        parse_store(&text, &display).map(Some)
    }
}

impl Backend for FileBackend {
    fn load(&self) -> Pin<Box<dyn Future<Output = Result<Snapshot, LoadError>> + Send + '_>> {
        Box::pin(async move {
            match self.load_file()? {
                Some(snapshot) => Ok(snapshot),
                None => {
                    tracing::warn!(path = %self.path.display(), "store file does not exist; starting with an empty store");
                    Ok(Snapshot::default())
                }
            }
        })
    }
}

/// Parses store-file text (read from `path`, for messages) into a snapshot.
pub fn parse_store(text: &str, path: &str) -> Result<Snapshot, LoadError> {
    let file: StoreFile = toml::from_str(text).map_err(|err| LoadError::Parse {
        path: path.to_owned(),
        message: redact_toml_error(&err),
    })?;
    let mut records = Vec::with_capacity(file.webhooks.len());
    let mut spans = Vec::with_capacity(file.webhooks.len());
    let mut problems = Vec::new();
    for (index, table) in file.webhooks.into_iter().enumerate() {
        let span = table.span();
        let table = table.into_inner();
        let field_spans: Vec<(String, usize)> = table
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    find_key(text, span.clone(), k).unwrap_or(span.start),
                )
            })
            .collect();
        match EndpointRecord::deserialize(toml::Value::Table(table)) {
            Ok(record) => {
                records.push(record);
                spans.push((span.start, field_spans));
            }
            Err(err) => {
                let (line, column) = line_column(text, span.start);
                problems.push(format!(
                    "webhooks[{index}] (line {line}, column {column}): {}",
                    err.message()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid {
            path: path.to_owned(),
            problems,
        });
    }
    Snapshot::build(records, |index, field| {
        let (start, fields) = &spans[index];
        let offset = fields
            .iter()
            .find(|(k, _)| k == field)
            .map_or(*start, |(_, o)| *o);
        let (line, column) = line_column(text, offset);
        format!("webhooks[{index}].{field} (line {line}, column {column})")
    })
    .map_err(|problems| LoadError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// toml's message quotes the offending source line, which may hold a secret: keep only the
/// position and the reason.
fn redact_toml_error(err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => format!(
            "TOML parse error at {}: {}",
            position_text(err, span.start),
            err.message()
        ),
        None => format!("TOML parse error: {}", err.message()),
    }
}

fn position_text(err: &toml::de::Error, _offset: usize) -> String {
    // The rendered error starts "TOML parse error at line L, column C".
    let rendered = err.to_string();
    rendered
        .lines()
        .next()
        .and_then(|first| first.strip_prefix("TOML parse error at "))
        .map_or_else(|| "unknown position".to_owned(), str::to_owned)
}

/// Finds where `key = ` starts inside the byte range of a table.
fn find_key(text: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let region = text.get(span.clone())?;
    let mut offset = 0;
    for line in region.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(span.start + offset + (line.len() - trimmed.len()));
            }
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[webhooks]]
uuid = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
company = "550e8400-e29b-41d4-a716-446655440000"
url = "https://your-app.example.com/webhooks/storno"
events = ["invoice.created", "invoice.paid"]
description = "Production invoice notifications"
status = "active"
scheme = "storno"
secret = "whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
created_at = "2026-02-18T10:00:00Z"
updated_at = "2026-02-18T10:00:00Z"
"#;

    #[test]
    fn the_spec_example_loads() {
        let snapshot = parse_store(GOOD, "webhooks.toml").unwrap();
        assert_eq!(snapshot.len(), 1);
    }

    #[test]
    fn validation_problems_carry_line_and_column() {
        let text = GOOD.replace("https://your-app", "ftp://your-app");
        let err = parse_store(&text, "webhooks.toml").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("webhooks[0].url (line 5, column 1)"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_carry_a_position_and_no_secret() {
        let text = GOOD.replace("secret = \"whsec_9f86", "secret = whsec_9f86");
        let err = parse_store(&text, "webhooks.toml").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("line 10"), "{message}");
        assert!(!message.contains("9f86d0"), "secret leaked: {message}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = GOOD.replace("status = \"active\"", "statsu = \"active\"");
        let err = parse_store(&text, "webhooks.toml").unwrap_err();
        assert!(err.to_string().contains("statsu"), "{err}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
