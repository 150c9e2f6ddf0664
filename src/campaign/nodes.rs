//! Validation of the relay pool: `[[node]]`.

use std::ops::Range;

use toml::Spanned;

use crate::address::valid_domain;

use super::file::NodeSection;
use super::model::{Node, NodeAddress, NodeAuth};
use super::validate::{Ctx, bounded, valid_env_name};
use super::values::TlsSetting;

/// Every `[[node]]` that is valid enough to use; problems of the others are reported.
pub(super) fn nodes(ctx: &mut Ctx<'_>, nodes: &[Spanned<NodeSection>]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for n in nodes {
        if let Some(node) = node(ctx, n.span(), n.get_ref(), &out) {
            out.push(node);
        }
    }
    if !out.is_empty() && out.iter().all(|n| n.fallback) {
        // At the first node: that is where the pool is defined.
        ctx.error(
            nodes.first().map_or(0..0, |n| n.span()),
            "every node is a fallback node: at least one [[node]] must have fallback = false",
        );
    }
    out
}

/// One `[[node]]` at `span`; `before` are the nodes already validated (names must differ).
/// `None` when it has no usable address.
fn node(ctx: &mut Ctx<'_>, span: Range<usize>, n: &NodeSection, before: &[Node]) -> Option<Node> {
    let tls = n
        .tls
        .as_ref()
        .map_or(TlsSetting::Starttls, |t| *t.get_ref());
    let address = address(ctx, span.clone(), n, tls)?;
    if n.embedded
        && tls != TlsSetting::None
        && let Some(t) = &n.tls
    {
        ctx.error(
            t.span(),
            "the embedded receiver speaks plain SMTP: use tls = \"none\" or leave tls out",
        );
    }
    let tls = if n.embedded { TlsSetting::None } else { tls };
    let name = n.name.clone().unwrap_or_else(|| match &address {
        NodeAddress::Remote { host, port } => format!("{host}:{port}"),
        NodeAddress::Embedded => "embedded".to_string(),
    });
    if before.iter().any(|o| o.name == name) {
        ctx.error(
            span,
            format!("two nodes are named {name:?}; give each [[node]] a distinct name"),
        );
    }
    let auth = auth(ctx, n, tls);
    let tls_server_name = n.tls_server_name.clone().unwrap_or_else(|| match &address {
        NodeAddress::Remote { host, .. } => host.clone(),
        NodeAddress::Embedded => "localhost".to_string(),
    });
    Some(Node {
        name,
        address,
        weight: bounded(ctx, n.weight.as_ref(), 1, 1, 1000, "weight") as u32,
        max_connections: bounded(
            ctx,
            n.max_connections.as_ref(),
            4,
            1,
            1000,
            "max_connections",
        ) as u32,
        messages_per_connection: bounded(
            ctx,
            n.messages_per_connection.as_ref(),
            1000,
            1,
            10_000_000,
            "messages_per_connection",
        ) as u32,
        rate: n.rate.as_ref().map(|r| *r.get_ref()),
        tls,
        tls_server_name,
        auth,
        fallback: n.fallback,
    })
}

/// Where the node is: a host and port, or the embedded receiver. `None` when neither or both
/// are given (the node is then left out).
fn address(
    ctx: &mut Ctx<'_>,
    span: Range<usize>,
    n: &NodeSection,
    tls: TlsSetting,
) -> Option<NodeAddress> {
    match (&n.host, n.embedded) {
        (Some(h), true) => {
            ctx.error(
                h.span(),
                "an embedded node has no host: remove host/port or set embedded = false",
            );
            None
        }
        (None, true) => {
            // The embedded receiver picks its own port on 127.0.0.1.
            if let Some(p) = &n.port {
                ctx.error(
                    p.span(),
                    "an embedded node has no port: remove port or set embedded = false",
                );
            }
            Some(NodeAddress::Embedded)
        }
        (None, false) => {
            ctx.error(
                span,
                "[[node]] needs host = \"relay.example.com\" (or embedded = true)",
            );
            None
        }
        (Some(h), false) => {
            let host = h.get_ref().trim().to_string();
            if host.parse::<std::net::IpAddr>().is_err() && !valid_domain(&host) {
                ctx.error(
                    h.span(),
                    format!("node host {host:?} is neither an IP address nor a host name"),
                );
            }
            let default_port = if tls == TlsSetting::Tls { 465 } else { 25 };
            let port = match &n.port {
                None => default_port,
                Some(p) if (1..=65535).contains(p.get_ref()) => *p.get_ref() as u16,
                Some(p) => {
                    ctx.error(p.span(), format!("port {} is not 1-65535", p.get_ref()));
                    default_port
                }
            };
            Some(NodeAddress::Remote { host, port })
        }
    }
}

/// SMTP AUTH: a user and the environment variable with the password, never over plain TCP.
fn auth(ctx: &mut Ctx<'_>, n: &NodeSection, tls: TlsSetting) -> Option<NodeAuth> {
    match (&n.auth_user, &n.password_env) {
        (Some(u), Some(p)) => {
            if !valid_env_name(p.get_ref()) {
                ctx.error(
                    p.span(),
                    format!("password_env {:?} is not an environment variable name (the password itself never goes in the file)", p.get_ref()),
                );
            }
            if tls == TlsSetting::None {
                ctx.error(
                    u.span(),
                    "AUTH over plain TCP would send the password in clear: set tls = \"starttls\" or \"tls\"",
                );
            }
            Some(NodeAuth {
                user: u.get_ref().clone(),
                password_env: p.get_ref().clone(),
            })
        }
        (Some(u), None) => {
            ctx.error(
                u.span(),
                "auth_user needs password_env = \"NAME_OF_ENV_VAR\" holding the password",
            );
            None
        }
        (None, Some(p)) => {
            ctx.error(p.span(), "password_env needs auth_user");
            None
        }
        (None, None) => None,
    }
}
