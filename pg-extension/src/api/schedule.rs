//! Parsing the `schedule` argument: `'5s'`, `'30 seconds'`, `'2m'`, `'1h'`, `'500ms'`, or
//! `'manual'` / NULL for stream tables refreshed only on request.

use crate::error::PgTrickleError;

/// Seconds between refreshes, or `None` for manual-only.
pub fn parse_schedule(text: Option<&str>) -> Result<Option<f64>, PgTrickleError> {
    let invalid = |message: String| PgTrickleError::InvalidArgument {
        argument: "schedule",
        message,
        hint: "Write a duration such as '5s', '500ms', '2 minutes', '1h', or 'manual' for refresh on request only."
            .into(),
    };
    let Some(text) = text.map(str::trim) else { return Ok(None) };
    if text.eq_ignore_ascii_case("manual") {
        return Ok(None);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| invalid(format!("\"{text}\" does not start with a number")))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "msec" | "millisecond" | "milliseconds" => 0.001,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        other => return Err(invalid(format!("unknown unit \"{other}\""))),
    };
    let seconds = value * factor;
    if !seconds.is_finite() || seconds < 0.01 {
        return Err(invalid(format!("\"{text}\" is shorter than 10 ms")));
    }
    if seconds > 366.0 * 86_400.0 {
        return Err(invalid(format!("\"{text}\" is longer than a year")));
    }
    Ok(Some(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_schedule;

    #[test]
    fn durations_in_the_usual_spellings() {
        assert_eq!(parse_schedule(Some("5s")).unwrap(), Some(5.0));
        assert_eq!(parse_schedule(Some(" 30 seconds ")).unwrap(), Some(30.0));
        assert_eq!(parse_schedule(Some("2m")).unwrap(), Some(120.0));
        assert_eq!(parse_schedule(Some("1.5h")).unwrap(), Some(5400.0));
        assert_eq!(parse_schedule(Some("500ms")).unwrap(), Some(0.5));
        assert_eq!(parse_schedule(Some("10")).unwrap(), Some(10.0));
        assert_eq!(parse_schedule(Some("manual")).unwrap(), None);
        assert_eq!(parse_schedule(None).unwrap(), None);
    }

    #[test]
    fn nonsense_is_rejected_with_the_reason() {
        for bad in ["", "fast", "5 parsecs", "0s", "-1s", "1ms", "400d"] {
            let error = parse_schedule(Some(bad)).unwrap_err();
            assert!(error.to_string().starts_with("invalid value for schedule"), "{bad}: {error}");
        }
    }
}
