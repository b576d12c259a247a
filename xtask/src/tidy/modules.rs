//! Rule `module-circles`: inside a crate, the files' modules name each
//! other's items without a circle, so each file can be read, tested and
//! moved with only the files below it in mind.
//!
//! An edge A → B means code in file A names an item of module file B
//! through a path: `use crate::b::Foo`, `use super::Foo`, `use self::x::Y`,
//! an inline `crate::b::c::f()` or `super::x::Y`, a child module used by its
//! bare name in the file that declares it (`use x::Foo;`, `x::foo()`), and
//! such paths inside macro bodies. A path resolves to the deepest module
//! file it names (an inline `mod` stays in its file), following `use`
//! re-exports to the module that defines the item: `crate::Foo` is an edge
//! to `foo.rs` when the root only says `pub use foo::Foo`, but to the root
//! when the root defines `Foo` itself. `mod x;` alone is no edge, and
//! neither is a path from a module to one of its own ancestors
//! (`super::Router`, `crate::ConnId` defined in the root): the items of a
//! module are in scope for what it contains, like the fields of a struct
//! for its methods, and a parent that names its children's items while the
//! children use the parent's types is one room, not a circle. The circles
//! that make code hard to read and to move are between siblings and
//! cousins (`conn.rs → standby.rs → hub.rs → conn.rs`), and those are
//! found wherever they pass through a parent. Tarjan's algorithm finds the
//! strongly connected files; each circle is reported with every edge inside
//! it and the names that tie it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Item, UseTree};

use super::finding::Finding;
use super::source::{line, name, CrateTree, SourceFile};

/// What one module (a file, or an inline `mod x { .. }` in it) declares at
/// its top level.
#[derive(Default)]
struct Scope {
    /// Index of its file in the tree.
    file: usize,
    /// Child modules (files or inline).
    children: BTreeSet<String>,
    /// Names of items it defines.
    defined: BTreeSet<String>,
    /// Names bound by `use`, with the path as written.
    imports: BTreeMap<String, Vec<String>>,
    /// Paths of its glob imports.
    globs: Vec<Vec<String>>,
}

/// What a path names.
enum Res {
    /// A module of the crate.
    Module(Vec<String>),
    /// An item of a module of the crate.
    Item(Vec<String>, String),
    /// Nothing of this crate (another crate, std, a local name).
    Outside,
    /// A name the scope does not declare.
    Unknown,
}

/// Longer chains of re-exports are taken for a loop and left unresolved.
const MAX_DEPTH: usize = 16;

/// The scopes of one crate tree, by module path.
struct Index {
    scopes: HashMap<Vec<String>, Scope>,
}

impl Index {
    fn new(files: &[SourceFile]) -> Self {
        let mut index = Index {
            scopes: HashMap::new(),
        };
        for (i, file) in files.iter().enumerate() {
            index.add(i, file.module.clone(), &file.ast.items);
        }
        index
    }

    fn add(&mut self, file: usize, module: Vec<String>, items: &[Item]) {
        let mut scope = Scope {
            file,
            ..Scope::default()
        };
        for item in items {
            let ident = match item {
                Item::Mod(m) => {
                    let child = name(&m.ident);
                    if let Some((_, items)) = &m.content {
                        let mut path = module.clone();
                        path.push(child.clone());
                        self.add(file, path, items);
                    }
                    scope.children.insert(child);
                    continue;
                }
                Item::Use(u) if u.leading_colon.is_none() => {
                    for (path, bound, _) in use_paths(&u.tree) {
                        match bound {
                            Bound::Name(n) => {
                                scope.imports.insert(n, path);
                            }
                            Bound::Glob => scope.globs.push(path),
                            Bound::Nothing => {}
                        }
                    }
                    continue;
                }
                Item::Const(i) => &i.ident,
                Item::Enum(i) => &i.ident,
                Item::Fn(i) => &i.sig.ident,
                Item::Macro(i) => match &i.ident {
                    Some(ident) => ident,
                    None => continue,
                },
                Item::Static(i) => &i.ident,
                Item::Struct(i) => &i.ident,
                Item::Trait(i) => &i.ident,
                Item::TraitAlias(i) => &i.ident,
                Item::Type(i) => &i.ident,
                Item::Union(i) => &i.ident,
                _ => continue,
            };
            scope.defined.insert(name(ident));
        }
        // Two inline modules of one name (`#[cfg(unix)] mod imp {..}` and
        // `#[cfg(not(unix))] mod imp {..}`) make one scope.
        match self.scopes.entry(module) {
            Entry::Vacant(e) => {
                e.insert(scope);
            }
            Entry::Occupied(mut e) => {
                let known = e.get_mut();
                known.children.extend(scope.children);
                known.defined.extend(scope.defined);
                known.imports.extend(scope.imports);
                known.globs.extend(scope.globs);
            }
        }
    }

    /// What `segs`, written in module `from`, names.
    fn resolve(&self, from: &[String], segs: &[String], depth: usize) -> Res {
        let Some((first, rest)) = segs.split_first() else {
            return Res::Outside;
        };
        if depth > MAX_DEPTH {
            return Res::Outside;
        }
        let mut rest = rest;
        let mut cur = match first.as_str() {
            "crate" => Vec::new(),
            "self" => from.to_vec(),
            "super" => {
                let mut cur = from.to_vec();
                if cur.pop().is_none() {
                    return Res::Outside;
                }
                while rest.first().is_some_and(|s| s == "super") {
                    if cur.pop().is_none() {
                        return Res::Outside;
                    }
                    rest = &rest[1..];
                }
                cur
            }
            first => match self.lookup(from, first, depth) {
                Res::Module(m) => m,
                Res::Unknown => return Res::Outside,
                other => return other,
            },
        };
        for seg in rest {
            match self.lookup(&cur, seg, depth) {
                Res::Module(m) => cur = m,
                Res::Unknown => return Res::Item(cur, seg.clone()),
                other => return other,
            }
        }
        Res::Module(cur)
    }

    /// What `name` means inside module `module`.
    fn lookup(&self, module: &[String], name: &str, depth: usize) -> Res {
        let Some(scope) = self.scopes.get(module) else {
            // A module left out of the tree (test code): not an edge.
            return Res::Outside;
        };
        if scope.children.contains(name) {
            let mut child = module.to_vec();
            child.push(name.to_owned());
            return if self.scopes.contains_key(&child) {
                Res::Module(child)
            } else {
                Res::Outside
            };
        }
        if let Some(path) = scope.imports.get(name) {
            return self.resolve(module, path, depth + 1);
        }
        if scope.defined.contains(name) {
            return Res::Item(module.to_vec(), name.to_owned());
        }
        for glob in &scope.globs {
            if let Res::Module(m) = self.resolve(module, glob, depth + 1) {
                match self.lookup(&m, name, depth + 1) {
                    Res::Unknown | Res::Outside => {}
                    found => return found,
                }
            }
        }
        Res::Unknown
    }

    /// The file and the name that `res` ties to, if it is in the crate.
    fn target(&self, res: Res, glob: bool) -> Option<(usize, String)> {
        let (module, label) = match res {
            Res::Module(m) => {
                let label = if glob {
                    "*".to_owned()
                } else {
                    m.last().cloned().unwrap_or_else(|| "crate".to_owned())
                };
                (m, label)
            }
            Res::Item(m, n) => (m, n),
            Res::Outside | Res::Unknown => return None,
        };
        Some((self.scopes.get(&module)?.file, label))
    }
}

/// What a `use` leaf brings into scope.
enum Bound {
    Name(String),
    Glob,
    Nothing,
}

/// Every leaf of a use tree: its full path, what it binds, its line.
fn use_paths(tree: &UseTree) -> Vec<(Vec<String>, Bound, usize)> {
    fn walk(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Bound, usize)>) {
        let mut leaf = |ident: &Ident, bound: Option<&Ident>| {
            let mut path = prefix.clone();
            let last = name(ident);
            if last != "self" {
                path.push(last);
            }
            let bound = match bound.map(name) {
                Some(b) if b == "_" => Bound::Nothing,
                Some(b) => Bound::Name(b),
                None => path.last().cloned().map_or(Bound::Nothing, Bound::Name),
            };
            out.push((path, bound, line(ident.span())));
        };
        match tree {
            UseTree::Path(p) => {
                prefix.push(name(&p.ident));
                walk(&p.tree, prefix, out);
                prefix.pop();
            }
            UseTree::Name(n) => leaf(&n.ident, None),
            UseTree::Rename(r) => leaf(&r.ident, Some(&r.rename)),
            UseTree::Glob(g) => out.push((prefix.clone(), Bound::Glob, line(g.star_token.span))),
            UseTree::Group(g) => {
                for tree in &g.items {
                    walk(tree, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// The edges of one file: `(target file) → (first line, names)`.
type Edges = BTreeMap<usize, (usize, BTreeSet<String>)>;

/// Walks one file and records the edges its paths make.
struct Refs<'a> {
    index: &'a Index,
    /// Module path of every file of the tree, by index.
    modules: &'a [Vec<String>],
    file: usize,
    module: Vec<String>,
    edges: Edges,
}

impl Refs<'_> {
    fn path(&mut self, segs: &[String], line: usize, glob: bool) {
        let res = self.index.resolve(&self.module, segs, 0);
        let Some((target, label)) = self.index.target(res, glob) else {
            return;
        };
        let to = &self.modules[target];
        let ancestor = to.len() < self.module.len() && self.module.starts_with(to);
        if target != self.file && !ancestor {
            let edge = self.edges.entry(target).or_insert((line, BTreeSet::new()));
            edge.0 = edge.0.min(line);
            edge.1.insert(label);
        }
    }

    /// Paths of two or more segments among the tokens of a macro body.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let colon =
            |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(ident) if i == 0 || !colon(tokens.get(i - 1)) => {
                    let mut segs = vec![name(ident)];
                    while colon(tokens.get(i + 1)) && colon(tokens.get(i + 2)) {
                        let Some(TokenTree::Ident(next)) = tokens.get(i + 3) else {
                            break;
                        };
                        segs.push(name(next));
                        i += 3;
                    }
                    if segs.len() > 1 {
                        self.path(&segs, line(ident.span()), false);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.module.push(name(&m.ident));
            visit::visit_item_mod(self, m);
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if u.leading_colon.is_some() {
            return;
        }
        for (path, bound, line) in use_paths(&u.tree) {
            self.path(&path, line, matches!(bound, Bound::Glob));
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segs: Vec<String> = path.segments.iter().map(|s| name(&s.ident)).collect();
            self.path(&segs, line(path.segments[0].ident.span()), false);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    // `pub(in crate::x)` names a module only to limit who sees an item, and
    // attributes hold no code that ties files.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}
}

/// Checks every crate tree for circles of files.
pub(crate) fn check(trees: &[CrateTree]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for tree in trees {
        let index = Index::new(&tree.files);
        let modules: Vec<Vec<String>> = tree.files.iter().map(|f| f.module.clone()).collect();
        let edges: Vec<Edges> = tree
            .files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                let mut refs = Refs {
                    index: &index,
                    modules: &modules,
                    file: i,
                    module: file.module.clone(),
                    edges: Edges::new(),
                };
                refs.visit_file(&file.ast);
                refs.edges
            })
            .collect();
        let next: Vec<Vec<usize>> = edges.iter().map(|e| e.keys().copied().collect()).collect();
        for circle in strongly_connected(&next) {
            findings.push(report(&tree.files, &edges, &circle));
        }
    }
    findings
}

fn report(files: &[SourceFile], edges: &[Edges], circle: &[usize]) -> Finding {
    let names: Vec<&str> = circle.iter().map(|&f| files[f].rel.as_str()).collect();
    let mut message = format!(
        "{} files name each other's items (move what they share into a module of its own, or the code that closes the circle):",
        circle.len()
    );
    for &from in circle {
        for (to, (line, labels)) in &edges[from] {
            if circle.contains(to) {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                message.push_str(&format!(
                    "\n    {}:{line} -> {}: {}",
                    files[from].rel,
                    files[*to].rel,
                    labels.join(", ")
                ));
            }
        }
    }
    Finding::at(names[0], 0, "module-circles", message)
}

/// Tarjan's strongly connected components of more than one node, each
/// sorted, in the order of their smallest node.
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.counter);
            self.low[v] = self.counter;
            self.counter += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.next[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.out.push(component);
                }
            }
        }
    }
    let n = next.len();
    let mut t = Tarjan {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}
