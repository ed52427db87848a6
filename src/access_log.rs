//! The access log: one line per request in the combined log format that nginx and Apache write
//! (so existing log tools read it), plus the backend that answered and the duration. Lines go
//! through `log` at info level with the target `tinylb::access`, so they land where every other
//! log line does. When the log is off (`accessLog: false`) nothing here runs.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::stages::{Durations, Stage};

/// What the access log needs from a request, taken before the request is consumed.
pub struct AccessLine {
    client: Option<IpAddr>,
    received: SystemTime,
    request_line: String,
    referer: String,
    user_agent: String,
}

impl AccessLine {
    /// Captures the request's side of the line: the client, the request line as received,
    /// and the `Referer` and `User-Agent` headers when there are any.
    pub fn new(
        client: Option<IpAddr>,
        request_line: &str,
        referer: Option<&str>,
        user_agent: Option<&str>,
    ) -> AccessLine {
        let quoted = |value: Option<&str>| value.map_or_else(|| "-".to_string(), escape);
        AccessLine {
            client,
            received: SystemTime::now(),
            request_line: escape(request_line),
            referer: quoted(referer),
            user_agent: quoted(user_agent),
        }
    }

    /// The whole line, once the answer is known: each stage's length in seconds, `-` where
    /// it is unknown (see [`crate::stages`]).
    pub fn format(
        &self,
        status: u16,
        body_bytes: u64,
        backend: Option<&str>,
        stages: &Durations,
    ) -> String {
        let client = self
            .client
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let mut line = format!(
            "{client} - - [{}] \"{}\" {status} {body_bytes} \"{}\" \"{}\"",
            clf_time(self.received),
            self.request_line,
            self.referer,
            self.user_agent
        );
        let _ = write!(line, " backend={}", backend.unwrap_or("-"));
        for stage in Stage::ALL {
            match stages.of(stage) {
                Some(length) => write!(line, " {}={:.6}", stage.name(), length.as_secs_f64()),
                None => write!(line, " {}=-", stage.name()),
            }
            .unwrap_or(());
        }
        line
    }

    /// Writes the line to the log.
    pub fn log(self, status: u16, body_bytes: u64, backend: Option<&str>, stages: &Durations) {
        log::info!(target: "tinylb::access", "{}", self.format(status, body_bytes, backend, stages));
    }
}

/// Quotes and control bytes would let a client forge log fields; escape them.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `25/Nov/2026:16:20:00 +0000`, in UTC like every tinylb log line.
fn clf_time(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let time_of_day = seconds % 86_400;
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        time_of_day / 3600,
        time_of_day / 60 % 60,
        time_of_day % 60
    )
}

/// Year, month (1-12) and day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), so tinylb needs no date library for one log format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_are_in_common_log_format() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // 2026-11-25 16:20:05 UTC
        let at = UNIX_EPOCH + Duration::from_secs(1_795_623_605);
        assert_eq!(clf_time(at), "25/Nov/2026:16:20:05 +0000");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_line_ends_with_the_backend_and_each_stage() {
        let line = AccessLine::new(None, "GET / HTTP/1.1", None, Some("curl"));
        let us = |n| Some(Duration::from_micros(n));
        let stages = Durations([None, us(3), us(7), us(80), us(10), us(100)]);
        let text = line.format(200, 19, Some("http://127.0.0.1:5001"), &stages);
        assert!(text.starts_with("- - - ["), "{text}");
        assert!(
            text.ends_with(
                "\"GET / HTTP/1.1\" 200 19 \"-\" \"curl\" backend=http://127.0.0.1:5001 \
                 client=- queue=0.000003 connect=0.000007 response=0.000080 relay=0.000010 \
                 total=0.000100"
            ),
            "{text}"
        );
    }

    #[test]
    fn quotes_and_control_bytes_are_escaped() {
        assert_eq!(escape("a\"b\\c\u{1}"), "a\\\"b\\\\c\\x01");
    }
}
