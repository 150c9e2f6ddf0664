//! The node pool of a run: resolving and starting the nodes (or the embedded receiver of a
//! demo campaign), their SMTP client settings, the run's one DNS resolver, and `--to` (one
//! test message).

use std::net::SocketAddr;
use std::sync::Arc;

use super::{SendError, prevalidating};
use crate::campaign::{Campaign, NodeAddress, TlsSetting};
use crate::send::node::Node;
use crate::send::render::Renderer;
use crate::send::source::Source;
use crate::smtp::receiver::{Receiver, ReceiverHandle, ReceiverOptions, Script};
use crate::smtp::{ClientSettings, Connection, Credentials, TlsMode};

/// Resolves and starts the node pool (and the embedded receivers of a demo campaign).
pub(super) async fn start_pool(
    campaign: &Campaign,
    dns: Option<&crate::dns::Dns>,
) -> Result<(Vec<Arc<Node>>, Vec<ReceiverHandle>), SendError> {
    let mut receivers: Vec<ReceiverHandle> = Vec::new();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for n in &campaign.nodes {
        let addr = match &n.address {
            NodeAddress::Embedded => {
                let r = start_embedded().await?;
                let addr = r.addr();
                receivers.push(r);
                addr
            }
            NodeAddress::Remote { host, port } => resolve(dns, &n.name, host, *port).await?,
        };
        let settings = client_settings(campaign, n)?;
        nodes.push(Arc::new(Node::new(
            &n.name,
            addr,
            n.weight,
            n.fallback,
            n.max_connections,
            n.messages_per_connection,
            settings,
        )));
    }
    Ok((nodes, receivers))
}

/// A node's host name through the shared resolver (an IP literal as is).
async fn resolve(
    dns: Option<&crate::dns::Dns>,
    node: &str,
    host: &str,
    port: u16,
) -> Result<SocketAddr, SendError> {
    let err = |cause| SendError::Resolve {
        node: node.to_string(),
        host: host.to_string(),
        port,
        cause,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let dns = dns.ok_or_else(|| err(std::io::Error::other("no resolver")))?;
    dns.socket_addr(host, port)
        .await
        .map_err(|e| err(std::io::Error::other(e.to_string())))
}

/// The run's one resolver, when anything needs it: a node given by host name, pre-validation
/// or direct delivery (not for a dry run, which sends nothing).
pub fn shared_resolver(
    campaign: &Campaign,
    dry_run: bool,
) -> Result<Option<Arc<crate::dns::Dns>>, SendError> {
    let named_node = campaign.nodes.iter().any(|n| {
        matches!(&n.address, NodeAddress::Remote { host, .. } if host.parse::<std::net::IpAddr>().is_err())
    });
    if dry_run || !(named_node || prevalidating(campaign)) {
        return Ok(None);
    }
    crate::dns::Dns::new(&campaign.dns)
        .map(|d| Some(Arc::new(d)))
        .map_err(SendError::Dns)
}

/// Client settings for MX hosts (direct delivery): no AUTH, TLS per `[direct] tls`.
pub(super) fn direct_settings(
    campaign: &Campaign,
    cfg: &crate::send::direct::DirectConfig,
) -> Result<Arc<ClientSettings>, SendError> {
    let s = &campaign.smtp;
    let mode = match cfg.tls {
        crate::send::direct::DirectTls::Opportunistic => TlsMode::Opportunistic,
        crate::send::direct::DirectTls::Required => TlsMode::StartTls,
        crate::send::direct::DirectTls::None => TlsMode::None,
    };
    let mut b = ClientSettings::builder(s.helo.clone())
        .tls(mode, "localhost")
        .connect_timeout(s.connect_timeout)
        .command_timeout(s.command_timeout)
        .data_timeout(s.data_timeout)
        .pipelining(s.pipelining);
    if let Some(ca) = &s.ca_file {
        b = b.ca_file(ca.clone());
    }
    b.build().map_err(|cause| SendError::Client {
        node: "direct".into(),
        cause,
    })
}

async fn start_embedded() -> Result<ReceiverHandle, SendError> {
    Receiver::start(ReceiverOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pipelining: true,
        // The demo's node answers scripted recipients (`tempfail+`, …) as it always has.
        script: Some(Script::default()),
        ..ReceiverOptions::default()
    })
    .await
    .map_err(SendError::Receiver)
}

/// SMTP client settings of one node; the password comes from the environment here and only here.
pub fn client_settings(
    campaign: &Campaign,
    n: &crate::campaign::Node,
) -> Result<Arc<ClientSettings>, SendError> {
    let s = &campaign.smtp;
    let mode = match n.tls {
        TlsSetting::None => TlsMode::None,
        TlsSetting::Starttls => TlsMode::StartTls,
        TlsSetting::Tls => TlsMode::Tls,
    };
    let mut b = ClientSettings::builder(s.helo.clone())
        .tls(mode, n.tls_server_name.clone())
        .connect_timeout(s.connect_timeout)
        .command_timeout(s.command_timeout)
        .data_timeout(s.data_timeout)
        .pipelining(s.pipelining);
    if let Some(ca) = &s.ca_file {
        b = b.ca_file(ca.clone());
    }
    if let Some(auth) = &n.auth {
        let password =
            std::env::var(&auth.password_env).map_err(|_| SendError::MissingPassword {
                node: n.name.clone(),
                var: auth.password_env.clone(),
            })?;
        b = b.auth(Credentials::new(auth.user.clone(), password));
    }
    b.build().map_err(|cause| SendError::Client {
        node: n.name.clone(),
        cause,
    })
}

/// `--to ADDRESS`: renders the first accepted row and sends it to one test address through the
/// first primary node (the embedded receiver included), reporting the reply.
pub fn send_one(
    campaign: &Campaign,
    mut source: Source,
    renderer: Renderer,
    to: &str,
) -> Result<String, SendError> {
    let recipient = source
        .next_recipient()?
        .ok_or_else(|| SendError::To("the list has no valid row".into()))?;
    let mut msg = renderer
        .render(recipient, crate::clock::unix_now())
        .map_err(|e| SendError::To(e.to_string()))?;
    msg.rcpt = to.to_string();
    let node = campaign
        .nodes
        .iter()
        .find(|n| !n.fallback)
        .ok_or_else(|| SendError::To("no primary node".into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SendError::Runtime)?;
    runtime.block_on(async {
        let mut receiver = None;
        let addr = match &node.address {
            NodeAddress::Embedded => {
                let r = start_embedded().await?;
                let a = r.addr();
                receiver = Some(r);
                a
            }
            NodeAddress::Remote { host, port } => {
                let dns = shared_resolver(campaign, false)?;
                resolve(dns.as_deref(), &node.name, host, *port).await?
            }
        };
        let settings = client_settings(campaign, node)?;
        let client_err = |cause| SendError::Client {
            node: node.name.clone(),
            cause,
        };
        let mut conn = Connection::connect(addr, settings)
            .await
            .map_err(client_err)?;
        let d = conn
            .send(&msg.mail_from, &msg.rcpt, &msg.bytes)
            .await
            .map_err(client_err)?;
        conn.quit().await;
        if let Some(r) = receiver {
            r.shutdown().await;
        }
        Ok(format!(
            "row {} sent to {} via {}: {} {}",
            msg.row, msg.rcpt, node.name, d.reply.code, d.reply.text
        ))
    })
}
