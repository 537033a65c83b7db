//! The request path stays layered: no module of this crate imports, directly or through others,
//! a module that imports it back, and no source file grows past 600 lines. A circle is how a
//! policy ends up knowing the whole gateway (the request path used to be ten files in one); this
//! fails on the first `use` that closes one, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// Module name of a source file: `pipeline/route.rs` → `pipeline::route`; `body/mod.rs` → `body`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate modules `text` refers to (`crate::a::b` and `super::b`), resolved to known modules.
fn references(text: &str, module: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    // Only code: skip comments and everything from the unit tests on.
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for (i, _) in line.match_indices(prefix) {
                let path: String = line[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut candidate = base.to_string();
                let mut best = None;
                for seg in path.split("::").filter(|s| !s.is_empty()) {
                    if !candidate.is_empty() {
                        candidate.push_str("::");
                    }
                    candidate.push_str(seg);
                    if known.contains(&candidate) {
                        best = Some(candidate.clone());
                    }
                }
                if let Some(m) =
                    best.filter(|m| m != module && !module.starts_with(&format!("{m}::")))
                {
                    out.insert(m);
                }
            }
        }
    }
    out
}

#[test]
fn no_import_circles_and_no_long_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    let mut texts = BTreeMap::new();
    let mut long = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).expect("read");
        if text.lines().count() > MAX_LINES {
            long.push(format!("{} ({} lines)", p.display(), text.lines().count()));
        }
        texts.insert(module_of(&src, p), text);
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
    let known: BTreeSet<String> = texts.keys().cloned().collect();
    let graph: BTreeMap<&str, BTreeSet<String>> = texts
        .iter()
        .filter(|(m, _)| !m.is_empty() && !m.ends_with("_tests"))
        .map(|(m, t)| (m.as_str(), references(t, m, &known)))
        .collect();
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<&'a str, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            let mut circle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let circle = visit(m, &graph, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "import circle: {}",
            circle.unwrap().join(" -> ")
        );
    }
}
