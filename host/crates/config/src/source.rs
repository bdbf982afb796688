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
    reject_duplicate_keys(body)?;
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

/// JSON allows an object to repeat a key and serde keeps the last one silently (for maps) or
/// fails with a vague message (for structs); a deploy body that says two things is refused,
/// naming the key and where it is repeated. Syntax errors are left to the typed parse.
pub(crate) fn reject_duplicate_keys(body: &[u8]) -> Result<(), ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, NoDuplicates>(&mut de) {
        Ok(_) => Ok(()),
        Err(err) => {
            let message = json_message(err.inner());
            if let Some(key) = message.strip_prefix(DUPLICATE) {
                let path = FieldPath::from_serde(err.path()).k(key.trim_matches('`'));
                Err(json_error(
                    format!("duplicate key {key} in JSON object: give each key once"),
                    err.inner(),
                    &path,
                ))
            } else {
                Ok(())
            }
        }
    }
}

const DUPLICATE: &str = "duplicate key ";

/// Any JSON value, checked for repeated keys in every object.
struct NoDuplicates;

impl<'de> serde::Deserialize<'de> for NoDuplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_none<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<NoDuplicates, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}`{key}`")));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

#[cfg(test)]
mod duplicate_tests {
    use super::reject_duplicate_keys;

    #[test]
    fn duplicate_keys_in_deploy_json_are_an_error() {
        let err =
            reject_duplicate_keys(br#"{"services": [{"name": "a", "env": {"K": "1", "K": "2"}}]}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("duplicate key `K`"), "{err}");
        assert!(err.contains("services[0].env.K"), "{err}");
        let err = reject_duplicate_keys(br#"{"name": "a", "name": "b"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate key `name`"), "{err}");
        assert!(
            reject_duplicate_keys(br#"{"a": {"k": 1}, "b": {"k": 1}, "c": [1, {"k": 2}]}"#).is_ok()
        );
        assert!(
            reject_duplicate_keys(b"{not json").is_ok(),
            "syntax is the typed parse's to report"
        );
    }
}
