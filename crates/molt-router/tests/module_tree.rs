//! molt-router's source files form a tree: no file depends, directly or through others, on a
//! file that depends on it. When two files need each other, the part both need belongs in a
//! third file (STYLE.md).
//!
//! A file depends on another when it names a module the other file holds: a path starting
//! with `crate::`, `super::` or `self::` (in a `use` or in code), or with the name of a child
//! module, resolved to the deepest module it names. A `mod child;` declaration is a
//! dependency too: a parent is made of its children, so a child that used something its
//! parent defines (`crate::Router` re-exported from `lib.rs`, `super::Pool` from a `mod.rs`)
//! would close a circle. Comments, strings and char literals are left out first, so a doc
//! link is not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A module path below the crate root (`[]` is the root, `["upstream", "pool"]` is
/// `crate::upstream::pool`).
type ModulePath = Vec<String>;

#[test]
fn molt_router_source_files_import_each_other_in_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_sources(&src, &src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());

    let graph = dependencies(&files);
    // Shown with `--nocapture`: the whole tree, as the check sees it.
    println!("{}", describe(&graph));
    // Every file but the root is declared by its parent: the scanner sees `mod` items, so it
    // sees the paths beside them too.
    for file in files.keys().filter(|file| *file != "lib.rs") {
        assert!(
            graph.values().any(|targets| targets.contains(file)),
            "no file declares or uses {file}: the scanner missed its `mod` item"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "molt-router's files import each other in a circle: {}\n\
             move what they share into a third file both use\n\nall dependencies:\n{}",
            cycle.join(" → "),
            describe(&graph)
        );
    }
}

#[test]
fn the_check_sees_circles_through_parents_and_siblings_and_ignores_comments() {
    let sources = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(file, text)| (file.to_string(), text.to_string()))
            .collect()
    };
    let siblings = sources(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::Thing;\n"),
        ("b/mod.rs", "mod c;\npub use c::Thing;\n"),
        (
            "b/c.rs",
            "pub struct Thing;\nfn f() { super::super::a::g(); }\n",
        ),
    ]);
    assert_eq!(
        find_cycle(&dependencies(&siblings)),
        Some(vec![
            "a.rs".into(),
            "b/mod.rs".into(),
            "b/c.rs".into(),
            "a.rs".into()
        ])
    );

    let parent = sources(&[
        ("lib.rs", "mod a;\npub struct Root;\n"),
        ("a.rs", "use crate::{Root as R};\n"),
    ]);
    assert!(find_cycle(&dependencies(&parent)).is_some());

    let tree = sources(&[
        (
            "lib.rs",
            "mod a;\nmod b;\npub use a::A; // use crate::a::nothing\n",
        ),
        (
            "a.rs",
            "/* crate::b */ use crate::b::{self, B};\n\
             const S: &str = \"super::x crate::lib\";\nfn f<'a>(c: char) -> bool { c == '\"' }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        ("b.rs", "pub struct B;\n"),
    ]);
    let graph = dependencies(&tree);
    assert_eq!(find_cycle(&graph), None);
    assert_eq!(graph["a.rs"], BTreeSet::from(["b.rs".to_string()]));
    assert_eq!(
        graph["lib.rs"],
        BTreeSet::from(["a.rs".to_string(), "b.rs".to_string()])
    );
}

/// Reads every `.rs` file below `dir`, keyed by its path relative to `src` (`/`-separated).
fn read_sources(src: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_sources(src, &path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(src).expect("below src");
            let key = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            files.insert(key, text);
        }
    }
}

/// The module a source file holds: `lib.rs` is the root, `a.rs` and `a/mod.rs` are `a`.
fn module_of(file: &str) -> ModulePath {
    let trimmed = file.trim_end_matches(".rs");
    let mut parts: ModulePath = trimmed.split('/').map(str::to_owned).collect();
    if parts
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        parts.pop();
    }
    parts
}

/// file -> the other files it depends on.
fn dependencies(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let scanned: BTreeMap<&String, Vec<Token>> = files
        .iter()
        .map(|(file, text)| (file, tokens(&strip(text))))
        .collect();
    // Every module (file or inline) and the file that holds it.
    let mut holder: BTreeMap<ModulePath, String> = files
        .keys()
        .map(|file| (module_of(file), file.clone()))
        .collect();
    for (file, tokens) in &scanned {
        for module in inline_modules(tokens, &module_of(file)) {
            holder.entry(module).or_insert_with(|| (*file).clone());
        }
    }
    let mut graph = BTreeMap::new();
    for (file, tokens) in &scanned {
        let mut targets = BTreeSet::new();
        let mut note = |module: ModulePath| {
            if let Some(target) = holder.get(&module) {
                if target != *file {
                    targets.insert(target.clone());
                }
            }
        };
        let mut i = 0;
        let mut scope = Scope::new(module_of(file));
        while i < tokens.len() {
            let current = scope.current();
            if let Some(child) = declared_child(tokens, i) {
                let mut module = current.clone();
                module.push(child);
                note(module);
                i += 3;
                continue;
            }
            let starts_path = match (&tokens[i], tokens.get(i + 1)) {
                (Token::Ident(word), Some(Token::ColonColon)) => {
                    let after_path = i > 0 && tokens[i - 1] == Token::ColonColon;
                    !after_path
                        && (matches!(word.as_str(), "crate" | "super" | "self")
                            || holder.contains_key(&child_of(&current, word)))
                }
                _ => false,
            };
            if starts_path {
                let (paths, next) = use_tree(tokens, i, Vec::new());
                for path in paths {
                    note(resolve(&current, &path, &holder));
                }
                i = next;
                continue;
            }
            scope.step(tokens, i);
            i += 1;
        }
        graph.insert((*file).clone(), targets);
    }
    graph
}

fn child_of(module: &[String], name: &str) -> ModulePath {
    let mut child = module.to_vec();
    child.push(name.to_owned());
    child
}

/// `mod name;` at `i`: the child module's name.
fn declared_child(tokens: &[Token], i: usize) -> Option<String> {
    match (&tokens[i], tokens.get(i + 1), tokens.get(i + 2)) {
        (Token::Ident(kw), Some(Token::Ident(name)), Some(Token::Punct(';'))) if kw == "mod" => {
            Some(name.clone())
        }
        _ => None,
    }
}

/// The deepest module `path` names, seen from `current`.
fn resolve(
    current: &[String],
    path: &[String],
    modules: &BTreeMap<ModulePath, String>,
) -> ModulePath {
    let mut base: ModulePath = current.to_vec();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        Some("super") => {
            while rest.first().is_some_and(|segment| segment == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    for segment in rest {
        let deeper = child_of(&base, segment);
        if !modules.contains_key(&deeper) {
            break;
        }
        base = deeper;
    }
    base
}

/// The paths of a use tree (or of a plain path in code) starting at `i`, each prefixed with
/// `prefix`; and where the tree ends.
fn use_tree(tokens: &[Token], mut i: usize, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    loop {
        match tokens.get(i) {
            Some(Token::Punct('{')) => {
                let mut paths = Vec::new();
                i += 1;
                while let Some(token) = tokens.get(i) {
                    match token {
                        Token::Punct('}') => return (paths, i + 1),
                        Token::Punct(',') => i += 1,
                        _ => {
                            let (more, next) = use_tree(tokens, i, prefix.clone());
                            paths.extend(more);
                            i = next.max(i + 1);
                        }
                    }
                }
                return (paths, i);
            }
            Some(Token::Ident(word)) if word == "self" && !prefix.is_empty() => {
                return (vec![prefix], i + 1);
            }
            Some(Token::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
                if tokens.get(i) == Some(&Token::ColonColon) {
                    i += 1;
                    continue;
                }
                return (vec![prefix], i);
            }
            // `*`, or anything else: the path so far.
            _ => return (vec![prefix], i),
        }
    }
}

/// Inline modules (`mod tests { … }`) entered and left while scanning a file.
struct Scope {
    file_module: ModulePath,
    /// Open inline modules: name and the brace depth inside them.
    inline: Vec<(String, usize)>,
    depth: usize,
    /// `mod name {` was just seen: the next `{` opens it.
    opening: Option<String>,
}

impl Scope {
    fn new(file_module: ModulePath) -> Self {
        Self {
            file_module,
            inline: Vec::new(),
            depth: 0,
            opening: None,
        }
    }

    fn current(&self) -> ModulePath {
        let mut module = self.file_module.clone();
        module.extend(self.inline.iter().map(|(name, _)| name.clone()));
        module
    }

    /// Follows the token at `i`; returns the inline module it opens, if it opens one.
    fn step(&mut self, tokens: &[Token], i: usize) -> Option<ModulePath> {
        match &tokens[i] {
            Token::Ident(kw) if kw == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Punct('{'))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    self.opening = Some(name.clone());
                }
                None
            }
            Token::Punct('{') => {
                self.depth += 1;
                let name = self.opening.take()?;
                self.inline.push((name, self.depth));
                Some(self.current())
            }
            Token::Punct('}') => {
                if self
                    .inline
                    .last()
                    .is_some_and(|(_, depth)| *depth == self.depth)
                {
                    self.inline.pop();
                }
                self.depth = self.depth.saturating_sub(1);
                None
            }
            _ => None,
        }
    }
}

/// The inline modules of a file (`mod tests { … }`).
fn inline_modules(tokens: &[Token], file_module: &[String]) -> Vec<ModulePath> {
    let mut scope = Scope::new(file_module.to_vec());
    (0..tokens.len())
        .filter_map(|i| scope.step(tokens, i))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    ColonColon,
    Punct(char),
}

/// Rust source as identifiers, `::` and single punctuation characters.
fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::ColonColon);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// `text` without comments, and with the contents of string and char literals blanked.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
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
        } else if !prev_ident && raw_string_start(&chars, i).is_some() {
            let (hashes, quote) = raw_string_start(&chars, i).expect("checked");
            i = quote + 1;
            let closing: Vec<char> = format!("\"{}", "#".repeat(hashes)).chars().collect();
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                i += 1;
            }
            i += closing.len();
            out.push_str("\"\"");
        } else if c == '"' || (!prev_ident && matches!(c, 'b' | 'c') && next == Some('"')) {
            i += if c == '"' { 1 } else { 2 };
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime or a label.
            if next == Some('\\') {
                // Past the quote, the backslash and the escaped character.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `i`, `r"`, `r#"`, `br#"` …: the number of `#` and where the opening quote is.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut at = i;
    if matches!(chars.get(at), Some('b' | 'c')) {
        at += 1;
    }
    if chars.get(at) != Some(&'r') {
        return None;
    }
    at += 1;
    let hashes = chars[at..].iter().take_while(|&&c| c == '#').count();
    at += hashes;
    (chars.get(at) == Some(&'"')).then_some((hashes, at))
}

/// A circle of files (the first file repeated at the end), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        file: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(file) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|seen| seen == file).expect("open");
                let mut cycle = path[from..].to_vec();
                cycle.push(file.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(file.to_owned(), Mark::Open);
        path.push(file.to_owned());
        for target in graph.get(file).into_iter().flatten() {
            if let Some(cycle) = visit(target, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(file.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for file in graph.keys() {
        if let Some(cycle) = visit(file, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn describe(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    graph
        .iter()
        .map(|(file, targets)| {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            format!("  {file} → {}\n", targets.join(", "))
        })
        .collect()
}
