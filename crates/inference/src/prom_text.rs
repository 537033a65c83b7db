//! A small Prometheus text-format (0.0.4) parser for model-server `/metrics` pages.
//!
//! We need a handful of gauges from pages of a few hundred lines, ten to twenty times a second
//! per endpoint, so the parser borrows from the page, allocates only for the label list and for
//! escaped label values, and skips `#` lines. It is strict about structure (a bad line fails the
//! whole page, which the scraper reports as a failed scrape, rather than letting a half-read page
//! look like an idle server) and never panics: it only slices at positions it found by scanning
//! ASCII delimiters.

use std::borrow::Cow;
use std::fmt;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// A malformed line (1-based) and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parse a whole page. Comment and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?);
    }
    Ok(out)
}

fn is_name_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Result<Sample<'_>, &'static str> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && is_name_char(bytes[i], i == 0) {
        i += 1;
    }
    if i == 0 {
        return Err("expected a metric name");
    }
    let name = &line[..i];
    let mut labels = Vec::new();
    if bytes.get(i) == Some(&b'{') {
        i += 1;
        loop {
            while bytes.get(i) == Some(&b' ') {
                i += 1;
            }
            if bytes.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let start = i;
            while i < bytes.len() && is_name_char(bytes[i], i == start) {
                i += 1;
            }
            if i == start {
                return Err("expected a label name");
            }
            let key = &line[start..i];
            if bytes.get(i) != Some(&b'=') || bytes.get(i + 1) != Some(&b'"') {
                return Err("expected =\" after label name");
            }
            i += 2;
            let (value, next) = label_value(line, i)?;
            labels.push((key, value));
            i = next;
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err("expected , or } after label value"),
            }
        }
    }
    let rest = &line[i..];
    if !rest.starts_with([' ', '\t']) {
        return Err("expected whitespace before the value");
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = parse_value(value).ok_or("value is not a number")?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "timestamp is not an integer")?;
    }
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A quoted label value starting after the opening quote; returns it and the index after the
/// closing quote.
fn label_value(line: &str, start: usize) -> Result<(Cow<'_, str>, usize), &'static str> {
    let bytes = line.as_bytes();
    let mut i = start;
    let mut owned: Option<String> = None;
    let mut run = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let value = match owned {
                    Some(mut s) => {
                        s.push_str(&line[run..i]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(&line[start..i]),
                };
                return Ok((value, i + 1));
            }
            b'\\' => {
                let s = owned.get_or_insert_with(String::new);
                s.push_str(&line[run..i]);
                match bytes.get(i + 1) {
                    Some(b'\\') => s.push('\\'),
                    Some(b'"') => s.push('"'),
                    Some(b'n') => s.push('\n'),
                    _ => return Err("bad escape in label value"),
                }
                i += 2;
                run = i;
            }
            _ => i += 1,
        }
    }
    Err("unterminated label value")
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_vllm_page() {
        let page = "# HELP vllm:num_requests_running Number of requests.\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{model_name=\"m\"} 7.0\n\
            vllm:cache_config_info{model_name=\"m\",block_size=\"16\",num_gpu_blocks=\"26900\"} 1\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} 1.7e9\n\
            weird{l=\"a\\\"b\\\\c\\n\"} +Inf 1700000000\n\
            \n\
            up 1\n";
        let s = parse(page).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!((s[0].name, s[0].value), ("vllm:num_requests_running", 7.0));
        assert_eq!(s[1].label("num_gpu_blocks"), Some("26900"));
        assert_eq!(s[2].label("running_lora_adapters"), Some("a,b"));
        assert_eq!(s[2].value, 1.7e9);
        assert_eq!(s[3].label("l"), Some("a\"b\\c\n"));
        assert!(s[3].value.is_infinite());
        assert_eq!(s[4].labels.len(), 0);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x 2 3 4",
            "x abc",
            "x{a=\"\\q\"} 1",
            "{a=\"1\"} 1",
            "x",
            "x{a=\"1\"}2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("ok 1\nbad\n").unwrap_err().line, 2);
    }

    proptest! {
        #[test]
        fn never_panics(text in "[a-z_:{}=\",.\\\\ 0-9#\n+-]{0,120}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_any_string(text in any::<String>()) {
            let _ = parse(&text);
        }
    }
}
