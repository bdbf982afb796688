//! Reading JSON-text parameter values: a tiny JSON-scalar parser, so the SDK needs no
//! `serde_json` (parameters are scalars; anything else is reported as a type error).

use std::fmt;
use std::str::FromStr;

/// A parameter whose JSON text is not of the type asked for.
///
/// Converts into `String` (with `?` in functions returning `Result<_, String>`), so a bad
/// parameter fails the call with a message naming it:
/// `parameter "ready_timeout_ms": expected a non-negative integer, got "abc"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's key.
    pub key: String,
    /// The raw JSON text found.
    pub value: String,
    /// What was expected, e.g. `a non-negative integer`.
    pub expected: &'static str,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parameter {:?}: expected {}, got {}",
            self.key, self.expected, self.value
        )
    }
}

impl std::error::Error for ParamError {}

impl From<ParamError> for String {
    fn from(e: ParamError) -> String {
        e.to_string()
    }
}

fn error(key: &str, raw: &str, expected: &'static str) -> ParamError {
    ParamError {
        key: key.to_string(),
        value: raw.to_string(),
        expected,
    }
}

/// `None` for an absent or `null` value, else the trimmed JSON text.
fn present(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|r| *r != "null")
}

pub(crate) fn parse_str(key: &str, raw: Option<&str>) -> Result<Option<String>, ParamError> {
    let Some(text) = present(raw) else {
        return Ok(None);
    };
    decode_json_string(text)
        .map(Some)
        .ok_or_else(|| error(key, text, "a JSON string"))
}

pub(crate) fn parse_u64(key: &str, raw: Option<&str>) -> Result<Option<u64>, ParamError> {
    let Some(text) = present(raw) else {
        return Ok(None);
    };
    // JSON has no leading `+` or zeros; `u64::from_str` would accept `+5`, so check digits.
    let valid = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    valid
        .then(|| text.parse().ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| error(key, text, "a non-negative integer"))
}

pub(crate) fn parse_f64(key: &str, raw: Option<&str>) -> Result<Option<f64>, ParamError> {
    let Some(text) = present(raw) else {
        return Ok(None);
    };
    // Rust also accepts `inf`, `NaN` and `+1`, which are not JSON numbers.
    let valid = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E' | b'+'))
        && text
            .bytes()
            .next()
            .is_some_and(|b| b == b'-' || b.is_ascii_digit());
    valid
        .then(|| text.parse::<f64>().ok())
        .flatten()
        .filter(|f| f.is_finite())
        .map(Some)
        .ok_or_else(|| error(key, text, "a number"))
}

pub(crate) fn parse_bool(key: &str, raw: Option<&str>) -> Result<Option<bool>, ParamError> {
    match present(raw) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(text) => Err(error(key, text, "true or false")),
    }
}

pub(crate) fn parse_from_str<T: FromStr>(
    key: &str,
    raw: Option<&str>,
) -> Result<Option<T>, ParamError> {
    let Some(text) = present(raw) else {
        return Ok(None);
    };
    let parsed = if text.starts_with('"') {
        decode_json_string(text).and_then(|s| s.parse().ok())
    } else {
        text.parse().ok()
    };
    parsed
        .map(Some)
        .ok_or_else(|| error(key, text, std::any::type_name::<T>()))
}

/// Decodes a complete JSON string literal (`"..."`, with escapes); `None` if `text` is not one.
pub(crate) fn decode_json_string(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            c if (c as u32) < 0x20 => return None,
            '\\' => {
                let decoded = match chars.next()? {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        let high = hex4(&mut chars)?;
                        if (0xD800..0xDC00).contains(&high) {
                            // A surrogate pair: `\uD83D\uDE00`.
                            if chars.next()? != '\\' || chars.next()? != 'u' {
                                return None;
                            }
                            let low = hex4(&mut chars)?;
                            if !(0xDC00..0xE000).contains(&low) {
                                return None;
                            }
                            char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                        } else {
                            char::from_u32(high)?
                        }
                    }
                    _ => return None,
                };
                out.push(decoded);
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next()?.to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings() {
        assert_eq!(decode_json_string(r#""abc""#).as_deref(), Some("abc"));
        assert_eq!(
            decode_json_string(r#""a\nb\t\\\/""#).as_deref(),
            Some("a\nb\t\\/")
        );
        assert_eq!(
            decode_json_string(r#""\ud83d\ude00""#).as_deref(),
            Some("😀")
        );
        assert_eq!(decode_json_string(r#""""#).as_deref(), Some(""));
        assert_eq!(decode_json_string("abc"), None);
        assert_eq!(decode_json_string(r#""a"b""#), None);
        assert_eq!(decode_json_string(r#""\x""#), None);
        assert_eq!(decode_json_string(r#""\ud83d""#), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("k", Some("0")), Ok(Some(0)));
        assert_eq!(parse_u64("k", Some(" 42 ")), Ok(Some(42)));
        assert!(parse_u64("k", Some("+5")).is_err());
        assert!(parse_u64("k", Some("05")).is_err());
        assert!(parse_u64("k", Some("1.5")).is_err());
        assert!(parse_u64("k", Some("99999999999999999999")).is_err());
        assert_eq!(parse_f64("k", Some("-1.5e2")), Ok(Some(-150.0)));
        assert!(parse_f64("k", Some("NaN")).is_err());
        assert!(parse_f64("k", Some("inf")).is_err());
        assert!(parse_f64("k", Some("\"1\"")).is_err());
        assert_eq!(parse_bool("k", Some("false")), Ok(Some(false)));
        assert!(parse_bool("k", Some("1")).is_err());
    }
}
