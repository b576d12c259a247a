//! From TOML text to a compiled [`Policy`]: the file's shape (serde, with
//! unknown keys refused) and every check that names a key and a line.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use serde::Deserialize;
use switchboard_discovery::{current_uid, Secret};
use toml::Spanned;

use super::pattern::{GlobSet, SubjectSet};
use super::{NameMap, Policy, PolicyError, Principal, Rights, OWNER};
use crate::subject::validate_pattern;

/// The policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    owner: Option<Spanned<String>>,
    #[serde(default)]
    principal: Vec<Spanned<PrincipalDef>>,
}

/// One `[[principal]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalDef {
    name: Spanned<String>,
    #[serde(default)]
    token_sha256: Vec<Spanned<String>>,
    #[serde(default)]
    unix_uid: Vec<Spanned<u32>>,
    #[serde(default)]
    unix_gid: Vec<Spanned<u32>>,
    #[serde(default)]
    cert_cn: Vec<Spanned<String>>,
    #[serde(default)]
    cert_san: Vec<Spanned<String>>,
    #[serde(default)]
    hub_secret: Option<Spanned<bool>>,
    #[serde(default)]
    ids: Vec<Spanned<String>>,
    #[serde(default)]
    publish: Rule,
    #[serde(default)]
    subscribe: Rule,
    #[serde(default)]
    kv: Kv,
    #[serde(default)]
    send: Vec<Spanned<String>>,
    #[serde(default)]
    sessions: bool,
    #[serde(default)]
    standby: bool,
    #[serde(default)]
    http: bool,
    #[serde(default)]
    clients: bool,
    #[serde(default)]
    broadcast: bool,
}

/// `publish` and `subscribe`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

/// `kv`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Kv {
    #[serde(default)]
    read: Vec<Spanned<String>>,
    #[serde(default)]
    write: Vec<Spanned<String>>,
}

/// Longest message quoted from a parser error.
const MAX_MESSAGE: usize = 300;

/// Parses and checks `text`.
pub(super) fn parse(text: &str) -> Result<Policy, PolicyError> {
    let file: File = toml::from_str(text).map_err(|e| {
        let mut message: String = e.message().trim().chars().take(MAX_MESSAGE).collect();
        message = message.replace('\n', " ");
        invalid(text, e.span(), message)
    })?;
    Builder::new(text).build(file)
}

/// An error at `span` of `text`.
fn invalid(text: &str, span: Option<Range<usize>>, message: String) -> PolicyError {
    let at = span.map_or(0, |s| s.start.min(text.len()));
    let line = text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1;
    PolicyError::Invalid {
        path: None,
        line,
        message,
    }
}

struct Builder<'t> {
    text: &'t str,
    policy: Policy,
}

impl<'t> Builder<'t> {
    fn new(text: &'t str) -> Builder<'t> {
        let owner = Principal {
            name: OWNER.into(),
            rights: Rights {
                all: true,
                ..Rights::default()
            },
            ..Principal::default()
        };
        let mut by_name = NameMap::default();
        by_name.insert(OWNER.to_string(), 0);
        Builder {
            text,
            policy: Policy {
                principals: vec![owner],
                by_name,
                tokens: HashMap::new(),
                uids: HashMap::new(),
                gids: HashMap::new(),
                cns: NameMap::default(),
                sans: NameMap::default(),
                hub_secret: None,
                owner_all: true,
                hub_uid: current_uid(),
                cn_by_addr: Mutex::new(HashMap::new()),
            },
        }
    }

    fn err<T>(&self, span: Range<usize>, message: String) -> Result<T, PolicyError> {
        Err(invalid(self.text, Some(span), message))
    }

    fn build(mut self, file: File) -> Result<Policy, PolicyError> {
        if let Some(owner) = &file.owner {
            match owner.get_ref().as_str() {
                "all" => self.policy.owner_all = true,
                "none" => self.policy.owner_all = false,
                other => {
                    return self.err(
                        owner.span(),
                        format!("owner = {other:?} is not a choice; write owner = \"all\" or owner = \"none\""),
                    )
                }
            }
        }
        for def in file.principal {
            let span = def.span();
            self.principal(def.into_inner(), span)?;
        }
        Ok(self.policy)
    }

    fn principal(&mut self, def: PrincipalDef, span: Range<usize>) -> Result<(), PolicyError> {
        let name = def.name.get_ref().clone();
        let name_span = def.name.span();
        check_name(&name).or_else(|m| self.err(name_span.clone(), m))?;
        if self.policy.by_name.contains_key(&name) {
            let why = if name == OWNER {
                "is reserved for the hub's own user"
            } else {
                "is used twice"
            };
            return self.err(
                name_span,
                format!("principal name '{name}' {why}; choose another name"),
            );
        }
        let index = self.policy.principals.len();
        let mut p = Principal {
            name: name.clone(),
            ..Principal::default()
        };
        let recognisers = def.token_sha256.len()
            + def.unix_uid.len()
            + def.unix_gid.len()
            + def.cert_cn.len()
            + def.cert_san.len()
            + usize::from(def.hub_secret.as_ref().is_some_and(|h| *h.get_ref()));
        if recognisers == 0 {
            return self.err(
                span,
                format!("principal '{name}' has no recogniser, so nobody could be it; give it token_sha256, unix_uid, unix_gid, cert_cn, cert_san or hub_secret = true"),
            );
        }
        for t in &def.token_sha256 {
            let digest = parse_digest(t.get_ref()).ok_or(()).or_else(|()| {
                self.err(
                    t.span(),
                    format!("principal '{name}': a token_sha256 entry is not 64 hex digits; store what `switchboard policy hash-token` prints, never the token itself"),
                )
            })?;
            let secret = Secret::from_token_digest(digest);
            let id = secret.key_id();
            if let Some((_, other)) = self.policy.tokens.get(&id) {
                let other = self
                    .policy
                    .principals
                    .get(*other)
                    .map_or(&name, |o| &o.name);
                return self.err(
                    t.span(),
                    format!("principal '{name}': this token is already listed for principal '{other}'; a token belongs to one principal"),
                );
            }
            self.policy.tokens.insert(id, (secret, index));
            p.tokens += 1;
        }
        for (list, key, map, out) in [
            (
                &def.unix_uid,
                "unix_uid",
                &mut self.policy.uids,
                &mut p.uids,
            ),
            (
                &def.unix_gid,
                "unix_gid",
                &mut self.policy.gids,
                &mut p.gids,
            ),
        ] {
            for v in list {
                if let Some(other) = map.insert(*v.get_ref(), index) {
                    let other = self.policy.principals.get(other).map_or(&name, |o| &o.name);
                    return Err(invalid(
                        self.text,
                        Some(v.span()),
                        format!("principal '{name}': {key} {} is already claimed by principal '{other}'; an id belongs to one principal", v.get_ref()),
                    ));
                }
                out.push(*v.get_ref());
            }
        }
        for (list, key, map, out) in [
            (&def.cert_cn, "cert_cn", &mut self.policy.cns, &mut p.cns),
            (
                &def.cert_san,
                "cert_san",
                &mut self.policy.sans,
                &mut p.sans,
            ),
        ] {
            for v in list {
                let value = v.get_ref();
                let problem = if value.is_empty() {
                    Some("is empty".to_string())
                } else {
                    map.insert(value.clone(), index).map(|other| {
                        let other = self.policy.principals.get(other).map_or(&name, |o| &o.name);
                        format!("is already claimed by principal '{other}'")
                    })
                };
                if let Some(problem) = problem {
                    return Err(invalid(
                        self.text,
                        Some(v.span()),
                        format!("principal '{name}': {key} {value:?} {problem}; a certificate name belongs to one principal"),
                    ));
                }
                out.push(value.clone());
            }
        }
        if let Some(h) = def.hub_secret.as_ref().filter(|h| *h.get_ref()) {
            if let Some(other) = self.policy.hub_secret {
                let other = &self.policy.principals[other].name;
                return self.err(
                    h.span(),
                    format!("principal '{name}': hub_secret is already true for principal '{other}'; the hub's secret makes a client one principal"),
                );
            }
            self.policy.hub_secret = Some(index);
            p.hub_secret = true;
        }
        for id in &def.ids {
            check_id_glob(id.get_ref())
                .or_else(|m| self.err(id.span(), format!("principal '{name}': ids entry {m}")))?;
            p.uses_cn |= id.get_ref().contains("{cn}");
            p.rights.ids.push(id.get_ref().clone());
        }
        p.rights.publish_allow = self.subjects(&name, "publish.allow", &def.publish.allow)?;
        p.rights.publish_deny = self.subjects(&name, "publish.deny", &def.publish.deny)?;
        p.rights.subscribe_allow = self.subjects(&name, "subscribe.allow", &def.subscribe.allow)?;
        p.rights.subscribe_deny = self.subjects(&name, "subscribe.deny", &def.subscribe.deny)?;
        p.rights.kv_read = def.kv.read.iter().map(|k| k.get_ref().clone()).collect();
        p.rights.kv_write = def.kv.write.iter().map(|k| k.get_ref().clone()).collect();
        for s in &def.send {
            if s.get_ref().is_empty() {
                return self.err(
                    s.span(),
                    format!("principal '{name}': a send entry is empty; write a client id or service name, `*` for any run of characters"),
                );
            }
        }
        p.rights.send = GlobSet::new(def.send.iter().map(|s| s.get_ref()));
        p.rights.sessions = def.sessions;
        p.rights.standby = def.standby;
        p.rights.http = def.http;
        p.rights.clients = def.clients;
        p.rights.broadcast = def.broadcast;
        self.policy.by_name.insert(name, index);
        self.policy.principals.push(p);
        Ok(())
    }

    fn subjects(
        &self,
        name: &str,
        key: &str,
        list: &[Spanned<String>],
    ) -> Result<SubjectSet, PolicyError> {
        for p in list {
            if let Err(e) = validate_pattern(p.get_ref(), usize::MAX) {
                return self.err(
                    p.span(),
                    format!("principal '{name}': {key} pattern {:?} {e}; use `.`-separated segments, `*` for one segment and a final `>` for the rest", p.get_ref()),
                );
            }
        }
        Ok(SubjectSet::new(list.iter().map(|p| p.get_ref())))
    }
}

/// Longest principal name.
const MAX_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("principal name {name:?} is not valid; use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"))
    }
}

/// The templates an id glob may name.
const TEMPLATES: [&str; 3] = ["{uid}", "{principal}", "{cn}"];

fn check_id_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("is empty; write a client id, `*` for any run of characters".into());
    }
    let mut rest = glob;
    while let Some(open) = rest.find(['{', '}']) {
        let tail = &rest[open..];
        match TEMPLATES.iter().find(|t| tail.starts_with(**t)) {
            Some(t) => rest = &tail[t.len()..],
            None => {
                return Err(format!(
                    "{glob:?} has a brace outside the templates {{uid}}, {{principal}} and {{cn}}"
                ))
            }
        }
    }
    Ok(())
}

/// 64 hex digits → 32 bytes.
fn parse_digest(hex_digits: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits.trim(), &mut out).ok()?;
    Some(out)
}
