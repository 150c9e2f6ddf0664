//! The graph of blast's top-level modules is one-way.
//!
//! Data flows one way: `campaign` → `source` → `render` → `dispatch` → `node` → `outcome` →
//! `journal` / `log`, with `cli` on top turning arguments into calls, and the binary `main`
//! above it. Two rules keep it so:
//!
//! 1. Nothing below `cli` imports `cli` (an "upward import"); only `main` may. A library
//!    module reaching up into `cli` drags the command line into every caller and test of it.
//! 2. Top-level modules import each other without a cycle: the modules of a cycle cannot be
//!    read, tested or moved one without the others, and the layers silently merge.
//!
//! The check is textual. Each `.rs` file under `src/` belongs to a top-level module:
//! `src/foo.rs` and `src/foo/**.rs` to `foo` (a `#[path = "gen.rs"] pub mod generate;` in
//! `lib.rs` makes `gen.rs` the module `generate`), `src/main.rs` to `main`. `lib.rs` only
//! declares and re-exports, so it adds no edge, and a re-exported name is no module. With
//! comments and the contents of string/char literals (raw ones too) blanked, each `crate::x`
//! path (in a grouped `use`, an expression or a type; `#[cfg(test)]` code included) is an edge
//! to `x`. `super::` cannot leave a top-level module, so it is never one. `main` is scanned
//! for `blast::x`. A failure lists each upward import with its file:lines, and each cycle as a
//! strongly connected component with one file:line per edge inside it, to show what to cut.
//! A pass prints the modules in layers (`-- --nocapture`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The command-line module, which only `main` may import.
const CLI: &str = "cli";
/// The binary (`src/main.rs`, `src/bin/**`), which may import anything.
const MAIN: &str = "main";

/// One path in module `from`'s code that names top-level module `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ref {
    from: String,
    to: String,
    file: String,
    line: usize,
}

impl Ref {
    fn new(from: &str, to: &str, file: String, line: usize) -> Ref {
        let (from, to) = (from.to_string(), to.to_string());
        Ref {
            from,
            to,
            file,
            line,
        }
    }

    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// from → to → the references making that edge, in file and line order.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Ref>>>;

#[test]
fn module_graph_is_one_way() {
    let (modules, refs) = scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    match check(&modules, &refs) {
        Ok(layers) => {
            println!("module layers (each imports only from the layers before it):");
            for (n, layer) in layers.iter().enumerate() {
                println!("  {n}: {}", layer.join(", "));
            }
        }
        Err(report) => panic!("the module graph is not one-way\n{report}"),
    }
}

/// The library's top-level modules plus `main`, and every reference between two of them.
fn scan(src: &Path) -> (BTreeSet<String>, Vec<Ref>) {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let renames = path_attrs(&read(&src.join("lib.rs")));
    let lib_name = env!("CARGO_PKG_NAME").replace('-', "_");
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    let (mut modules, mut refs) = (BTreeSet::new(), Vec::new());
    for file in files {
        let rel = file.strip_prefix(src).expect("walked from src");
        let Some(from) = owner(rel, &renames) else {
            continue;
        };
        // `crate::` in the binary is the binary's own root; it reaches the library by name.
        let root = if from == MAIN { &lib_name } else { "crate" };
        for (to, line) in paths_under(&strip(&read(&file)), root) {
            refs.push(Ref::new(&from, &to, format!("src/{}", rel.display()), line));
        }
        modules.insert(from);
    }
    // Names that are no module (re-exports, macros, `self`) and self-edges are no edge.
    refs.retain(|r| modules.contains(&r.to) && r.to != r.from && r.to != MAIN);
    (modules, refs)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file (relative to `src/`) belongs to; `None` for the crate root.
fn owner(rel: &Path, renames: &BTreeMap<String, String>) -> Option<String> {
    let nested = rel.components().count() > 1;
    match (rel.iter().next()?.to_str()?, nested) {
        ("lib.rs", false) => None,
        ("main.rs", false) | ("bin", true) => Some(MAIN.to_string()),
        _ => {
            let key = top_key(rel);
            Some(renames.get(&key).cloned().unwrap_or(key))
        }
    }
}

/// `foo` for `foo.rs`, `foo/…` and `foo/mod.rs`.
fn top_key(rel: &Path) -> String {
    let first = rel.iter().next().unwrap_or_default().to_string_lossy();
    match rel.components().count() {
        1 => first.trim_end_matches(".rs").to_string(),
        _ => first.into_owned(),
    }
}

/// `#[path = "gen.rs"] pub mod generate;` in lib.rs: file key `gen` → module `generate`.
fn path_attrs(lib: &str) -> BTreeMap<String, String> {
    let code = strip(lib);
    let toks = tokens(&code);
    let text = |n: usize| toks.get(n).map_or("", |t| t.1);
    let mut renames = BTreeMap::new();
    for n in 0..toks.len() {
        let head: Vec<_> = (n..n + 6).map(text).collect();
        if head != ["#", "[", "path", "=", "\"", "\""] {
            continue;
        }
        // The literal's quotes survive stripping; its text is read from the original.
        let value = &lib[toks[n + 4].0 + 1..toks[n + 5].0];
        let mut decl = (n + 6..toks.len()).take_while(|&k| text(k) != ";");
        if let Some(m) = decl.find(|&k| text(k) == "mod") {
            renames.insert(top_key(Path::new(value)), text(m + 1).to_string());
        }
    }
    renames
}

/// Blanks comments entirely and the contents of string, byte-string, raw-string and char
/// literals (keeping their quotes) with spaces. Newlines are kept, so byte offsets and line
/// numbers are those of the original.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        let (blank, next) = match (b[i], b.get(i + 1)) {
            (b'/', Some(b'/')) => (i..find_from(b, i, b"\n"), find_from(b, i, b"\n")),
            (b'/', Some(b'*')) => (i..block_comment_end(b, i), block_comment_end(b, i)),
            (b'"', _) => (i + 1..string_close(b, i + 1), string_close(b, i + 1) + 1),
            (b'\'', _) => char_literal(b, i),
            (c, _) if is_ident_byte(c) => {
                let end = ident_end(b, i);
                raw_string(b, i, end).unwrap_or((end..end, end))
            }
            _ => (i..i, i + 1),
        };
        for k in blank.filter(|&k| b[k] != b'\n') {
            out[k] = b' ';
        }
        i = next;
    }
    String::from_utf8(out).expect("blanking whole characters keeps UTF-8")
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn ident_end(b: &[u8], from: usize) -> usize {
    (from..b.len())
        .find(|&k| !is_ident_byte(b[k]))
        .unwrap_or(b.len())
}

/// Where `needle` starts at or after `from`, or the end of `b`.
fn find_from(b: &[u8], from: usize, needle: &[u8]) -> usize {
    let rest = b.get(from..).unwrap_or_default();
    let at = rest.windows(needle.len()).position(|w| w == needle);
    at.map_or(b.len(), |p| from + p)
}

/// The end of the block comment at `i`; block comments nest.
fn block_comment_end(b: &[u8], i: usize) -> usize {
    let (mut depth, mut k) = (0, i);
    while k + 1 < b.len() {
        match &b[k..k + 2] {
            b"/*" => (depth, k) = (depth + 1, k + 2),
            b"*/" if depth == 1 => return k + 2,
            b"*/" => (depth, k) = (depth - 1, k + 2),
            _ => k += 1,
        }
    }
    b.len()
}

/// The closing quote of a (byte) string whose contents start at `from`.
fn string_close(b: &[u8], from: usize) -> usize {
    let mut k = from;
    while k < b.len() && b[k] != b'"' {
        k += if b[k] == b'\\' { 2 } else { 1 };
    }
    k.min(b.len())
}

/// A char or byte literal at `i` (contents to blank, where to go on), or a lifetime/label.
fn char_literal(b: &[u8], i: usize) -> (Range<usize>, usize) {
    if b.get(i + 1) == Some(&b'\\') {
        let close = (i + 3..b.len()).find(|&k| b[k] == b'\'').unwrap_or(b.len());
        return (i + 1..close, close + 1);
    }
    // One character, however many UTF-8 bytes, then a quote: `'x'`, `'"'`, `'é'`.
    let len = match b.get(i + 1) {
        Some(0xF0..) => 4,
        Some(0xE0..) => 3,
        Some(0xC0..) => 2,
        _ => 1,
    };
    match b.get(i + 1 + len) {
        Some(b'\'') => (i + 1..i + 1 + len, i + 2 + len),
        _ => (i..i, i + 1), // `'a` in `&'a str`, `'outer: loop`
    }
}

/// `r"…"`, `r#"…"#`, `br##"…"##`, `cr"…"` starting with the identifier `b[start..end]`.
/// `r#type` (a raw identifier) is not one.
fn raw_string(b: &[u8], start: usize, end: usize) -> Option<(Range<usize>, usize)> {
    if !matches!(&b[start..end], b"r" | b"br" | b"cr") {
        return None;
    }
    let hashes = b[end..].iter().take_while(|&&c| c == b'#').count();
    let open = end + hashes;
    if b.get(open) != Some(&b'"') {
        return None;
    }
    let closing = [b"\"".as_slice(), &b[end..open]].concat(); // `"` and as many `#`
    let close = find_from(b, open + 1, &closing);
    Some((open + 1..close, close + closing.len()))
}

/// Identifiers (and numbers), `::`, and single punctuation characters of stripped code, with
/// their byte offsets.
fn tokens(code: &str) -> Vec<(usize, &str)> {
    let b = code.as_bytes();
    let (mut toks, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let end = match b[i] {
            c if is_ident_byte(c) => ident_end(b, i),
            _ if b[i..].starts_with(b"::") => i + 2,
            _ => i + 1,
        };
        if !b[i].is_ascii_whitespace() {
            toks.push((i, &code[i..end]));
        }
        i = end;
    }
    toks
}

fn is_name(tok: &str) -> bool {
    tok.bytes()
        .next()
        .is_some_and(|c| is_ident_byte(c) && !c.is_ascii_digit())
}

/// Every name right after `root::` in stripped code, with its line: `root::a::b` gives `a`,
/// `root::{a, b::c, d::{e, f}}` gives `a`, `b` and `d`.
fn paths_under(code: &str, root: &str) -> Vec<(String, usize)> {
    let toks = tokens(code);
    let mut heads = Vec::new();
    for n in 0..toks.len() {
        if toks[n].1 != root || toks.get(n + 1).map(|t| t.1) != Some("::") {
            continue;
        }
        match toks.get(n + 2) {
            Some((_, "{")) => heads.extend(group_heads(&toks, n + 2)),
            Some(&(off, tok)) if is_name(tok) => heads.push(off),
            _ => {}
        }
    }
    let line = |off: usize| code[..off].bytes().filter(|&c| c == b'\n').count() + 1;
    let name = |off: usize| code[off..ident_end(code.as_bytes(), off)].to_string();
    heads
        .into_iter()
        .map(|off| (name(off), line(off)))
        .collect()
}

/// Offsets of the first name of each item of the `{…}` group opening at token `open`.
fn group_heads(toks: &[(usize, &str)], open: usize) -> Vec<usize> {
    let (mut depth, mut heads) = (0, Vec::new());
    for k in open..toks.len() {
        match toks[k].1 {
            "{" => depth += 1,
            "}" if depth == 1 => break,
            "}" => depth -= 1,
            tok if depth == 1 && is_name(tok) && matches!(toks[k - 1].1, "{" | ",") => {
                heads.push(toks[k].0);
            }
            _ => {}
        }
    }
    heads
}

/// The layers of the graph, leaves first, or a report of every upward import and cycle.
fn check(modules: &BTreeSet<String>, refs: &[Ref]) -> Result<Vec<Vec<String>>, String> {
    let (mut graph, mut refs) = (Graph::new(), refs.to_vec());
    refs.sort();
    for r in refs {
        let tos = graph.entry(r.from.clone()).or_default();
        tos.entry(r.to.clone()).or_default().push(r);
    }
    let mut report = upward_imports(&graph);
    report.extend(cycles(modules, &graph));
    match report.is_empty() {
        true => Ok(layers(modules, &graph)),
        false => Err(report.join("\n")),
    }
}

/// Every `x -> cli` edge but from `main`, with all its references.
fn upward_imports(graph: &Graph) -> Vec<String> {
    let mut lines = Vec::new();
    for (from, tos) in graph.iter().filter(|(from, _)| *from != MAIN) {
        if let Some(edge) = tos.get(CLI) {
            let at: Vec<_> = edge.iter().map(Ref::at).collect();
            lines.push(format!("  {from} -> {CLI}: {}", at.join(", ")));
        }
    }
    if !lines.is_empty() {
        lines.insert(
            0,
            format!("\nupward imports of `{CLI}` (only `{MAIN}` may):"),
        );
    }
    lines
}

/// Each strongly connected component of more than one module, with the edges inside it.
fn cycles(modules: &BTreeSet<String>, graph: &Graph) -> Vec<String> {
    let sccs: Vec<_> = tarjan(modules, graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    let mut lines = Vec::new();
    for (n, scc) in sccs.iter().enumerate() {
        let (count, members) = (sccs.len(), scc.join(", "));
        lines.push(format!(
            "\nimport cycle {} of {count}: {{{members}}}",
            n + 1
        ));
        lines.push("  its edges (cut some until no loop is left):".to_string());
        for (from, tos) in graph.iter().filter(|(from, _)| scc.contains(from)) {
            for (to, edge) in tos.iter().filter(|(to, _)| scc.contains(to)) {
                let more = match edge.len() {
                    1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                lines.push(format!("    {from} -> {to}: {}{more}", edge[0].at()));
            }
        }
    }
    lines
}

/// Strongly connected components (Tarjan), each sorted, in the order they complete.
fn tarjan<'g>(modules: &'g BTreeSet<String>, graph: &'g Graph) -> Vec<Vec<String>> {
    let mut t = Tarjan::default();
    for m in modules {
        if !t.index.contains_key(m.as_str()) {
            t.visit(graph, m);
        }
    }
    t.sccs
}

#[derive(Default)]
struct Tarjan<'g> {
    index: BTreeMap<&'g str, usize>,
    low: BTreeMap<&'g str, usize>,
    stack: Vec<&'g str>,
    sccs: Vec<Vec<String>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, graph: &'g Graph, v: &'g str) {
        let n = self.index.len();
        self.index.insert(v, n);
        self.low.insert(v, n);
        self.stack.push(v);
        for w in graph.get(v).into_iter().flat_map(|tos| tos.keys()) {
            let w = w.as_str();
            let reach = match self.index.get(w) {
                None => {
                    self.visit(graph, w);
                    self.low[w]
                }
                Some(&iw) if self.stack.contains(&w) => iw,
                Some(_) => continue,
            };
            let low = self.low.get_mut(v).expect("visited");
            *low = (*low).min(reach);
        }
        if self.low[v] == self.index[v] {
            let at = self.stack.iter().position(|s| *s == v).expect("on stack");
            let mut scc: Vec<String> = self.stack.drain(at..).map(String::from).collect();
            scc.sort();
            self.sccs.push(scc);
        }
    }
}

/// Layer 0 imports no other module; layer n only modules of layers below n. Graph acyclic.
fn layers(modules: &BTreeSet<String>, graph: &Graph) -> Vec<Vec<String>> {
    let deps = |m: &str| graph.get(m).into_iter().flat_map(|tos| tos.keys());
    let (mut placed, mut layers) = (BTreeSet::new(), Vec::new());
    while placed.len() < modules.len() {
        let layer: Vec<&String> = modules
            .iter()
            .filter(|m| !placed.contains(m) && deps(m).all(|d| placed.contains(d)))
            .collect();
        assert!(!layer.is_empty(), "layers of a cyclic graph");
        placed.extend(layer.iter().copied());
        layers.push(layer.into_iter().cloned().collect());
    }
    layers
}

mod checker {
    use super::*;

    /// `name:line` of each `crate::name` in `code`.
    fn found(code: &str) -> String {
        let refs = paths_under(&strip(code), "crate");
        let refs: Vec<_> = refs.iter().map(|(n, l)| format!("{n}:{l}")).collect();
        refs.join(" ")
    }

    /// References from `"a>b:3 b>c:5"`: module a names b on line 3 of src/a.rs, …
    fn graph(spec: &str) -> Vec<Ref> {
        let edge = |e: &str| {
            let (from, rest) = e.split_once('>').expect("from>to:line");
            let (to, line) = rest.split_once(':').expect("from>to:line");
            let file = format!("src/{from}.rs");
            Ref::new(from, to, file, line.parse().expect("a line number"))
        };
        spec.split_whitespace().map(edge).collect()
    }

    fn set(names: &str) -> BTreeSet<String> {
        names.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn comments_do_not_count() {
        let code = "// crate::cli\n/// [`crate::cli`]\n//! crate::cli\n\
                    /* crate::cli /* nested */ crate::cli */ use crate::log; /** crate::cli */";
        assert_eq!(found(code), "log:4");
        assert_eq!(strip(code).len(), code.len());
    }

    #[test]
    fn strings_and_chars_do_not_count() {
        let code = r#"let a = "crate::cli"; let b = b"crate::cli \" crate::cli";
            let q = '"'; let e = '\''; let u = 'é'; f("\\"); crate::log::x(q)"#;
        assert_eq!(found(code), "log:2");
    }

    #[test]
    fn raw_strings_do_not_count_and_raw_identifiers_are_code() {
        let code = "r\"crate::cli\"; r#\"a \"quoted\" crate::cli\"#; br##\"\"# crate::cli\"##;\n\
                    let r#type = crate::log::X; cr\"crate::cli\"";
        assert_eq!(found(code), "log:2");
    }

    #[test]
    fn lifetimes_are_not_char_literals() {
        let code = "fn f<'a>(x: &'a str) -> crate::log::X<'a> { 'l: loop { crate::node::y('a') } }";
        assert_eq!(found(code), "log:1 node:1");
    }

    #[test]
    fn paths_anywhere_and_grouped_imports() {
        let code = "use crate::{a, b::c, d::{e, f}, self};\nfn g() -> crate :: h::T {\n\
                    crate::i::j(); pub(crate) k: u8; some_crate::l; $crate::m!() }";
        assert_eq!(found(code), "a:1 b:1 d:1 self:1 h:2 i:3 m:3");
    }

    #[test]
    fn path_attributes_and_file_owners() {
        let lib = "// #[path = \"no.rs\"] mod no;\n#[path = \"gen.rs\"]\npub mod generate;\n\
                   #[path=\"x/mod.rs\"] pub(crate) mod y;\npub use render::Rendered;";
        let renames = path_attrs(lib);
        assert_eq!(format!("{renames:?}"), r#"{"gen": "generate", "x": "y"}"#);
        let own = |p: &str| owner(Path::new(p), &renames).unwrap_or_default();
        let owners = [
            "lib.rs",
            "main.rs",
            "gen.rs",
            "smtp/mod.rs",
            "render/a.rs",
            "x/b/c.rs",
        ];
        assert_eq!(
            owners.map(own),
            ["", "main", "generate", "smtp", "render", "y"]
        );
    }

    #[test]
    fn a_planted_cycle_is_reported_with_its_edges() {
        let refs = graph("a>b:3 b>c:5 c>a:7 c>a:9 d>a:1");
        let report = check(&set("a b c d"), &refs).unwrap_err();
        assert!(
            report.contains("import cycle 1 of 1: {a, b, c}"),
            "{report}"
        );
        assert!(report.contains("a -> b: src/a.rs:3\n"), "{report}");
        assert!(report.contains("c -> a: src/c.rs:7 (+1 more)"), "{report}");
        assert!(!report.contains("d -> a"), "{report}");
    }

    #[test]
    fn an_upward_import_is_reported_and_main_may_import_cli() {
        let refs = graph("main>cli:1 cli>log:2 log>cli:8 log>cli:4");
        let report = check(&set("main cli log"), &refs).unwrap_err();
        assert!(
            report.contains("log -> cli: src/log.rs:4, src/log.rs:8"),
            "{report}"
        );
        assert!(!report.contains("main -> cli"), "{report}");
    }

    #[test]
    fn a_one_way_graph_passes_in_layers() {
        let refs = graph("main>cli:1 cli>log:2 cli>node:3 node>log:4 main>log:5");
        let layers = check(&set("main cli log node clock"), &refs).unwrap();
        let layers: Vec<_> = layers.iter().map(|l| l.join(" ")).collect();
        assert_eq!(layers, ["clock log", "node", "cli", "main"]);
    }
}
