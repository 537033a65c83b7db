//! Reading what Prometheus is given and answers: the metric selectors of a PromQL expression,
//! the rules it loaded, and whether a sample's value is a number.

use serde_json::Value;

pub fn finite(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// The metric selectors of a PromQL expression: each metric name with its label matchers
/// (`name{...}`), or the bare name. Skips strings, range and offset durations, numbers,
/// function and aggregation names, and label lists (`by (...)`, `ignoring (...)`, ...).
pub fn selectors(expr: &str) -> Vec<String> {
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "inf",
        "nan",
        "atan2",
    ];
    let b = expr.as_bytes();
    let skip_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // The index just past the `close` matching the opener at `i`, outside strings.
    let past = |mut i: usize, close: u8| {
        while i < b.len() && b[i] != close {
            i = if matches!(b[i], b'"' | b'\'' | b'`') {
                past_string(b, i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = past_string(b, i);
        } else if c == b'[' {
            i = past(i, b']');
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let j = skip_space(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if b.get(j) == Some(&b'(') {
                    i = past(j, b')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || b.get(j) == Some(&b'(') {
                // an operator, function or aggregation
            } else if b.get(j) == Some(&b'{') {
                let end = past(j, b'}');
                out.push(format!("{word}{}", &expr[j..end]));
                i = end;
            } else {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The index just past the string literal opening at `i`.
fn past_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != quote {
        j += if b[j] == b'\\' && quote != b'`' { 2 } else { 1 };
    }
    j + 1
}

#[test]
fn selectors_are_found_and_label_lists_skipped() {
    let expr = r#"sum by (route, le) (rate(a_bucket{code=~"5..", x="}"}[5m])) / ignoring (le) group_left b offset 15m > 0.5 and on (pool) c:d:e unless count(f)"#;
    assert_eq!(
        selectors(expr),
        [r#"a_bucket{code=~"5..", x="}"}"#, "b", "c:d:e", "f"]
    );
}

pub struct LoadedRule {
    pub name: String,
    pub kind: String,
    pub query: String,
    pub health: String,
    pub file: String,
}

pub fn loaded_rules(v: &Value) -> Vec<LoadedRule> {
    let mut out = Vec::new();
    for g in v["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            out.push(LoadedRule {
                name: s("name"),
                kind: s("type"),
                query: s("query"),
                health: s("health"),
                file: g["file"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out
}
