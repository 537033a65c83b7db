//! How numbers look in both views: `-` for "no data", and few enough digits to scan a column.

/// A rate or count: more decimals for small values, none once they stop mattering.
pub fn number(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(0.0) => "0".to_owned(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// A gauge of whole things (requests in flight, queued): no decimals.
pub fn count(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.0}"),
        _ => "-".to_owned(),
    }
}

/// Milliseconds: a decimal below 10 ms, whole milliseconds above.
pub fn millis(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v.abs() < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// A fraction (0.0125) as a percentage (`1.25`).
pub fn percent(fraction: Option<f64>) -> String {
    number(fraction.map(|f| f * 100.0))
}

/// A latency with its unit, for one-line output: `8.2ms`, `412ms`, `2.88s`.
pub fn latency(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if !v.is_finite() => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.1}ms"),
        Some(v) if v < 1000.0 => format!("{v:.0}ms"),
        Some(v) => format!("{:.2}s", v / 1000.0),
    }
}

/// Unix milliseconds as a UTC time of day with milliseconds (`14:40:00.123`).
pub fn clock(time_ms: Option<u64>) -> String {
    let Some(ms) = time_ms else {
        return "--:--:--.---".to_owned();
    };
    let of_day = ms % 86_400_000;
    let (h, m, s, milli) = (
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1000 % 60,
        of_day % 1000,
    );
    format!("{h:02}:{m:02}:{s:02}.{milli:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(None), "-");
        assert_eq!(number(Some(f64::NAN)), "-");
        assert_eq!(number(Some(0.0)), "0");
        assert_eq!(number(Some(0.8)), "0.80");
        assert_eq!(number(Some(80.25)), "80.2");
        assert_eq!(number(Some(15230.4)), "15230");
        assert_eq!(count(Some(57.0)), "57");
        assert_eq!(count(None), "-");
        assert_eq!(millis(Some(8.25)), "8.2");
        assert_eq!(millis(Some(2875.5)), "2876");
        assert_eq!(percent(Some(0.0125)), "1.25");
        assert_eq!(percent(Some(0.815)), "81.5");
        assert_eq!(latency(Some(3.25)), "3.2ms");
        assert_eq!(latency(Some(412.0)), "412ms");
        assert_eq!(latency(Some(2875.5)), "2.88s");
        assert_eq!(clock(Some(1_764_780_000_123)), "16:40:00.123");
        assert_eq!(clock(None), "--:--:--.---");
    }
}
