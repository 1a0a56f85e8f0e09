//! The trainer's source tree reads one way: no file under `trainer/src` imports a file that
//! imports it back.
//!
//! A file's module path comes from its place in the tree (`data/mod.rs` is `data`,
//! `data/shapes.rs` is `data::shapes`, `lib.rs` the crate root); a `mod.rs` and each of its
//! children are separate files. An import is any path in the file's code (not its comments or
//! strings) that starts at `crate::`, `super::`, `self::` or one of the file's own child
//! modules, in a `use` item or in an expression or type. A path is credited to the file that
//! defines it: the longest prefix naming a file, followed through `pub use` re-exports (so
//! `crate::Config` is `config.rs`, not `lib.rs`). A `mod` declaration is not an import, and
//! neither is a `pub use` whose names the file does not itself use (a facade for readers
//! outside, as `lib.rs`'s).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Pairs of files that still import each other, each to be removed by the change named beside
/// it. An entry that no longer forms a cycle fails the check too, so this list only shrinks.
const ALLOWED: &[(&str, &str, &str)] = &[];

#[test]
fn no_trainer_file_imports_a_file_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_tree(&src);
    assert!(
        sources.len() > 20,
        "read {} files under {}",
        sources.len(),
        src.display()
    );
    let found = cycles(&sources);
    let allowed: BTreeSet<(String, String)> = ALLOWED.iter().map(|(a, b, _)| ordered(a, b)).collect();
    let new: Vec<_> = found.difference(&allowed).collect();
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        new.is_empty() && stale.is_empty(),
        "files importing each other (each must go one way): {new:?}\n\
         allowed pairs that no longer import each other (remove them from ALLOWED): {stale:?}"
    );
}

#[test]
fn a_cycle_is_found_through_each_kind_of_path() {
    let tree = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    };
    let lib = ("lib.rs", "pub mod a; pub mod b; pub mod d; pub use a::A;");
    // `use crate::` one way, an expression path back.
    let t = tree(&[
        lib,
        ("a.rs", "use crate::b::B; pub struct A;"),
        ("b.rs", "pub struct B; fn f() { let _ = crate::a::A; }"),
    ]);
    assert_eq!(cycles(&t), [ordered("a.rs", "b.rs")].into());
    // Through the root's re-export (`crate::A` is `a.rs`), in a grouped use.
    let t = tree(&[
        lib,
        ("a.rs", "use crate::{b::{self, B}}; pub struct A;"),
        ("b.rs", "use crate::{A, d}; pub struct B;"),
        ("d.rs", ""),
    ]);
    assert_eq!(cycles(&t), [ordered("a.rs", "b.rs")].into());
    // A child's `super::` against its parent's use of the child.
    let t = tree(&[
        ("lib.rs", "pub mod d;"),
        ("d/mod.rs", "mod x; pub struct D; fn f() { x::g(); }"),
        ("d/x.rs", "use super::D; pub fn g() {}"),
    ]);
    assert_eq!(cycles(&t), [ordered("d/mod.rs", "d/x.rs")].into());
    // Siblings through `super::sibling`, one of them inside a test module.
    let t = tree(&[
        ("lib.rs", "pub mod d;"),
        ("d/mod.rs", "mod x; mod y;"),
        ("d/x.rs", "use super::y::Y; pub struct X;"),
        (
            "d/y.rs",
            "pub struct Y; #[cfg(test)] mod tests { use super::super::x::X; }",
        ),
    ]);
    assert_eq!(cycles(&t), [ordered("d/x.rs", "d/y.rs")].into());
}

#[test]
fn comments_strings_facades_and_mod_declarations_are_not_imports() {
    let t: BTreeMap<String, String> = [
        // `lib.rs` declares and re-exports; `a.rs` mentions `b` only in text.
        ("lib.rs", "pub mod a; pub mod b; pub use a::A; pub use b::B;"),
        (
            "a.rs",
            "//! See [`crate::b::B`].\n/* crate::b::B */ pub struct A;\n\
             fn f() -> &'static str { let _c = 'x'; \"crate::b::B\" }\n\
             fn g() -> &'static str { r#\"use crate::b;\"# }",
        ),
        ("b.rs", "use crate::A; pub struct B;"),
        // A parent that only re-exports its child for readers outside.
        ("c/mod.rs", "mod x; pub use x::X;"),
        (
            "c/x.rs",
            "use super::super::A; pub struct X; fn h() { let _ = super::X2; }",
        ),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    assert!(cycles(&t).is_empty(), "{:?}", cycles(&t));
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Every `.rs` file under `dir`, by path relative to it (with `/`), with its text.
fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p: PathBuf = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap();
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(key, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The module path of a file: `lib.rs` → `[]`, `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(file: &str) -> Vec<String> {
    let mut m: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if m == ["lib"] || m.last().is_some_and(|l| l == "mod") {
        m.pop();
    }
    m
}

/// The unordered pairs of files that import each other.
fn cycles(sources: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let modules: BTreeMap<Vec<String>, String> = sources.keys().map(|f| (module_of(f), f.clone())).collect();
    let parsed: BTreeMap<&String, Parsed> = sources
        .iter()
        .map(|(f, s)| (f, parse(&module_of(f), s, &modules)))
        .collect();
    let resolve = |path: &[String]| -> Option<&String> {
        let mut path = path.to_vec();
        for _ in 0..16 {
            let k = (0..=path.len())
                .rev()
                .find(|&k| modules.contains_key(&path[..k]))?;
            let file = &modules[&path[..k]];
            match path.get(k).and_then(|name| parsed[file].reexports.get(name)) {
                Some(target) => path = [target.clone(), path[k + 1..].to_vec()].concat(),
                None => return Some(file),
            }
        }
        None
    };
    let mut edges: BTreeSet<(&String, &String)> = BTreeSet::new();
    for (file, p) in &parsed {
        for path in &p.imports {
            if let Some(target) = resolve(path) {
                if target != *file {
                    edges.insert((file, target));
                }
            }
        }
    }
    edges
        .iter()
        .filter(|(a, b)| edges.contains(&(*b, *a)))
        .map(|(a, b)| ordered(a, b))
        .collect()
}

/// What one file imports (absolute module paths, possibly ending in an item name) and what it
/// re-exports (name → absolute path).
struct Parsed {
    imports: Vec<Vec<String>>,
    reexports: BTreeMap<String, Vec<String>>,
}

/// One `use` leaf: the path as written and the name it binds (`None` for a glob).
struct UseLeaf {
    path: Vec<String>,
    name: Option<String>,
}

fn parse(module: &[String], text: &str, modules: &BTreeMap<Vec<String>, String>) -> Parsed {
    let toks = tokens(&strip(text));
    let children: BTreeSet<&str> = modules
        .keys()
        .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        .map(|m| m[module.len()].as_str())
        .collect();
    let mut out = Parsed {
        imports: vec![],
        reexports: BTreeMap::new(),
    };
    // Inline modules (`mod tests { … }`): their names and the brace depth they close at.
    let (mut inline, mut depth): (Vec<(String, usize)>, usize) = (vec![], 0);
    // `pub use` leaves, decided once the whole file has been read.
    let mut facades: Vec<(Vec<String>, UseLeaf)> = vec![];
    let mut used: BTreeSet<&str> = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let absolute = |path: &[String]| -> Option<Vec<String>> {
            let first = path.first()?.as_str();
            let (mut base, mut rest) = match first {
                "crate" => (vec![], &path[1..]),
                "self" => (here.clone(), &path[1..]),
                "super" => (here.clone(), path),
                _ if inline.is_empty() && children.contains(first) => (here.clone(), path),
                _ => return None,
            };
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            let mut abs: Vec<String> = base.into_iter().chain(rest.iter().cloned()).collect();
            if abs.last().is_some_and(|s| s == "self") {
                abs.pop();
            }
            Some(abs)
        };
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|s| s == "{") => {
                inline.push((toks[i + 1].clone(), depth + 1));
                i += 2;
                continue;
            }
            "use" => {
                let public = i > 0 && (toks[i - 1] == "pub" || toks[i - 1] == ")");
                let (leaves, next) = use_tree(&toks, i + 1, vec![]);
                for leaf in leaves {
                    if let Some(abs) = absolute(&leaf.path) {
                        match (&leaf.name, public && inline.is_empty()) {
                            (Some(name), true) => {
                                out.reexports.insert(name.clone(), abs.clone());
                                facades.push((abs, leaf));
                            }
                            _ => out.imports.push(abs),
                        }
                    }
                }
                i = next;
                continue;
            }
            _ if is_ident(t)
                && (i == 0 || toks[i - 1] != "::")
                && toks.get(i + 1).is_some_and(|s| s == "::") =>
            {
                let mut path = vec![t.to_string()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|s| s == "::") && toks.get(j + 1).is_some_and(|s| is_ident(s)) {
                    path.push(toks[j + 1].clone());
                    j += 2;
                }
                if let Some(abs) = absolute(&path) {
                    out.imports.push(abs);
                }
                used.extend(toks[i..j].iter().map(String::as_str));
                i = j;
                continue;
            }
            _ if is_ident(t) => {
                used.insert(t);
            }
            _ => {}
        }
        i += 1;
    }
    // A re-export the file itself uses is an import too.
    for (abs, leaf) in facades {
        if leaf.name.as_deref().is_some_and(|n| used.contains(n)) {
            out.imports.push(abs);
        }
    }
    out
}

/// The leaves of the use tree starting at `toks[i]` under `prefix`, and the index after it
/// (past the `;` at the top level).
fn use_tree(toks: &[String], mut i: usize, prefix: Vec<String>) -> (Vec<UseLeaf>, usize) {
    let mut path = prefix;
    let mut leaves = vec![];
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while toks.get(i).is_some_and(|s| s != "}") {
                    let (sub, next) = use_tree(toks, i, path.clone());
                    leaves.extend(sub);
                    i = next;
                    if toks.get(i).is_some_and(|s| s == ",") {
                        i += 1;
                    }
                }
                i += 1;
                break;
            }
            Some("*") => {
                leaves.push(UseLeaf {
                    path: path.clone(),
                    name: None,
                });
                i += 1;
                break;
            }
            Some("::") => i += 1,
            Some(s) if is_ident(s) => {
                path.push(s.to_string());
                i += 1;
                if toks.get(i).is_some_and(|s| s == "::") {
                    continue;
                }
                let mut name = if s == "self" {
                    path.iter().rev().nth(1).cloned()
                } else {
                    Some(s.to_string())
                };
                if toks.get(i).is_some_and(|s| s == "as") {
                    name = toks.get(i + 1).cloned();
                    i += 2;
                }
                leaves.push(UseLeaf {
                    path: path.clone(),
                    name,
                });
                break;
            }
            _ => break,
        }
    }
    // At the top level, skip to the end of the item.
    if toks.get(i).is_some_and(|s| s == ";") {
        i += 1;
    }
    (leaves, i)
}

fn is_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(s: &str) -> Vec<String> {
    let b: Vec<char> = s.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// `text` without comments, string literals and character literals (lifetimes stay).
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let word = |i: usize| i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && !word(i) && {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while b.get(j) == Some(&'#') {
                j += 1;
            }
            b.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let hashes = (j..).take_while(|&k| b.get(k) == Some(&'#')).count();
            j += hashes + 1;
            while j < b.len() && !(b[j] == '"' && (1..=hashes).all(|h| b.get(j + h) == Some(&'#'))) {
                j += 1;
            }
            i = j + 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' || (c == 'b' && next == Some('"') && !word(i)) {
            i += if c == 'b' { 2 } else { 1 };
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            i += 1;
            while i < b.len() && b[i] != '\'' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}
