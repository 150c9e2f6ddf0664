//! DNS: one shared caching resolver, what it learnt about recipient domains, mail routes.
//!
//! Mass mailing is DNS-heavy; the classic setups ran a caching DNS server next to the feeder.
//! blast carries that resolver inside: one [`hickory_resolver`] resolver, built once per run
//! from `[dns]` (its settings, [`DnsConfig`], are read and validated by `campaign`) and shared
//! by every task (it is `Clone + Send + Sync`; concurrent cold lookups of one name make one
//! upstream query, positive answers and NXDOMAIN are cached within `cache_size` and the
//! configured TTL bounds). hickory does not cache SERVFAIL or timeouts, so [`Dns`] keeps a
//! small negative cache of its own for those (`error_ttl`): a dead upstream is asked about a
//! name once per `error_ttl`, not once per recipient.
//!
//! What uses it:
//! - node host names (`[[node]] host`) are resolved through it, and blast connects by IP
//!   with the node's TLS server name;
//! - [`mail_route`](Dns::mail_route): a recipient domain's MX hosts in preference order, or
//!   the domain itself when it has no MX but an address (RFC 5321 §5.1); NXDOMAIN, a null MX
//!   (RFC 7505, `MX 0 .`) and "neither MX nor address" mean the domain does not accept mail;
//! - the pre-validation stage of `blast send` (`send::prevalidate`), which looks up each
//!   distinct recipient domain once and keeps what it learnt in [`Domains`];
//! - direct-to-MX delivery (`send::direct`), which routes by [`Domains`] and [`Dns::mail_route`];
//! - `blast check`: SPF, DMARC and DKIM key records of the sending domain.
//!
//! Uses: address, campaign (its validated `[dns]` settings). Nothing of the send pipeline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::address::domain_of;
use crate::campaign::Campaign;

/// `[dns]` is read and validated with the rest of the campaign file.
pub use crate::campaign::{DnsConfig, Prevalidate};

// ---------------------------------------------------------------------------------------------
// The resolver.
// ---------------------------------------------------------------------------------------------

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no record of that type.
    NoData,
    /// SERVFAIL, timeout, refused, network trouble: try again later.
    Temporary(Arc<str>),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::NxDomain => f.write_str("no such domain (NXDOMAIN)"),
            LookupError::NoData => f.write_str("no record of that type"),
            LookupError::Temporary(e) => write!(f, "temporary DNS failure: {e}"),
        }
    }
}

/// Counters of the resolver and the pre-validation stage (for the summary).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Distinct recipient domains looked up.
    pub domain_lookups: AtomicU64,
    /// Rows whose domain was already known (or being looked up): no lookup of their own.
    pub cache_hits: AtomicU64,
    /// Domains that do not accept mail (NXDOMAIN, null MX, neither MX nor address).
    pub negative: AtomicU64,
    /// Domain lookups that failed temporarily (SERVFAIL, timeout).
    pub temporary: AtomicU64,
    /// Queries answered from the SERVFAIL/timeout negative cache.
    pub error_cache_hits: AtomicU64,
    /// Rows made final `failed` because their domain does not accept mail (enforce, direct).
    pub rows_failed: AtomicU64,
    /// Rows sent although their domain does not accept mail (warn).
    pub rows_warned: AtomicU64,
}

/// A snapshot of [`DnsStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsReport {
    pub domain_lookups: u64,
    pub cache_hits: u64,
    pub negative: u64,
    pub temporary: u64,
    pub error_cache_hits: u64,
    pub rows_failed: u64,
    pub rows_warned: u64,
}

impl DnsStats {
    pub fn report(&self) -> DnsReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsReport {
            domain_lookups: g(&self.domain_lookups),
            cache_hits: g(&self.cache_hits),
            negative: g(&self.negative),
            temporary: g(&self.temporary),
            error_cache_hits: g(&self.error_cache_hits),
            rows_failed: g(&self.rows_failed),
            rows_warned: g(&self.rows_warned),
        }
    }
}

/// One mail host of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailHost {
    pub preference: u16,
    /// Lowercase, without the final dot.
    pub name: String,
    /// Its addresses (filled when asked for, e.g. for direct delivery; may be empty when
    /// the host's own lookup failed).
    pub addrs: Vec<IpAddr>,
}

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// MX hosts by preference (lowest first); the domain itself as an implicit MX (preference 0)
    /// when it has no MX but an address.
    Hosts(Vec<MailHost>),
    /// The domain does not accept mail; the text says why.
    NoMail(NoMail),
    /// A temporary DNS failure: nothing known.
    Unknown(Arc<str>),
}

/// Why a domain does not accept mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMail {
    NxDomain,
    NullMx,
    NoAddress,
}

impl NoMail {
    /// The synthetic SMTP reply recorded for its rows.
    pub fn reply_line(self) -> &'static str {
        match self {
            NoMail::NxDomain => {
                "550 5.1.2 domain does not accept mail: the domain does not exist (NXDOMAIN)"
            }
            NoMail::NullMx => "556 5.1.10 domain does not accept mail: null MX (RFC 7505)",
            NoMail::NoAddress => {
                "550 5.1.2 domain does not accept mail: neither MX nor address records"
            }
        }
    }
}

/// SERVFAIL/timeout answers remembered: (name, type) → (until, error text).
type ErrorCache = HashMap<(String, RecordType), (Instant, Arc<str>)>;

/// The shared resolver plus a negative cache for SERVFAIL/timeouts.
pub struct Dns {
    resolver: TokioResolver,
    errors: Mutex<ErrorCache>,
    error_ttl: Duration,
    pub stats: DnsStats,
}

impl Dns {
    /// Builds the resolver (needs a tokio runtime only when lookups run).
    pub fn new(c: &DnsConfig) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &c.servers {
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
            Some(servers) => {
                let mut config = ResolverConfig::from_name_servers(Vec::new());
                for s in servers {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for conn in &mut ns.connections {
                        conn.port = s.port();
                    }
                    config.add_name_server(ns);
                }
                TokioResolver::builder_with_config(config, provider)
            }
        };
        let o: &mut ResolverOpts = builder.options_mut();
        o.cache_size = c.cache_size;
        o.positive_min_ttl = c.positive_min_ttl;
        o.positive_max_ttl = c.positive_max_ttl;
        o.negative_min_ttl = c.negative_min_ttl;
        o.negative_max_ttl = c.negative_max_ttl;
        o.timeout = c.timeout;
        o.attempts = c.attempts;
        // Queries in flight on one connection: room for every parallel lookup (MX + A + AAAA).
        o.max_active_requests = o.max_active_requests.max(c.parallelism * 4);
        // Names are always fully qualified: no search list.
        o.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            errors: Mutex::new(HashMap::new()),
            error_ttl: c.error_ttl,
            stats: DnsStats::default(),
        })
    }

    /// One query through the cache, with the SERVFAIL/timeout negative cache in front.
    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, LookupError> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let key = (fqdn, rtype);
        if !self.error_ttl.is_zero() {
            let mut errors = self.errors.lock().expect("not poisoned");
            if let Some((until, e)) = errors.get(&key) {
                if *until > Instant::now() {
                    self.stats.error_cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Err(LookupError::Temporary(e.clone()));
                }
                errors.remove(&key);
            }
        }
        match self.resolver.lookup(key.0.as_str(), rtype).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect()),
            Err(e) if e.is_nx_domain() => Err(LookupError::NxDomain),
            Err(e) if e.is_no_records_found() => Err(LookupError::NoData),
            Err(e) => {
                let e: Arc<str> = temporary_text(&e).into();
                if !self.error_ttl.is_zero() {
                    let mut errors = self.errors.lock().expect("not poisoned");
                    if errors.len() > 100_000 {
                        let now = Instant::now();
                        errors.retain(|_, (until, _)| *until > now);
                    }
                    errors.insert(key, (Instant::now() + self.error_ttl, e.clone()));
                }
                Err(LookupError::Temporary(e))
            }
        }
    }

    /// The IPv4 then IPv6 addresses of a host (an IP literal is returned as is).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let (v4, v6) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        let mut out: Vec<IpAddr> = Vec::new();
        let mut errors = Vec::new();
        for r in [v4, v6] {
            match r {
                Ok(data) => out.extend(data.iter().filter_map(|d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => errors.push(e),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        // Prefer the most telling error: temporary (retry may help) over NXDOMAIN over no data.
        if let Some(t) = errors
            .iter()
            .find(|e| matches!(e, LookupError::Temporary(_)))
        {
            return Err(t.clone());
        }
        if errors.contains(&LookupError::NxDomain) {
            return Err(LookupError::NxDomain);
        }
        Err(LookupError::NoData)
    }

    /// A host and port resolved through the shared resolver: the first address.
    pub async fn socket_addr(&self, host: &str, port: u16) -> Result<SocketAddr, LookupError> {
        let addrs = self.addresses(host).await?;
        Ok(SocketAddr::new(addrs[0], port))
    }

    /// The TXT strings at a name (each record's strings joined).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let data = self.query(name, RecordType::TXT).await?;
        Ok(data
            .iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Where mail for `domain` goes (RFC 5321 §5.1, RFC 7505). With `addresses`, each mail
    /// host's addresses are looked up too (direct delivery).
    pub async fn mail_route(&self, domain: &str, addresses: bool) -> Route {
        let mx = match self.query(domain, RecordType::MX).await {
            Ok(data) => data,
            Err(LookupError::NxDomain) => return Route::NoMail(NoMail::NxDomain),
            Err(LookupError::NoData) => Vec::new(),
            Err(LookupError::Temporary(e)) => return Route::Unknown(e),
        };
        let mut hosts: Vec<MailHost> = mx
            .iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some(MailHost {
                    preference: m.preference,
                    name: m
                        .exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                    addrs: Vec::new(),
                }),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            // No MX: the domain itself is the implicit MX if it has an address.
            return match self.addresses(domain).await {
                Ok(addrs) => Route::Hosts(vec![MailHost {
                    preference: 0,
                    name: domain.to_string(),
                    addrs: if addresses { addrs } else { Vec::new() },
                }]),
                Err(LookupError::Temporary(e)) => Route::Unknown(e),
                Err(_) => Route::NoMail(NoMail::NoAddress),
            };
        }
        // RFC 7505: a single MX with the root as exchange says "no mail here".
        if hosts.len() == 1 && hosts[0].name.is_empty() {
            return Route::NoMail(NoMail::NullMx);
        }
        hosts.retain(|h| !h.name.is_empty());
        hosts.sort_by(|a, b| a.preference.cmp(&b.preference).then(a.name.cmp(&b.name)));
        if addresses {
            let lookups = hosts.iter().map(|h| self.addresses(&h.name));
            let results = futures_join_all(lookups).await;
            let mut temporary = None;
            for (h, r) in hosts.iter_mut().zip(results) {
                match r {
                    Ok(a) => h.addrs = a,
                    Err(LookupError::Temporary(e)) => temporary = Some(e),
                    Err(_) => {}
                }
            }
            if hosts.iter().all(|h| h.addrs.is_empty()) {
                return match temporary {
                    Some(e) => Route::Unknown(e),
                    None => Route::NoMail(NoMail::NoAddress),
                };
            }
        }
        Route::Hosts(hosts)
    }
}

/// Runs futures concurrently on the current task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

fn temporary_text(e: &NetError) -> String {
    match e {
        NetError::Timeout => "timed out".to_string(),
        e => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-validation stage.
// ---------------------------------------------------------------------------------------------

/// What is known about recipient domains, shared by the pre-validation stage (which fills it)
/// and direct delivery (which reads it).
#[derive(Default)]
pub struct Domains {
    map: RwLock<HashMap<Box<str>, Arc<Route>>>,
}

impl Domains {
    pub fn get(&self, domain: &str) -> Option<Arc<Route>> {
        self.map.read().expect("not poisoned").get(domain).cloned()
    }

    pub fn insert(&self, domain: &str, route: Arc<Route>) {
        self.map
            .write()
            .expect("not poisoned")
            .insert(domain.into(), route);
    }

    /// Forgets a domain (a temporary failure: look it up again next time).
    pub fn remove(&self, domain: &str) {
        self.map.write().expect("not poisoned").remove(domain);
    }
}

// ---------------------------------------------------------------------------------------------
// `blast check`: the sending domain's DNS.
// ---------------------------------------------------------------------------------------------

/// Warnings about the sending domain's DNS: no SPF record at the From domain or the bounce
/// (MAIL FROM) domain, no DMARC record (at the From domain or its organisational domain), a
/// DKIM selector without a key. Looked up through the campaign's `[dns]` resolver.
pub fn sender_checks(campaign: &Campaign) -> Vec<String> {
    let dns = match Dns::new(&campaign.dns) {
        Ok(d) => d,
        Err(e) => return vec![format!("DNS checks skipped: {e}")],
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("DNS checks skipped: {e}")],
    };
    let from = domain_of(&campaign.from.address).to_ascii_lowercase();
    let bounce = campaign.envelope.verp_domain.clone();
    rt.block_on(async {
        let mut out = Vec::new();
        let has = |records: &Result<Vec<String>, LookupError>, prefix: &str| match records {
            Ok(r) => Ok(r.iter().any(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with(&prefix.to_ascii_lowercase())
            })),
            Err(LookupError::Temporary(e)) => Err(e.to_string()),
            Err(_) => Ok(false),
        };
        let mut spf_domains = vec![from.clone()];
        if bounce != from {
            spf_domains.push(bounce.clone());
        }
        for d in &spf_domains {
            match has(&dns.txt(d).await, "v=spf1") {
                Ok(true) => {}
                Ok(false) => out.push(format!(
                    "{d} has no SPF record (TXT \"v=spf1 ...\"): receivers cannot check the envelope sender"
                )),
                Err(e) => out.push(format!("could not check SPF of {d}: {e}")),
            }
        }
        let labels: Vec<&str> = from.split('.').collect();
        let org = labels[labels.len().saturating_sub(2)..].join(".");
        let mut dmarc = has(&dns.txt(&format!("_dmarc.{from}")).await, "v=DMARC1");
        if dmarc == Ok(false) && org != from {
            dmarc = has(&dns.txt(&format!("_dmarc.{org}")).await, "v=DMARC1");
        }
        match dmarc {
            Ok(true) => {}
            Ok(false) => out.push(format!(
                "{from} has no DMARC record (TXT at _dmarc.{from}): bulk senders must publish one"
            )),
            Err(e) => out.push(format!("could not check DMARC of {from}: {e}")),
        }
        if let Some(dkim) = &campaign.dkim {
            for s in &dkim.signers {
                let name = format!("{}._domainkey.{}", s.selector, s.domain);
                let key = match dns.txt(&name).await {
                    Ok(r) => Ok(r.iter().any(|t| {
                        t.split(';').any(|tag| {
                            tag.trim()
                                .strip_prefix("p=")
                                .is_some_and(|p| !p.trim().is_empty())
                        })
                    })),
                    Err(LookupError::Temporary(e)) => Err(e.to_string()),
                    Err(_) => Ok(false),
                };
                match key {
                    Ok(true) => {}
                    Ok(false) => out.push(format!(
                        "DKIM selector {} of {} has no key in DNS (TXT at {name}): signatures will not verify; publish the record `blast keys generate` printed",
                        s.selector, s.domain
                    )),
                    Err(e) => out.push(format!("could not check the DKIM key at {name}: {e}")),
                }
            }
        }
        out
    })
}
