//! No import circle inside any crate: within each crate's `src`, the graph
//! of its top-level modules (an edge wherever one names `crate::other`, or
//! `crate::Name` that the crate root re-exports from `other`) has no cycle.
//! A module and its own submodules count as one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for lib.rs / main.rs).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

/// What the crate root re-exports: `pub use module::{A, B}` and
/// `pub use module::A` give A → module.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for item in root.split(';') {
        let Some(path) = item.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = path.split_once("::") else {
            continue;
        };
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            out.insert(name.to_string(), module.trim().to_string());
        }
    }
    out
}

/// Every module named by `crate::name`, `use crate::{name, ..}` or a
/// re-exported `crate::Name`, outside comment lines.
fn named_modules(text: &str, reexported: &BTreeMap<String, String>) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        reexported.get(&name).cloned().unwrap_or(name)
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            names.extend(group.split(',').map(|g| ident(g.trim())));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| n.starts_with(|c: char| c.is_ascii_lowercase()));
    names
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let root = ["lib.rs", "main.rs"]
        .iter()
        .filter_map(|f| fs::read_to_string(src.join(f)).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let reexported = reexports(&root);
    let mut graph = Graph::new();
    for file in &files {
        let Some(top) = top_module(src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("read a source file");
        let edges = graph.entry(top.clone()).or_default();
        edges.extend(
            named_modules(&text, &reexported)
                .into_iter()
                .filter(|n| *n != top),
        );
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|n| modules.contains(n));
    }
    graph
}

/// One cycle of the graph, if it has one (depth-first search).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
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
            if let Some(cycle) = visit(graph, next, path, done) {
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
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

fn crate_sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("read crates/")
        .flatten()
        .map(|e| e.path().join("src"))
        .collect();
    dirs.extend(
        [
            "node/src",
            "cli/src",
            "simulations/src",
            "tests/testkit/src",
        ]
        .map(|d| root.join(d)),
    );
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    dirs
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let sources = crate_sources();
    assert!(sources.len() >= 10, "found only {sources:?}");
    // The reader sees real edges, plain and through a re-export.
    let state = module_graph(&workspace_root().join("crates/qk-state/src"));
    assert!(state["machine"].contains("command"), "{state:?}");
    assert!(state["approval"].contains("command"), "{state:?}");
    for src in sources {
        if let Some(cycle) = find_cycle(&module_graph(&src)) {
            panic!(
                "{}: modules import each other in a circle: {}",
                src.display(),
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_checker_finds_a_circle() {
    let mut graph = Graph::new();
    graph.insert("a".into(), ["b".to_string()].into());
    graph.insert("b".into(), ["c".to_string()].into());
    graph.insert("c".into(), ["a".to_string()].into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
    let reexported = reexports("pub use command::{Command, Operation};\npub use io::Io;");
    let text = "use crate::{audit::X, io::Y};\n// crate::skipped\nlet z = crate::quorum::now();\nfn f(_: crate::Operation, _: &dyn crate::Io) {}";
    let names = named_modules(text, &reexported);
    assert_eq!(
        names,
        ["audit", "command", "io", "quorum"]
            .map(String::from)
            .into()
    );
}
