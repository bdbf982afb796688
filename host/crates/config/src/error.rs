//! The one error type of this crate, [`ConfigError`], and the field paths it carries.

use std::fmt;

/// A configuration problem, located as precisely as the input allows.
///
/// The [`Display`](fmt::Display) form is one line,
/// ``<file>:<line>:<col>: field `<path>`: <message>``, with the parts that are not known left
/// out:
///
/// ```text
/// services/web/service.toml:4:12: field `service[0].replicas`: invalid type: string "two", expected u32
/// line 1, column 42: field `services[0].replica`: unknown field `replica`, expected one of `name`, ...
/// field `services[0].project`: missing project: every service in a deploy request names its project
/// ```
///
/// A location without a file (a JSON request body) is written `line L, column C`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The file the problem is in, as the caller labelled it (e.g. `services/web/service.toml`).
    pub file: Option<String>,
    /// 1-based line of the offending value or table, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending value or table, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending field, e.g. `service[0].resources.memory`.
    pub field: Option<String>,
    /// What is wrong, in one line.
    pub message: String,
}

impl ConfigError {
    /// An error carrying only a message; callers add the location with the `with_*` methods.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    /// Sets the file label.
    pub fn with_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Sets the field path.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets the 1-based line and column.
    pub fn with_position(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(col)) => out.push_str(&format!("{file}:{line}:{col}: ")),
            (Some(file), Some(line), None) => out.push_str(&format!("{file}:{line}: ")),
            (Some(file), None, _) => out.push_str(&format!("{file}: ")),
            (None, Some(line), Some(col)) => out.push_str(&format!("line {line}, column {col}: ")),
            (None, Some(line), None) => out.push_str(&format!("line {line}: ")),
            (None, None, _) => {}
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("field `{field}`: "));
        }
        // The message is promised to be one line; a multi-line message from a parser is folded
        // so that log lines and API error bodies stay single-line.
        let mut first = true;
        for part in self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if !first {
                out.push_str("; ");
            }
            out.push_str(part);
            first = false;
        }
        out
    }
}

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A table key or struct field.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path to a value inside a document, printed like `service[0].env.KEY`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub(crate) Vec<Seg>);

impl FieldPath {
    /// A path of one key.
    pub(crate) fn key(key: &str) -> Self {
        FieldPath(vec![Seg::Key(key.to_string())])
    }

    /// This path followed by a key.
    pub(crate) fn k(mut self, key: &str) -> Self {
        self.0.push(Seg::Key(key.to_string()));
        self
    }

    /// This path followed by an index.
    pub(crate) fn i(mut self, index: usize) -> Self {
        self.0.push(Seg::Index(index));
        self
    }

    /// This path followed by all of `rest`.
    pub(crate) fn join(mut self, rest: &FieldPath) -> Self {
        self.0.extend(rest.0.iter().cloned());
        self
    }

    /// Converts a serde_path_to_error path; unknown segments are dropped.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        FieldPath(
            path.iter()
                .filter_map(|seg| match seg {
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        Some(Seg::Key(key.clone()))
                    }
                    Segment::Unknown => None,
                })
                .collect(),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found while validating one value: where (relative to the value) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) path: FieldPath,
    pub(crate) message: String,
}

impl Invalid {
    pub(crate) fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Invalid {
            path,
            message: message.into(),
        }
    }
}

/// Maps a byte offset in `text` to a 1-based (line, column), the column counted in characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_every_part() {
        let e = ConfigError::new("invalid type: string \"two\", expected u32")
            .with_file("services/web/service.toml")
            .with_position(4, 12)
            .with_field("service[0].replicas");
        assert_eq!(
            e.to_string(),
            "services/web/service.toml:4:12: field `service[0].replicas`: invalid type: string \"two\", expected u32"
        );
    }

    #[test]
    fn display_omits_unknown_parts() {
        assert_eq!(ConfigError::new("boom").to_string(), "boom");
        assert_eq!(
            ConfigError::new("boom").with_file("a.toml").to_string(),
            "a.toml: boom"
        );
        assert_eq!(
            ConfigError::new("boom").with_position(2, 3).to_string(),
            "line 2, column 3: boom"
        );
        assert_eq!(
            ConfigError::new("boom").with_field("x.y").to_string(),
            "field `x.y`: boom"
        );
    }

    #[test]
    fn display_is_one_line() {
        let e = ConfigError::new("first\n  second\n\n");
        assert_eq!(e.to_string(), "first; second");
    }

    #[test]
    fn field_paths_print_like_serde_paths() {
        let p = FieldPath::key("service").i(2).k("env").k("KEY");
        assert_eq!(p.to_string(), "service[2].env.KEY");
        assert_eq!(FieldPath::default().to_string(), "");
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // "bé" is 3 bytes; the '=' after it is column 4.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, 1000), (3, 1));
    }
}
