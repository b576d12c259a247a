//! Who may call the gateway: the loopback guard (DNS-rebinding defence) on
//! every route, and the bearer token on the API routes.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use switchboard_discovery::Secret;
use switchboard_wire::ErrorCode;

use super::api::ApiError;
use super::Gateway;
use crate::router::admission::{Identity, Peer, Proof, Refusal};
use crate::tls::HttpPeer;

/// Whether `host` (a Host header or an origin's host, port allowed) names
/// this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:port
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The host (with its port) of an `Origin` header.
fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Middleware on every route: DNS-rebinding defence (loopback listeners
/// only) and response counting.
pub(super) async fn guard(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if gw.loopback {
        if let Err(e) = check_local(req.headers()) {
            gw.shared.stats.metrics.http_response(e.status.as_u16());
            return e.into_response();
        }
    }
    let resp = next.run(req).await;
    gw.shared
        .stats
        .metrics
        .http_response(resp.status().as_u16());
    resp
}

/// `403` unless `Host` and any `Origin` name loopback.
fn check_local(headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |what: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} is not a loopback name; this gateway listens on loopback and only serves pages of this machine (use localhost or 127.0.0.1)"),
        )
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| forbidden("the Host header is missing, or"))?;
    if !is_loopback_host(host) {
        return Err(forbidden("the Host header"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(origin_host)
            .is_some_and(is_loopback_host);
        if !ok {
            return Err(forbidden("the Origin header"));
        }
    }
    Ok(())
}

/// Who presents `given` as a bearer token: the hub's own token
/// ([`http_token`](super::http_token), compared in constant time) is the
/// hub's secret; with a policy, a principal's token itself is that
/// principal (found by its key id, keys compared in constant time). The
/// policy then says who that is, as for a native connection.
fn bearer_identity(gw: &Gateway, given: &str, peer: &Peer) -> Result<Identity, Refusal> {
    use subtle::ConstantTimeEq;
    let hub_token =
        given.len() == gw.token.len() && bool::from(given.as_bytes().ct_eq(gw.token.as_bytes()));
    let proof = if hub_token {
        Proof::HubSecret
    } else {
        let key = Secret::from_token(given);
        let token = gw
            .shared
            .admission
            .as_ref()
            .and_then(|a| a.token(&key.key_id()))
            .filter(|t| t.secret.same_key(&key));
        match token {
            Some(t) => Proof::Token(t.principal),
            None => {
                return Err(Refusal {
                    code: ErrorCode::AuthFailed,
                    message: "wrong bearer token".into(),
                })
            }
        }
    };
    match &gw.shared.admission {
        Some(admission) => admission.identify(peer, &proof),
        None => Ok(Identity::default()),
    }
}

/// Middleware on the API routes: the bearer token names the caller (see
/// [`bearer_identity`]), whose [`Identity`] the handlers find in the
/// request's extensions; the live feed (opened by a browser, which cannot
/// set headers on a WebSocket) may pass it as `?token=`.
pub(super) async fn require_token(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(from): ConnectInfo<HttpPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let query_token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let given = header_token.or(query_token);
    // The listener's connect info (as every route's): the address, and
    // the verified client certificate under mutual TLS.
    let peer = Peer {
        transport: "http",
        addr: from.addr.to_string(),
        unix: None,
        cert: from.cert,
    };
    let identity = match given.map(|t| bearer_identity(&gw, t, &peer)) {
        Some(Ok(identity)) => Ok(identity),
        // Known, but refused by the policy.
        Some(Err(r)) if r.code != ErrorCode::AuthFailed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            r.message,
        )),
        Some(Err(_)) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token; use the token of this hub's secret ('switchboard token') or a token its policy names",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token; send 'Authorization: Bearer <token>' (print it with 'switchboard token')",
        )),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) if e.status == StatusCode::FORBIDDEN => return e.into_response(),
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
            return resp;
        }
    };
    req.extensions_mut().insert(identity);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_origins() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "app.localhost.",
            "127.0.0.1:1",
            "127.9.9.9",
            "[::1]:80",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example",
            "10.0.0.1:80",
            "[::1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert_eq!(
            origin_host("http://localhost:3000/x"),
            Some("localhost:3000")
        );
        assert_eq!(origin_host("null"), None);
    }
}
