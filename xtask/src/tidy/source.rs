//! Reading a crate's sources for `tidy`: the module tree of a crate root
//! (`mod x;` → `x.rs` or `x/mod.rs`, nested, `#[path]` honoured), each file
//! parsed by syn with its `#[cfg(test)]` items removed.
//!
//! Test code is never read: files named `tests.rs`, files that start with
//! `#![cfg(test)]` and files declared by `#[cfg(test)] mod x;` are left out
//! of the tree, and `#[cfg(test)]` items (modules, functions, impl and trait
//! items, statements, match arms, fields, variants) are cut out of the
//! syntax trees. Comments are not part of a syntax tree, and string literals
//! (doc comments included) are literals, not names, so the rules that walk
//! these trees never see them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use syn::punctuated::Punctuated;
use syn::visit_mut::{self, VisitMut};
use syn::{Attribute, ImplItem, Item, Meta, Stmt, Token, TraitItem};

use super::workspace::rel;

/// One file of a crate's module tree.
pub(crate) struct SourceFile {
    /// Path from the workspace root, `/`-separated: what findings print.
    pub rel: String,
    /// The file's module path inside its crate (empty for the crate root).
    pub module: Vec<String>,
    /// The syntax tree, without its `#[cfg(test)]` items.
    pub ast: syn::File,
}

/// The module tree of one crate root (a library or a binary).
pub(crate) struct CrateTree {
    /// Every non-test file of the tree, the root first.
    pub files: Vec<SourceFile>,
}

/// Reads the module tree rooted at `root_file` (`src/lib.rs`, `src/main.rs`).
pub(crate) fn load_tree(workspace: &Path, root_file: &Path) -> Result<CrateTree> {
    let dir = root_file
        .parent()
        .with_context(|| format!("{} has no folder", root_file.display()))?;
    let mut files = Vec::new();
    let mut pending = vec![(root_file.to_path_buf(), Vec::new(), dir.to_path_buf())];
    while let Some((path, module, mod_dir)) = pending.pop() {
        if let Some(file) = load_file(workspace, &path, module, &mod_dir, &mut pending)? {
            files.push(file);
        }
    }
    // The root first, then by path: findings come out in a stable order.
    if let Some(rest) = files.get_mut(1..) {
        rest.sort_by(|a, b| a.rel.cmp(&b.rel));
    }
    Ok(CrateTree { files })
}

/// The line a span starts on (1-based).
pub(crate) fn line(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// An identifier as written, without a raw prefix (`r#type` → `type`).
pub(crate) fn name(ident: &proc_macro2::Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map(str::to_owned).unwrap_or(s)
}

/// Parses one file and queues the files it declares. `None` for test code.
fn load_file(
    workspace: &Path,
    path: &Path,
    module: Vec<String>,
    mod_dir: &Path,
    pending: &mut Vec<(PathBuf, Vec<String>, PathBuf)>,
) -> Result<Option<SourceFile>> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Ok(None);
    }
    let rel = rel(workspace, path);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {rel}"))?;
    let mut ast = syn::parse_file(&text)
        .map_err(|e| anyhow!("{rel}:{}: cannot parse: {e}", line(e.span())))?;
    if is_test_only(&ast.attrs) {
        return Ok(None);
    }
    StripTests.visit_file_mut(&mut ast);
    let file_dir = path.parent().unwrap_or(mod_dir);
    declared_files(&rel, &ast.items, &module, mod_dir, Some(file_dir), pending)?;
    Ok(Some(SourceFile { rel, module, ast }))
}

/// Queues the files that `mod x;` items declare, looking into inline modules.
/// `file_dir` is the folder of the file when `items` are its top level
/// (where a `#[path]` is relative to), `None` inside an inline module.
fn declared_files(
    rel: &str,
    items: &[Item],
    module: &[String],
    mod_dir: &Path,
    file_dir: Option<&Path>,
    pending: &mut Vec<(PathBuf, Vec<String>, PathBuf)>,
) -> Result<()> {
    for item in items {
        let Item::Mod(m) = item else { continue };
        let name = name(&m.ident);
        let mut child = module.to_vec();
        child.push(name.clone());
        let child_dir = mod_dir.join(&name);
        if let Some((_, items)) = &m.content {
            declared_files(rel, items, &child, &child_dir, None, pending)?;
            continue;
        }
        if let Some(path) = path_attr(&m.attrs) {
            let path = file_dir.unwrap_or(mod_dir).join(path);
            let dir = path.parent().unwrap_or(mod_dir).to_path_buf();
            pending.push((path, child, dir));
            continue;
        }
        let flat = mod_dir.join(format!("{name}.rs"));
        let nested = child_dir.join("mod.rs");
        let path = match (flat.exists(), nested.exists()) {
            (true, _) => flat,
            (false, true) => nested,
            (false, false) => bail!(
                "{rel}:{}: no file for `mod {name};` (looked for {} and {})",
                line(m.ident.span()),
                flat.display(),
                nested.display()
            ),
        };
        pending.push((path, child, child_dir));
    }
    Ok(())
}

/// The value of a `#[path = "..."]` attribute.
fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Whether the attributes compile their item only for tests: a
/// `#[cfg(test)]`, or a `#[cfg(all(..))]` one of whose parts is `test`.
pub(crate) fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| needs_test(&m)))
}

fn needs_test(predicate: &Meta) -> bool {
    match predicate {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(list) if list.path.is_ident("all") => list
            .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
            .is_ok_and(|parts| parts.iter().any(needs_test)),
        _ => false,
    }
}

/// Cuts `#[cfg(test)]` items out of a syntax tree.
struct StripTests;

impl StripTests {
    fn items(items: &mut Vec<Item>) {
        items.retain(|i| !is_test_only(item_attrs(i)));
    }
}

impl VisitMut for StripTests {
    fn visit_file_mut(&mut self, f: &mut syn::File) {
        Self::items(&mut f.items);
        visit_mut::visit_file_mut(self, f);
    }

    fn visit_item_mod_mut(&mut self, m: &mut syn::ItemMod) {
        if let Some((_, items)) = &mut m.content {
            Self::items(items);
        }
        visit_mut::visit_item_mod_mut(self, m);
    }

    fn visit_item_impl_mut(&mut self, i: &mut syn::ItemImpl) {
        i.items.retain(|item| {
            !is_test_only(match item {
                ImplItem::Const(c) => &c.attrs,
                ImplItem::Fn(f) => &f.attrs,
                ImplItem::Type(t) => &t.attrs,
                ImplItem::Macro(m) => &m.attrs,
                _ => &[],
            })
        });
        visit_mut::visit_item_impl_mut(self, i);
    }

    fn visit_item_trait_mut(&mut self, t: &mut syn::ItemTrait) {
        t.items.retain(|item| {
            !is_test_only(match item {
                TraitItem::Const(c) => &c.attrs,
                TraitItem::Fn(f) => &f.attrs,
                TraitItem::Type(t) => &t.attrs,
                TraitItem::Macro(m) => &m.attrs,
                _ => &[],
            })
        });
        visit_mut::visit_item_trait_mut(self, t);
    }

    fn visit_block_mut(&mut self, b: &mut syn::Block) {
        b.stmts.retain(|s| {
            !is_test_only(match s {
                Stmt::Local(l) => &l.attrs,
                Stmt::Item(i) => item_attrs(i),
                Stmt::Macro(m) => &m.attrs,
                Stmt::Expr(..) => &[],
            })
        });
        visit_mut::visit_block_mut(self, b);
    }

    fn visit_expr_match_mut(&mut self, m: &mut syn::ExprMatch) {
        m.arms.retain(|arm| !is_test_only(&arm.attrs));
        visit_mut::visit_expr_match_mut(self, m);
    }

    fn visit_fields_named_mut(&mut self, f: &mut syn::FieldsNamed) {
        f.named = std::mem::take(&mut f.named)
            .into_iter()
            .filter(|field| !is_test_only(&field.attrs))
            .collect();
        visit_mut::visit_fields_named_mut(self, f);
    }

    fn visit_item_enum_mut(&mut self, e: &mut syn::ItemEnum) {
        e.variants = std::mem::take(&mut e.variants)
            .into_iter()
            .filter(|v| !is_test_only(&v.attrs))
            .collect();
        visit_mut::visit_item_enum_mut(self, e);
    }
}

/// The outer attributes of an item.
fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}
