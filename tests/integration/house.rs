//! The shape of the house, checked: no import cycle between modules of
//! `src/`, and no file over the size the team agreed on. A cycle is two
//! modules that use each other, directly or around a loop, among the
//! top-level modules or among the children of one module; a child using
//! its parent does not count (that is what children do).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a source file may have, outside its tests.
const MAX_LINES: usize = 600;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `["a", "b"]`; `src/oci/mod.rs` → `["oci"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its tests and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file's code names: `crate::a::b::...` and `super::x`.
fn references(module: &[String], code: &str, known: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let words = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|w| {
                w.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .take_while(|w: &String| !w.is_empty())
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let path = words(&code[i + "crate::".len()..]);
        out.push(longest_known(path, known));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("::") {
            continue; // super::super:: is counted from the first
        }
        let mut rest = &code[i..];
        let mut base: Vec<String> = module.to_vec();
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        base.extend(words(rest));
        out.push(longest_known(base, known));
    }
    out
}

/// The longest prefix of `path` that is a module.
fn longest_known(mut path: Vec<String>, known: &BTreeSet<Vec<String>>) -> Vec<String> {
    while !path.is_empty() && !known.contains(&path) {
        path.pop();
    }
    path
}

#[test]
fn no_module_imports_itself_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs"))
        .map(|f| {
            (
                module_of(&src, f),
                code(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    // Edges between siblings: the modules where two paths part.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, code) in &modules {
        for target in references(module, code, &known) {
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // itself, a child, or an ancestor
            }
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            edges.entry(from).or_default().insert(to);
        }
    }
    let mut cycles = Vec::new();
    for start in edges.keys() {
        // Is `start` reachable from one of its own targets?
        let mut seen = BTreeSet::new();
        let mut stack: Vec<Vec<String>> = edges[start].iter().cloned().collect();
        while let Some(m) = stack.pop() {
            if &m == start {
                cycles.push(start.join("::"));
                break;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules on an import cycle: {cycles:?}\nedges: {edges:#?}"
    );
    // The check sees what it should: the service layer uses the coordinator.
    assert!(edges[&vec!["app".to_string()]].contains(&vec!["coordinator".to_string()]));
}

#[test]
fn every_file_says_what_it_owns_and_stays_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut problems = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.starts_with("//!") {
            problems.push(format!("{}: no //! comment first", f.display()));
        }
        let lines = text.split("#[cfg(test)]").next().unwrap().lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{}: {lines} lines", f.display()));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The files of `src/` outside `dir`, with their code (tests and comments
/// left out).
fn code_outside(dir: &str) -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let inside = src.join(dir);
    files
        .into_iter()
        .filter(|f| !f.starts_with(&inside) && *f != inside.with_extension("rs"))
        .map(|f| {
            let text = code(&std::fs::read_to_string(&f).unwrap());
            (f, text)
        })
        .collect()
}

#[test]
fn only_the_store_removes_its_files() {
    // The store removes its files and tells its one listener (the index,
    // the memory cache); a removal anywhere else would leave them stale.
    let mut problems = Vec::new();
    let files = code_outside("store");
    for (f, code) in &files {
        for call in ["remove_file", "remove_dir"] {
            if code.contains(call) {
                problems.push(format!("{}: {call}", f.display()));
            }
        }
    }
    assert!(problems.is_empty(), "outside src/store/: {problems:#?}");
    // The check reads what it should: the store itself does remove files.
    let store = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/contents.rs"),
    )
    .unwrap();
    assert!(code(&store).contains("remove_file"));
    assert!(files.len() > 50, "{} files outside src/store/", files.len());
}

/// Folders whose children never use their parent's own items: every arrow
/// among them points down, from the parent's file (declarations and
/// re-exports) to its children and from child to child, never back up.
const NO_CLIMBS: &[&str] = &[
    "coordinator",
    "store",
    "lifecycle",
    "oci",
    "cluster",
    "routing",
    "listener",
];

/// Where `code`, the code of a child of `parent`, names an item of its
/// parent's own file: `super::Item`, `super::function(`, `super::{…Item…}`,
/// or `crate::parent::Item` (a parent's re-export is its own item too).
fn climbs(parent: &str, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let prefixes = ["super::".to_string(), format!("crate::{parent}::")];
    for prefix in &prefixes {
        for (i, _) in code.match_indices(prefix.as_str()) {
            let rest = &code[i + prefix.len()..];
            if code[..i].ends_with("::") || rest.starts_with("super::") {
                continue;
            }
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let word: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let after = &name[word.len()..];
                let item = word.starts_with(|c: char| c.is_ascii_uppercase())
                    || (!word.is_empty() && after.starts_with('('));
                if item {
                    out.push(format!("{prefix}{word}"));
                }
            }
        }
    }
    out
}

#[test]
fn no_arrow_runs_back_up_to_a_parent() {
    // The check sees a climb when there is one.
    assert_eq!(
        climbs("coordinator", "use super::Coordinator;"),
        ["super::Coordinator"]
    );
    assert_eq!(
        climbs("coordinator", "use super::{fill, Coordinator};").len(),
        1
    );
    assert_eq!(
        climbs("store", "let s = crate::store::FsStore::open(p);").len(),
        1
    );
    assert!(climbs("coordinator", "use super::fill::{self, Opened};").is_empty());

    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for parent in NO_CLIMBS {
        for entry in std::fs::read_dir(src.join(parent)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let code = code(&std::fs::read_to_string(&path).unwrap());
            for climb in climbs(parent, &code) {
                problems.push(format!("{}: {climb}", path.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "children using their parent's items: {problems:#?}"
    );
}

#[test]
fn every_file_in_deploy_is_in_the_operations_table() {
    // docs/operations.md's table of deploy/ names every file, so a new
    // manifest is not shipped unexplained.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    walk(&root.join("deploy"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(root.join("deploy"))
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|f| !table.contains(&format!("`{f}`")))
        .collect();
    assert!(files.len() > 10, "{} files in deploy/", files.len());
    assert!(
        missing.is_empty(),
        "not in docs/operations.md's deploy/ table: {missing:?}"
    );
}
