//! The layout check: reads every file under `src/` (the `crate::`,
//! `super::`, `self::` and child-module paths in its code), resolves each
//! path to the file that defines what it names, and fails on any cycle
//! between modules, at every level of the tree: between the top-level
//! modules, between the files and folders of each folder, and between a
//! folder's own `mod.rs` and its children. A `pub use` of the folder's own
//! children is the folder's face, not an import: a path through it is
//! followed to the child that defines the item. Beside it: no file under
//! `src/` is longer than [`MAX_FILE_LINES`] before its tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// One file's module and what its code names.
struct SourceFile {
    module: ModPath,
    /// Paths used by the code, absolute (from the crate root).
    uses: Vec<ModPath>,
    /// `pub use` re-exports: exported name -> absolute path of the target.
    reexports: BTreeMap<String, ModPath>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "bin") && dir.ends_with("src") {
                continue; // the mains use the library by its name, not crate::
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The code with comments removed and string and character literals
/// emptied, so that only code is read.
fn code_only(text: &str) -> Vec<char> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::with_capacity(c.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
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
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (i == 0 || !is_ident(c[i - 1]))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(['"', '"']);
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.extend(['"', '"']);
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime.
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.extend(['\'', '\'']);
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.extend(['\'', '\'']);
            } else {
                out.push(c[i]);
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

struct Reader<'a> {
    c: &'a [char],
    i: usize,
}

impl Reader<'_> {
    fn skip_space(&mut self) {
        while self.i < self.c.len() && self.c[self.i].is_whitespace() {
            self.i += 1;
        }
    }
    fn ident(&mut self) -> Option<String> {
        self.skip_space();
        let start = self.i;
        while self.i < self.c.len() && is_ident(self.c[self.i]) {
            self.i += 1;
        }
        (self.i > start).then(|| self.c[start..self.i].iter().collect())
    }
    fn eat(&mut self, s: &str) -> bool {
        self.skip_space();
        let s: Vec<char> = s.chars().collect();
        if self.c[self.i..].starts_with(&s) {
            self.i += s.len();
            true
        } else {
            false
        }
    }
    /// A path tree from here (`a::b::{c, d::e as f, self}`), as
    /// (path, name it is known by) pairs.
    fn tree(&mut self, prefix: &ModPath, out: &mut Vec<(ModPath, String)>) {
        let mut path = prefix.clone();
        loop {
            if self.eat("{") {
                loop {
                    if self.eat("}") {
                        return;
                    }
                    let before = self.i;
                    self.tree(&path, out);
                    self.eat(",");
                    if self.i == before || self.i >= self.c.len() {
                        return;
                    }
                }
            }
            if self.eat("*") {
                out.push((path, "*".into()));
                return;
            }
            let Some(seg) = self.ident() else {
                return;
            };
            if seg != "self" {
                path.push(seg);
            }
            if !self.eat("::") {
                let name = if self.eat("as") {
                    self.ident().unwrap_or_default()
                } else {
                    path.last().cloned().unwrap_or_default()
                };
                out.push((path, name));
                return;
            }
        }
    }
}

fn read_file(src: &Path, file: &Path) -> SourceFile {
    let module = module_of(src, file);
    let text = fs::read_to_string(file).expect("readable source");
    let c = code_only(&text);
    // Child modules declared here (`mod x;`), named bare in 2018 paths.
    let mut children = BTreeSet::new();
    let mut uses = Vec::new();
    let mut reexports = BTreeMap::new();
    // Inline modules (`mod tests { .. }`) shift what `super` and `self` mean.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '{' => {
                depth += 1;
                i += 1;
                continue;
            }
            '}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                i += 1;
                continue;
            }
            ch if is_ident(ch) && (i == 0 || !is_ident(c[i - 1])) => {}
            _ => {
                i += 1;
                continue;
            }
        }
        let mut r = Reader { c: &c, i };
        let word = r.ident().unwrap_or_default();
        let after_word = r.i;
        let preceded_by_path = i >= 2 && c[i - 1] == ':' && c[i - 2] == ':';
        if word == "mod" {
            if let Some(name) = r.ident() {
                if r.eat(";") {
                    children.insert(name);
                } else if r.eat("{") {
                    depth += 1;
                    inline.push((name, depth - 1));
                    i = r.i;
                    continue;
                }
            }
            i = after_word;
            continue;
        }
        let here: ModPath = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let is_pub_use = {
            // `pub use` or `pub(crate) use` right before this path.
            let before: String = c[i.saturating_sub(24)..i].iter().collect();
            let before = before.trim_end();
            before.ends_with("pub use")
                || before.ends_with("pub(crate) use")
                || before.ends_with("pub(super) use")
        };
        let base: Option<ModPath> = if preceded_by_path {
            None
        } else {
            match word.as_str() {
                "crate" => Some(Vec::new()),
                "self" => Some(here.clone()),
                "super" => {
                    let mut b = here.clone();
                    b.pop();
                    Some(b)
                }
                w if inline.is_empty() && children.contains(w) => {
                    let mut b = here.clone();
                    b.push(w.to_string());
                    Some(b)
                }
                _ => None,
            }
        };
        let Some(mut base) = base else {
            i = after_word;
            continue;
        };
        let mut r = Reader {
            c: &c,
            i: after_word,
        };
        if !r.eat("::") {
            i = after_word;
            continue;
        }
        while {
            let save = r.i;
            if r.ident().as_deref() == Some("super") && r.eat("::") {
                true
            } else {
                r.i = save;
                false
            }
        } {
            base.pop();
        }
        let mut found = Vec::new();
        r.tree(&base, &mut found);
        for (path, name) in found {
            if is_pub_use && name != "*" {
                reexports.insert(name, path.clone());
                // A re-export of the file's own descendants is its face.
                if path.starts_with(&module) && path.len() > module.len() {
                    continue;
                }
            }
            uses.push(path);
        }
        i = r.i.max(after_word);
    }
    SourceFile {
        module,
        uses,
        reexports,
    }
}

/// The file module that defines what `path` names, following re-exports.
fn resolve(files: &BTreeMap<ModPath, SourceFile>, path: &ModPath, hops: usize) -> Option<ModPath> {
    let module = (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))?;
    if hops < 8 {
        if let Some(name) = path.get(module.len()) {
            if let Some(target) = files[&module].reexports.get(name) {
                // Through the face of a folder to the child; an import from
                // outside the module stays an edge to the re-exporter.
                if target.starts_with(&module) && target.len() > module.len() {
                    let mut full = target.clone();
                    full.extend(path[module.len() + 1..].iter().cloned());
                    return resolve(files, &full, hops + 1);
                }
            }
        }
    }
    Some(module)
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every file-to-file import under `src`: (importer, defining module).
fn edges(src: &Path) -> (BTreeMap<ModPath, SourceFile>, BTreeSet<(ModPath, ModPath)>) {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    let files: BTreeMap<ModPath, SourceFile> = paths
        .iter()
        .map(|p| {
            let f = read_file(src, p);
            (f.module.clone(), f)
        })
        .collect();
    let mut edges: BTreeSet<(ModPath, ModPath)> = BTreeSet::new();
    for f in files.values() {
        for used in &f.uses {
            if let Some(to) = resolve(&files, used, 0) {
                if to != f.module {
                    edges.insert((f.module.clone(), to));
                }
            }
        }
    }
    (files, edges)
}

/// Every cycle found, one line each, at every level of the module tree.
fn cycles(src: &Path) -> Vec<String> {
    let (files, edges) = edges(src);
    let mut found = Vec::new();
    let mut seen: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    // At each folder: its own file and each child (with what lies under it)
    // is one node.
    for folder in files.keys() {
        let node = |m: &ModPath| -> Option<String> {
            if !m.starts_with(folder) {
                return None;
            }
            Some(match m.get(folder.len()) {
                None => format!("{} (its own file)", show(folder)),
                Some(child) => {
                    let mut c = folder.clone();
                    c.push(child.clone());
                    show(&c)
                }
            })
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in &edges {
            if let (Some(na), Some(nb)) = (node(a), node(b)) {
                if na != nb {
                    graph.entry(na).or_default().insert(nb);
                }
            }
        }
        for (a, targets) in &graph {
            for b in targets {
                // Shortest way back from b to a closes a cycle.
                let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
                let mut queue = VecDeque::from([b]);
                let mut reached = b == a;
                while let Some(n) = queue.pop_front() {
                    if n == a {
                        reached = true;
                        break;
                    }
                    for m in graph.get(n).into_iter().flatten() {
                        if m != b && !prev.contains_key(m) {
                            prev.insert(m, n);
                            queue.push_back(m);
                        }
                    }
                }
                if !reached {
                    continue;
                }
                let mut way = vec![a.clone()];
                let mut n = a;
                while n != b {
                    n = prev[n];
                    way.push(n.clone());
                }
                way.reverse();
                let key: BTreeSet<String> = way.iter().cloned().collect();
                if seen.insert(key) {
                    let mut line = a.clone();
                    for w in &way {
                        line.push_str(" -> ");
                        line.push_str(w);
                    }
                    found.push(line);
                }
            }
        }
    }
    found
}

#[test]
fn no_import_cycle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = cycles(&src);
    assert!(
        found.is_empty(),
        "import cycles between modules (each line: a way round one):\n{}",
        found.join("\n")
    );
}

/// What each top-level module may import (the layering its `mod.rs` doc
/// states): storage, the wire format and the helpers below them import
/// nothing above them.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    ("xml", &[]),
    ("hex", &[]),
    ("net", &[]),
    ("ops", &["hex"]),
    ("configdb", &["hex"]),
    ("wire", &["hex", "xml"]),
    ("ntlm", &["hex", "wire"]),
    ("device", &["hex", "net", "ops", "wire"]),
    ("cwa", &["net", "ntlm", "ops", "wire", "xml"]),
    ("sim", &["hex", "net", "ntlm", "ops", "xml"]),
    ("dispatcher", &["configdb", "net", "ops", "wire"]),
    (
        "service",
        &["configdb", "cwa", "hex", "net", "ops", "wire", "xml"],
    ),
    ("admin", &["configdb", "hex", "net", "ops"]),
];

#[test]
fn each_top_level_module_imports_only_what_it_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (files, edges) = edges(&src);
    let allowed: BTreeMap<&str, &[&str]> = MAY_IMPORT.iter().copied().collect();
    let mut wrong = Vec::new();
    for module in files.keys().filter(|m| m.len() == 1) {
        if !allowed.contains_key(module[0].as_str()) && module[0] != "import_cycles" {
            wrong.push(format!("{}: not in MAY_IMPORT", module[0]));
        }
    }
    for (from, to) in &edges {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        if a == b || a == "import_cycles" {
            continue;
        }
        if !allowed
            .get(a.as_str())
            .is_some_and(|may| may.contains(&b.as_str()))
        {
            wrong.push(format!("{} imports {}", show(from), show(to)));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_cycle() {
    let dir = std::env::temp_dir().join(format!("collabd-cycles-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    fs::write(dir.join("a/mod.rs"), "mod x;\npub use x::X;\n").unwrap();
    fs::write(
        dir.join("a/x.rs"),
        "use crate::b::{Y, self};\npub struct X;\n",
    )
    .unwrap();
    fs::write(
        dir.join("b.rs"),
        "// crate::a::X in a comment is not a use\npub fn f() -> crate::a::X { crate::a::X }\n",
    )
    .unwrap();
    let found = cycles(&dir);
    assert_eq!(found, vec!["a -> b -> a".to_string()], "{found:?}");
    fs::write(dir.join("b.rs"), "// crate::a::X\npub struct Y;\n").unwrap();
    assert!(cycles(&dir).is_empty());
    let _ = fs::remove_dir_all(&dir);
}

/// Most lines a file under `src/` may have before its `#[cfg(test)]`
/// module: a file a newcomer can hold in their head does one job.
const MAX_FILE_LINES: usize = 900;

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut long = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let code = text
            .lines()
            .take_while(|line| line.trim() != "#[cfg(test)]")
            .count();
        if code > MAX_FILE_LINES {
            long.push(format!("{} ({code} lines)", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines before the tests; split along the jobs:\n{}",
        long.join("\n")
    );
}
