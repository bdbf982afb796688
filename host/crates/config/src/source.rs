//! Reading TOML and JSON text into the schema types, turning parser errors into
//! [`ConfigError`]s with a file, line, column and field path.

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{line_col, ConfigError, FieldPath, Invalid, Seg};

/// A parsed TOML document kept beside the typed value, to find where a field was written.
pub(crate) struct TomlDoc<'a> {
    file: &'a str,
    text: &'a str,
    root: Spanned<DeValue<'a>>,
}

impl<'a> TomlDoc<'a> {
    /// Parses `text` (labelled `file` in errors) into `T` and keeps the document for locating.
    pub(crate) fn parse<T: DeserializeOwned>(
        file: &'a str,
        text: &'a str,
    ) -> Result<(T, TomlDoc<'a>), ConfigError> {
        let table = DeTable::parse(text).map_err(|e| toml_syntax_error(file, text, &e))?;
        let span = table.span();
        let doc = TomlDoc {
            file,
            text,
            root: Spanned::new(span, DeValue::Table(table.into_inner())),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| toml_syntax_error(file, text, &e))?;
        let value = serde_path_to_error::deserialize(de).map_err(|err| {
            let mut path = FieldPath::from_serde(err.path());
            let inner = err.inner();
            let message = inner.message().to_string();
            push_unknown_field(&mut path, &message);
            let position = inner
                .span()
                .map(|s| line_col(text, s.start))
                .or_else(|| doc.position(&path));
            located(ConfigError::new(message).with_file(file), position, &path)
        })?;
        Ok((value, doc))
    }

    /// Where the value at `path` was written, or its nearest written ancestor.
    pub(crate) fn position(&self, path: &FieldPath) -> Option<(usize, usize)> {
        let mut node = &self.root;
        let mut found = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(key) => node.get_ref().get(key.as_str()),
                Seg::Index(index) => node.get_ref().get(*index),
            };
            match next {
                Some(next) => {
                    node = next;
                    found = Some(node.span().start);
                }
                None => break,
            }
        }
        found.map(|offset| line_col(self.text, offset))
    }

    /// Turns a validation problem at `prefix` + `invalid.path` into a located error.
    pub(crate) fn error(&self, prefix: &FieldPath, invalid: Invalid) -> ConfigError {
        let path = prefix.clone().join(&invalid.path);
        located(
            ConfigError::new(invalid.message).with_file(self.file),
            self.position(&path),
            &path,
        )
    }
}

/// Parses a JSON body into `T`; errors carry the JSON path and serde_json's line and column.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut path = FieldPath::from_serde(err.path());
        let message = json_message(err.inner());
        push_unknown_field(&mut path, &message);
        json_error(message, err.inner(), &path)
    })?;
    // Trailing text after the body is a syntax error too.
    de.end()
        .map_err(|e| json_error(json_message(&e), &e, &FieldPath::default()))?;
    Ok(value)
}

fn json_error(message: String, err: &serde_json::Error, path: &FieldPath) -> ConfigError {
    let position = (err.line() > 0).then(|| (err.line(), err.column()));
    located(ConfigError::new(message), position, path)
}

/// serde_json appends " at line L column C" to its messages; the position is reported apart.
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_string(),
        None => text,
    }
}

fn toml_syntax_error(file: &str, text: &str, err: &toml::de::Error) -> ConfigError {
    let error = ConfigError::new(format!("invalid TOML: {}", err.message())).with_file(file);
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            error.with_position(line, col)
        }
        None => error,
    }
}

/// serde reports an unknown field at the path of the table holding it; naming the field itself
/// in the path points the reader at the right line of the message.
fn push_unknown_field(path: &mut FieldPath, message: &str) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let field = Seg::Key(rest[..end].to_string());
            if path.0.last() != Some(&field) {
                path.0.push(field);
            }
        }
    }
}

fn located(
    mut error: ConfigError,
    position: Option<(usize, usize)>,
    path: &FieldPath,
) -> ConfigError {
    if let Some((line, col)) = position {
        error = error.with_position(line, col);
    }
    if !path.is_empty() {
        error = error.with_field(path.to_string());
    }
    error
}
