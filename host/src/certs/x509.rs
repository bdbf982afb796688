//! The one thing orca reads from a certificate itself: the leaf's notAfter, by a minimal DER
//! walk (a full X.509 parser would be a large dependency for one field).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The notAfter of the first certificate in `cert_pem`, as Unix seconds.
pub fn not_after(cert_pem: &str) -> Result<u64, String> {
    let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or("no \"BEGIN CERTIFICATE\" block found")?
        .map_err(|e| format!("not valid PEM: {e}"))?;
    not_after_der(leaf.as_ref())
}

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } ... }`.
fn not_after_der(der: &[u8]) -> Result<u64, String> {
    let (tag, cert, _) = tlv(der)?;
    expect(tag, 0x30, "certificate")?;
    let (tag, mut tbs, _) = tlv(cert)?;
    expect(tag, 0x30, "tbsCertificate")?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        // Explicit version; the serial number follows.
        tbs = rest;
    }
    let (tag, _, rest) = tlv(tbs)?;
    expect(tag, 0x02, "serialNumber")?;
    let (tag, _, rest) = tlv(rest)?;
    expect(tag, 0x30, "signature")?;
    let (tag, _, rest) = tlv(rest)?;
    expect(tag, 0x30, "issuer")?;
    let (tag, validity, _) = tlv(rest)?;
    expect(tag, 0x30, "validity")?;
    let (_, _, rest) = tlv(validity)?;
    let (tag, time, _) = tlv(rest)?;
    let text = std::str::from_utf8(time).map_err(|_| "notAfter is not ASCII".to_string())?;
    match tag {
        0x17 => parse_time(text, false),
        0x18 => parse_time(text, true),
        other => Err(format!("notAfter has unexpected tag {other:#x}")),
    }
}

fn expect(tag: u8, want: u8, what: &str) -> Result<(), String> {
    if tag == want {
        Ok(())
    } else {
        Err(format!("{what}: expected tag {want:#x}, found {tag:#x}"))
    }
}

/// One DER element: (tag, contents, what follows).
fn tlv(data: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let truncated = || "truncated DER".to_string();
    let (&tag, rest) = data.split_first().ok_or_else(truncated)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(truncated());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `YYMMDDHHMMSSZ` (UTCTime, years 1950-2049) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn parse_time(text: &str, generalized: bool) -> Result<u64, String> {
    let bad = || format!("unsupported time {text:?}");
    let digits = text.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        digits
            .get(range)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, rest) = if generalized {
        if digits.len() != 14 {
            return Err(bad());
        }
        (num(0..4)?, 4)
    } else {
        if digits.len() != 12 {
            return Err(bad());
        }
        let yy = num(0..2)?;
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let hour = num(rest + 4..rest + 6)?;
    let minute = num(rest + 6..rest + 8)?;
    let second = num(rest + 8..rest + 10)?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("700101000000Z", false).unwrap(), 0);
        assert_eq!(parse_time("20380119031408Z", true).unwrap(), 2_147_483_648);
        assert_eq!(parse_time("491231235959Z", false).unwrap(), 2_524_607_999);
        assert!(parse_time("70010100000Z", false).is_err());
    }

    #[test]
    fn reads_the_leaf_not_after() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-05-17T00:00:00Z
        assert_eq!(not_after(&cert.pem()).unwrap(), 1_936_742_400);
        // rcgen's default (year 4096) is a GeneralizedTime.
        let default = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        assert_eq!(
            not_after(&default.cert.pem()).unwrap(),
            u64::try_from(days_from_civil(4096, 1, 1) * 86_400).unwrap()
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(not_after("nope").is_err());
        assert!(not_after_der(&[0x30, 0x05, 0x01]).is_err());
    }
}
