//! Go-style durations (`"250ms"`, `"2s"`, `"1m30s"`): the seed article's config.json writes its
//! health-check interval this way, so every duration key in tinylb reads the same format.

use std::time::Duration;

/// Why a duration string was refused; `config` turns it into a message that names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// A bare number such as `"2"`: seconds or milliseconds would both be a guess.
    MissingUnit,
    /// Anything else that is not `<number><unit>` repeated.
    Invalid,
}

/// Parses `<number><unit>` repeated, with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h` and decimal
/// numbers allowed (`"1.5s"`), as Go's `time.ParseDuration` does. Negative values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Invalid);
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.parse::<f64>().is_ok() {
        return Err(DurationError::MissingUnit);
    }
    let mut rest = text;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(DurationError::MissingUnit)?;
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError::Invalid)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(DurationError::Invalid),
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(DurationError::Invalid);
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Writes a duration back in the same style, for log lines and `--check`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        format!("{}µs", duration.as_micros())
    } else if !millis.is_multiple_of(1000) {
        format!("{millis}ms")
    } else {
        format!("{}s", millis / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_style_durations() {
        for (text, duration) in [
            ("2s", Duration::from_secs(2)),
            ("250ms", Duration::from_millis(250)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("1h", Duration::from_secs(3600)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("1500ns", Duration::from_nanos(1500)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(duration), "{text:?}");
        }
    }

    #[test]
    fn refuses_numbers_without_a_unit_and_garbage() {
        for (text, error) in [
            ("2", DurationError::MissingUnit),
            ("1.5", DurationError::MissingUnit),
            ("2s3", DurationError::MissingUnit),
            ("2x", DurationError::Invalid),
            ("-2s", DurationError::Invalid),
            ("", DurationError::Invalid),
            ("s", DurationError::Invalid),
        ] {
            assert_eq!(parse_duration(text), Err(error), "{text:?}");
        }
    }

    /// A `Duration` read as nanoseconds holds at most `u64::MAX` of them, about 584 years
    /// (5124095 hours and a bit); anything longer is refused, not cut short.
    #[test]
    fn reads_up_to_the_longest_duration_and_refuses_more() {
        let hours = |n: u64| Duration::from_secs(n * 3600);
        let longest = Duration::from_nanos(u64::MAX);
        assert_eq!(parse_duration("18446744073709551615ns"), Ok(longest));
        assert_eq!(parse_duration("5124095h"), Ok(hours(5124095)));
        assert_eq!(parse_duration("5124096h"), Err(DurationError::Invalid));
        // Too many digits for an f64: the number reads as infinity.
        let endless = format!("1{}s", "0".repeat(400));
        assert_eq!(parse_duration(&endless), Err(DurationError::Invalid));
    }

    #[test]
    fn formats_back_readably() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_micros(500)), "500µs");
    }
}
