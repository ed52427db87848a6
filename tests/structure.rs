//! The shape of the code, checked: the rules a reader relies on to walk it (docs/tour.md).
//!
//! - no two modules import each other in a loop, among the top-level modules or among the
//!   files of one folder;
//! - only `src/client/` names tiny_http and only `src/upstream/` names ureq (plus the one
//!   re-export of the `http` crate in `src/message/mod.rs`), so that each crate sits behind one
//!   boundary;
//! - `src/forward/` names neither;
//! - no file in `src/` is over 400 lines;
//! - nothing in the repository points outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 400;

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

struct SourceFile {
    /// `forward/retry`, `client/mod`, `lib`.
    name: String,
    /// The code with comment lines left out.
    code: String,
    lines: usize,
}

fn sources() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            let name = path
                .strip_prefix(&src)
                .unwrap()
                .with_extension("")
                .to_string_lossy()
                .into_owned();
            let code = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            SourceFile {
                name,
                code,
                lines: text.lines().count(),
            }
        })
        .collect()
}

/// The identifiers after each `prefix` in `code` (`crate::client::Exchange` gives `client`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let first = &rest[..end];
            let after = rest[end..].strip_prefix("::").unwrap_or("");
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (first, &after[..end])
        })
        .collect()
}

/// The top-level module a file belongs to (`client/exchange` gives `client`).
fn top_level(name: &str) -> &str {
    name.split('/').next().unwrap()
}

/// A cycle in `graph`, if there is one, as the list of its nodes.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_import_each_other_in_a_loop() {
    let files = sources();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut within: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = top_level(&file.name);
        if module == "lib" || module == "main" {
            continue;
        }
        for (first, second) in paths_after(&file.code, "crate::") {
            let target = if first.starts_with(char::is_uppercase) {
                "lib"
            } else {
                first
            };
            if target != module {
                top.entry(module.into()).or_default().insert(target.into());
            } else if let Some((folder, _)) = file.name.split_once('/') {
                // `crate::client::relay::Answer` from inside client/: a sibling file.
                if !second.is_empty() && !second.starts_with(char::is_uppercase) {
                    within
                        .entry(file.name.clone())
                        .or_default()
                        .insert(format!("{folder}/{second}"));
                }
            }
        }
        if let Some((folder, _)) = file.name.split_once('/') {
            for (first, _) in paths_after(&file.code, "super::") {
                let sibling = if first.is_empty() || first.starts_with(char::is_uppercase) {
                    format!("{folder}/mod")
                } else {
                    format!("{folder}/{first}")
                };
                if sibling != file.name && !file.name.ends_with("/mod") {
                    within.entry(file.name.clone()).or_default().insert(sibling);
                }
            }
        }
    }
    assert!(
        top.values().flatten().all(|target| target != "lib"),
        "a module reaches back into lib.rs: {top:?}"
    );
    assert_eq!(find_cycle(&top), None, "top-level modules import in a loop");
    assert_eq!(
        find_cycle(&within),
        None,
        "files of one folder import in a loop"
    );
    // The checker sees the edges it should.
    assert!(top["forward"].contains("balancer") && top["forward"].contains("upstream"));
    assert!(within["forward/tunnelling"].contains("forward/retry"));
}

#[test]
fn each_crate_sits_behind_one_boundary() {
    for file in sources() {
        let names = |krate: &str| file.code.contains(&format!("{krate}::"));
        let in_client = file.name.starts_with("client/");
        let in_upstream = file.name.starts_with("upstream/");
        assert!(
            in_client || !names("tiny_http"),
            "{} names tiny_http; only src/client/ may",
            file.name
        );
        let http_reexport = file.name == "message/mod";
        assert!(
            in_upstream || http_reexport || !names("ureq"),
            "{} names ureq; only src/upstream/ may",
            file.name
        );
        if file.name.starts_with("forward/") {
            assert!(
                !names("tiny_http") && !names("ureq") && !names("http"),
                "{} names an HTTP library's types; the story uses tinylb's own",
                file.name
            );
        }
    }
}

#[test]
fn no_source_file_is_over_400_lines() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|file| file.lines > MAX_LINES)
        .map(|file| format!("{} ({} lines)", file.name, file.lines))
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn nothing_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src", "tests", "docs", "benches", "examples", "scripts", ".ci",
    ] {
        if root.join(dir).exists() {
            collect_text_files(&root.join(dir), &mut files);
        }
    }
    files.extend(["README.md", "Makefile", "Cargo.toml"].map(|f| root.join(f)));
    // Spelled in two pieces so that this file does not match itself.
    let outside = ["../", "shared/"].concat();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains(&outside) && !text.contains(&["shared", "/crates.md"].concat()),
            "{} points outside the repository",
            path.display()
        );
    }
}

fn collect_text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_text_files(&path, out);
        } else if path.extension().is_some_and(|e| {
            ["rs", "md", "py", "sh", "mjs", "java", "toml"]
                .iter()
                .any(|x| e == *x)
        }) {
            out.push(path);
        }
    }
}
