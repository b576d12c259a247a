//! Rule `sans-io`: the protocol cores take inputs and the current time and
//! return outputs; they never touch sockets, spawn tasks, read clocks or run
//! async code (ARCHITECTURE.md, invariant 5). Their drivers do.
//!
//! The cores and the forbidden words are the two constants below: the one
//! home of what "the sans-IO core" means to CI. Only code counts: comments,
//! doc comments, string literals and test code (see `source`) are never seen.

use std::collections::BTreeSet;

use proc_macro2::{Ident, TokenStream, TokenTree};
use syn::visit::{self, Visit};

use super::finding::Finding;
use super::source::{line, name, CrateTree};

/// A sans-IO core: the files it is made of.
pub(crate) struct Core {
    /// What findings call it.
    pub name: &'static str,
    /// Its files: a path ending in `/` is a folder (every `.rs` file below
    /// it), any other path one file. Paths that do not exist are skipped (a
    /// file may become a folder), but a core with no file at all is a
    /// finding: the list has gone stale.
    pub paths: &'static [&'static str],
    /// Folders and files below `paths` that are not part of the core (its
    /// drivers).
    pub except: &'static [&'static str],
}

/// The sans-IO cores of the workspace.
pub(crate) const CORES: &[Core] = &[
    Core {
        name: "session core",
        paths: &["crates/switchboard-session/src/"],
        except: &["crates/switchboard-session/src/driver/"],
    },
    Core {
        name: "router core",
        paths: &[
            "crates/switchboard-hub/src/router/",
            "crates/switchboard-hub/src/outbox/",
        ],
        except: &[],
    },
    Core {
        name: "permission policy",
        paths: &["crates/switchboard-hub/src/policy/"],
        // Reading the policy file.
        except: &["crates/switchboard-hub/src/policy/load.rs"],
    },
    Core {
        name: "reliable-delivery core",
        paths: &[
            "crates/switchboard-wire/src/reliable.rs",
            "crates/switchboard-wire/src/deliver.rs",
        ],
        except: &[],
    },
    Core {
        name: "client handshake",
        paths: &[
            "crates/switchboard-discovery/src/handshake.rs",
            "crates/switchboard-discovery/src/handshake/",
        ],
        except: &[],
    },
];

/// What the code of a core must not contain.
#[derive(Clone, Copy)]
pub(crate) enum Word {
    /// An identifier, or a crate whose name starts with it (`tokio` also
    /// forbids `tokio_util`, `tokio_stream`).
    Crate(&'static str),
    /// An identifier exactly (a name, a field, a method, a call).
    Ident(&'static str),
    /// Two consecutive segments of a path (`std::net::TcpStream`, `use
    /// std::{net}`, `Instant::now()`).
    Path(&'static str, &'static str),
    /// The `async` keyword: an async fn, block or closure.
    Async,
    /// `.await`.
    Await,
}

/// The words a core must not contain, and why.
pub(crate) const FORBIDDEN: &[(Word, &str)] = &[
    (Word::Crate("tokio"), "the runtime belongs to the driver"),
    (Word::Path("std", "net"), "sockets belong to the driver"),
    (
        Word::Path("Instant", "now"),
        "the caller passes the time in",
    ),
    (
        Word::Path("SystemTime", "now"),
        "the caller passes the time in",
    ),
    (Word::Ident("spawn"), "tasks belong to the driver"),
    (Word::Async, "async code belongs to the driver"),
    (Word::Await, "async code belongs to the driver"),
];

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Word::Crate(w) => write!(f, "`{w}`"),
            Word::Ident(w) => write!(f, "`{w}`"),
            Word::Path(a, b) => write!(f, "`{a}::{b}`"),
            Word::Async => f.write_str("`async`"),
            Word::Await => f.write_str("`.await`"),
        }
    }
}

/// Checks the files of `cores` found in `trees` (test code is not in them).
pub(crate) fn check(trees: &[CrateTree], cores: &[Core]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for core in cores {
        let mut seen = 0;
        for file in trees.iter().flat_map(|t| &t.files) {
            if !in_core(core, &file.rel) {
                continue;
            }
            seen += 1;
            let mut scan = Scan::default();
            scan.visit_file(&file.ast);
            for (line, word) in scan.hits {
                let (word, why) = FORBIDDEN[word];
                findings.push(Finding::at(
                    &file.rel,
                    line,
                    "sans-io",
                    format!("{word} in the {} ({why})", core.name),
                ));
            }
        }
        if seen == 0 {
            findings.push(Finding::at(
                "xtask/src/tidy/sans_io.rs",
                0,
                "sans-io",
                format!(
                    "no file of the {} found at {}: update CORES",
                    core.name,
                    core.paths.join(", ")
                ),
            ));
        }
    }
    findings
}

fn in_core(core: &Core, rel: &str) -> bool {
    let under = |p: &&str| {
        if p.ends_with('/') {
            rel.starts_with(*p)
        } else {
            rel == *p
        }
    };
    core.paths.iter().any(under) && !core.except.iter().any(under)
}

/// Collects `(line, index into FORBIDDEN)` of every forbidden word.
#[derive(Default)]
struct Scan {
    hits: BTreeSet<(usize, usize)>,
}

impl Scan {
    fn hit(&mut self, line: usize, found: impl Fn(Word) -> bool) {
        for (i, (word, _)) in FORBIDDEN.iter().enumerate() {
            if found(*word) {
                self.hits.insert((line, i));
            }
        }
    }

    fn ident(&mut self, ident: &Ident) {
        let text = name(ident);
        self.hit(line(ident.span()), |w| match w {
            Word::Crate(c) => text == c || text.starts_with(&format!("{c}_")),
            Word::Ident(i) => text == i,
            _ => false,
        });
    }

    /// Checks each pair of consecutive segments of a path.
    fn segments(&mut self, segments: &[&Ident]) {
        for pair in segments.windows(2) {
            let (a, b) = (name(pair[0]), name(pair[1]));
            self.hit(
                line(pair[0].span()),
                |w| matches!(w, Word::Path(x, y) if x == a && y == b),
            );
        }
    }

    fn use_tree<'a>(&mut self, tree: &'a syn::UseTree, prefix: &mut Vec<&'a Ident>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(&p.ident);
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(syn::UseName { ident })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                prefix.push(ident);
                self.segments(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.segments(prefix),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }

    /// Macro bodies are tokens, not syntax: every identifier, every `a::b`,
    /// `async` and `.await` among them.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tt) in tokens.iter().enumerate() {
            match tt {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(ident) => {
                    self.ident(ident);
                    let l = line(ident.span());
                    match (name(ident).as_str(), i.checked_sub(1).map(|p| &tokens[p])) {
                        ("async", _) => self.hit(l, |w| matches!(w, Word::Async)),
                        ("await", Some(TokenTree::Punct(p))) if p.as_char() == '.' => {
                            self.hit(l, |w| matches!(w, Word::Await))
                        }
                        _ => {}
                    }
                    if let [TokenTree::Punct(c1), TokenTree::Punct(c2), TokenTree::Ident(next), ..] =
                        &tokens[i + 1..]
                    {
                        if c1.as_char() == ':' && c2.as_char() == ':' {
                            self.segments(&[ident, next]);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Scan {
    fn visit_ident(&mut self, ident: &'ast Ident) {
        self.ident(ident);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<&Ident> = path.segments.iter().map(|s| &s.ident).collect();
        self.segments(&segments);
        visit::visit_path(self, path);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, &mut Vec::new());
        visit::visit_item_use(self, item);
    }

    fn visit_signature(&mut self, sig: &'ast syn::Signature) {
        if let Some(token) = &sig.asyncness {
            self.hit(line(token.span), |w| matches!(w, Word::Async));
        }
        visit::visit_signature(self, sig);
    }

    fn visit_expr_async(&mut self, expr: &'ast syn::ExprAsync) {
        self.hit(line(expr.async_token.span), |w| matches!(w, Word::Async));
        visit::visit_expr_async(self, expr);
    }

    fn visit_expr_closure(&mut self, expr: &'ast syn::ExprClosure) {
        if let Some(token) = &expr.asyncness {
            self.hit(line(token.span), |w| matches!(w, Word::Async));
        }
        visit::visit_expr_closure(self, expr);
    }

    fn visit_expr_await(&mut self, expr: &'ast syn::ExprAwait) {
        self.hit(line(expr.await_token.span), |w| matches!(w, Word::Await));
        visit::visit_expr_await(self, expr);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}
