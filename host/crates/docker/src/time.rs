//! RFC 3339 timestamps, as the Docker Engine API writes them, to Unix seconds.
//!
//! A dozen lines here instead of a date-time dependency: the engine's format is fixed
//! (`2024-05-01T12:34:56.123456789Z`, sometimes with a numeric offset).

/// Seconds since the Unix epoch for an RFC 3339 timestamp; `None` if it does not parse.
pub(crate) fn rfc3339_to_unix(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;

    let offset_at = rest.find(['Z', 'z', '+', '-'])?;
    let (time, zone) = rest.split_at(offset_at);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;

    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::rfc3339_to_unix;

    #[test]
    fn parses_engine_timestamps() {
        assert_eq!(rfc3339_to_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_to_unix("2024-05-01T12:34:56.123456789Z"),
            Some(1_714_566_896)
        );
        assert_eq!(
            rfc3339_to_unix("2024-05-01T14:34:56+02:00"),
            Some(1_714_566_896)
        );
        assert_eq!(
            rfc3339_to_unix("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800)
        );
        assert_eq!(rfc3339_to_unix("garbage"), None);
    }
}
