//! The version this binary reports (`orca --version`, the hand-over socket, `orca update`),
//! read from a stamp slot in the binary so a release pipeline can stamp a built binary.
//!
//! The slot is a fixed-size static: a marker, then the version, NUL-padded. It holds the
//! crate version at build time; rewriting the bytes after the marker in a copy of the file
//! (same length, NUL-padded) makes that copy report another version, which is how a release
//! pipeline stamps a build and how `tests/update.rs` makes an honest "newer" binary from the
//! test build (a real, different file that really reports the version its index claims).

/// What precedes the version in the slot; unique in the binary (only this static holds it).
pub const STAMP_MARKER: &[u8; 16] = b"\0orca-version:\x01\x02";
/// Bytes for the version after the marker.
pub const STAMP_LEN: usize = 48;

const fn slot() -> [u8; 16 + STAMP_LEN] {
    let mut out = [0u8; 16 + STAMP_LEN];
    let mut i = 0;
    while i < 16 {
        out[i] = STAMP_MARKER[i];
        i += 1;
    }
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    assert!(
        version.len() < STAMP_LEN,
        "version longer than its stamp slot"
    );
    let mut j = 0;
    while j < version.len() {
        out[16 + j] = version[j];
        j += 1;
    }
    out
}

#[used]
static SLOT: [u8; 16 + STAMP_LEN] = slot();

/// This binary's version: the stamp slot's text up to the first NUL.
pub fn current() -> &'static str {
    // `black_box`: the optimizer must read the bytes in the file, not fold the build-time
    // constant, or a stamped copy would still print the old version.
    let slot: &'static [u8; 16 + STAMP_LEN] = std::hint::black_box(&SLOT);
    let value = &slot[16..];
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// The target triple this binary was built for (its entry in a release index).
pub const TARGET: &str = env!("ORCA_TARGET");

#[cfg(test)]
mod tests {
    #[test]
    fn unstamped_binary_reports_the_crate_version() {
        assert_eq!(super::current(), env!("CARGO_PKG_VERSION"));
    }
}
