//! Memory sizes written with units (`"512Mi"`, `"1G"`) — the [`Memory`] type.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The units accepted after the number, with their multipliers, largest first so that
/// [`Memory`]'s canonical form uses the largest unit that divides the size exactly.
const UNITS: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("T", 1_000_000_000_000),
    ("Gi", 1 << 30),
    ("G", 1_000_000_000),
    ("Mi", 1 << 20),
    ("M", 1_000_000),
    ("Ki", 1 << 10),
    ("k", 1_000),
];

/// A memory size in bytes.
///
/// Written as a whole number with an optional unit: `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024) or
/// `k`, `M`, `G`, `T` (powers of 1000), or as a bare number of bytes (`"1048576"` or, in TOML and
/// JSON, the integer `1048576`). Fractions (`"1.5Mi"`), signs, spaces, other units (`"512MB"`)
/// and zero are rejected: a fraction of a unit is rarely what anyone means, and `"1536Mi"` says
/// the same thing exactly.
///
/// It serializes to its canonical string (`"512Mi"`, `"256M"`: the largest unit that divides it
/// exactly, else plain bytes), which parses back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

impl Memory {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

fn invalid(text: &str) -> String {
    format!(
        "invalid memory {text:?}: expected a whole number with an optional unit Ki, Mi, Gi, Ti \
         (powers of 1024) or k, M, G, T (powers of 1000), e.g. \"512Mi\""
    )
}

impl FromStr for Memory {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(invalid(text));
        }
        let multiplier = if unit.is_empty() {
            1
        } else {
            match UNITS.iter().find(|(u, _)| *u == unit) {
                Some((_, m)) => *m,
                None => return Err(invalid(text)),
            }
        };
        let too_large = || format!("invalid memory {text:?}: too large");
        let number: u64 = digits.parse().map_err(|_| too_large())?;
        let bytes = number.checked_mul(multiplier).ok_or_else(too_large)?;
        Memory::from_bytes(bytes)
            .map_err(|_| format!("invalid memory {text:?}: must be greater than zero"))
    }
}

impl Memory {
    fn from_bytes(bytes: u64) -> Result<Self, String> {
        if bytes == 0 {
            Err("invalid memory 0: must be greater than zero".to_string())
        } else {
            Ok(Memory(bytes))
        }
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, multiplier) in UNITS {
            if self.0.is_multiple_of(multiplier) {
                return write!(f, "{}{unit}", self.0 / multiplier);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemoryVisitor;

        impl Visitor<'_> for MemoryVisitor {
            type Value = Memory;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a memory size such as \"512Mi\" or a whole number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Memory, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Memory, E> {
                Memory::from_bytes(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Memory, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "invalid memory {v}: must be greater than zero"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(MemoryVisitor)
    }
}

/// A memory size is a string such as `"512Mi"` (or a whole number of bytes).
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Memory {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Memory".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A memory size: a number with a unit (`512Mi`, `1Gi`, `256M`, `64k`) or a whole number of bytes.",
            "anyOf": [
                {"type": "string"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("256M", 256_000_000),
            ("1G", 1_000_000_000),
            ("64Ki", 64 << 10),
            ("100k", 100_000),
            ("1048576", 1_048_576),
            ("1Ti", 1 << 40),
            ("2T", 2_000_000_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<Memory>(), Ok(Memory(bytes)), "{text}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "512MB",
            "-1Mi",
            "",
            "1.5Mi",
            "Mi",
            " 1Mi",
            "1Mi ",
            "1 Mi",
            "1mi",
            "1K",
            "0",
            "0Mi",
            "+1Mi",
            "99999999999999999999",
            "99999999999Ti",
        ] {
            assert!(bad.parse::<Memory>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_lists_units() {
        assert_eq!(
            "512MB".parse::<Memory>().unwrap_err(),
            "invalid memory \"512MB\": expected a whole number with an optional unit Ki, Mi, Gi, \
             Ti (powers of 1024) or k, M, G, T (powers of 1000), e.g. \"512Mi\""
        );
        assert_eq!(
            "0Mi".parse::<Memory>().unwrap_err(),
            "invalid memory \"0Mi\": must be greater than zero"
        );
    }

    #[test]
    fn canonical_display_round_trips() {
        for (bytes, text) in [
            (512u64 << 20, "512Mi"),
            (1 << 30, "1Gi"),
            (1536 << 20, "1536Mi"),
            (256_000_000, "256M"),
            (1000, "1k"),
            (1023, "1023"),
            (5 << 40, "5Ti"),
        ] {
            let m = Memory(bytes);
            assert_eq!(m.to_string(), text);
            assert_eq!(text.parse::<Memory>(), Ok(m));
        }
    }

    #[test]
    fn serde_json_forms() {
        assert_eq!(
            serde_json::from_str::<Memory>("\"64Mi\"").unwrap(),
            Memory(64 << 20)
        );
        assert_eq!(
            serde_json::from_str::<Memory>("1024").unwrap(),
            Memory(1024)
        );
        assert!(serde_json::from_str::<Memory>("0").is_err());
        assert!(serde_json::from_str::<Memory>("-5").is_err());
        assert!(serde_json::from_str::<Memory>("1.5").is_err());
        assert_eq!(
            serde_json::to_string(&Memory(64 << 20)).unwrap(),
            "\"64Mi\""
        );
    }
}
