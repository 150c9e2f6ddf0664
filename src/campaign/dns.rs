//! `[dns]`: the shared resolver's settings and recipient-domain pre-validation, as written and
//! validated. The resolver that uses them is the `dns` module's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::SectionProblems;
use super::values::{Dur, check_range};

/// `[dns]`: the resolver every task shares, and recipient-domain pre-validation.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// `"system"` (default): the servers of `/etc/resolv.conf`. Use `servers` for explicit ones.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Explicit upstream servers, `"IP"` or `"IP:PORT"` (default port 53), e.g.
    /// `["127.0.0.53:5353"]`. Queried over UDP (TCP on truncation).
    #[serde(default)]
    pub servers: Option<Spanned<Vec<String>>>,
    /// Answers kept in the cache. Default 8192; at least as many as the distinct recipient
    /// domains (plus their MX hosts in direct delivery) for each to be asked only once.
    #[serde(default)]
    pub cache_size: Option<Spanned<u64>>,
    /// Positive answers are kept at least this long, whatever their TTL. Default "0s".
    #[serde(default)]
    pub positive_min_ttl: Option<Spanned<Dur>>,
    /// ... and at most this long. Default: the record's TTL (up to a day).
    #[serde(default)]
    pub positive_max_ttl: Option<Spanned<Dur>>,
    /// NXDOMAIN / no-data answers are kept at least this long. Default "0s".
    #[serde(default)]
    pub negative_min_ttl: Option<Spanned<Dur>>,
    /// ... and at most this long. Default: the SOA minimum.
    #[serde(default)]
    pub negative_max_ttl: Option<Spanned<Dur>>,
    /// Timeout of one query to one server. Default "5s".
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    /// Attempts per query. Default 2.
    #[serde(default)]
    pub attempts: Option<Spanned<u64>>,
    /// SERVFAIL and timeouts (which the resolver does not cache) are remembered this long, so a
    /// broken upstream is not asked again for every recipient. Default "30s"; "0s" turns it off.
    #[serde(default)]
    pub error_ttl: Option<Spanned<Dur>>,
    /// Recipient-domain pre-validation while sending: "off" (default), "warn" (count and log
    /// domains that do not accept mail, send anyway) or "enforce" (their rows are final
    /// `failed: domain does not accept mail`, never sent).
    #[serde(default)]
    pub prevalidate: Option<Spanned<String>>,
    /// Domain lookups running at once. Default 32.
    #[serde(default)]
    pub parallelism: Option<Spanned<u64>>,
}

/// Pre-validation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prevalidate {
    #[default]
    Off,
    Warn,
    Enforce,
}

/// `[dns]`, validated.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// None: the system configuration (resolv.conf).
    pub servers: Option<Vec<SocketAddr>>,
    pub cache_size: u64,
    pub positive_min_ttl: Option<Duration>,
    pub positive_max_ttl: Option<Duration>,
    pub negative_min_ttl: Option<Duration>,
    pub negative_max_ttl: Option<Duration>,
    pub timeout: Duration,
    pub attempts: usize,
    pub error_ttl: Duration,
    pub prevalidate: Prevalidate,
    pub parallelism: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: None,
            cache_size: 8192,
            positive_min_ttl: None,
            positive_max_ttl: None,
            negative_min_ttl: None,
            negative_max_ttl: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
            error_ttl: Duration::from_secs(30),
            prevalidate: Prevalidate::Off,
            parallelism: 32,
        }
    }
}

/// Validates `[dns]`; problems come with the span they point at.
pub fn validate(s: &DnsSection) -> Result<DnsConfig, SectionProblems> {
    let mut problems: SectionProblems = Vec::new();
    let mut c = DnsConfig::default();
    if let Some(u) = &s.upstream
        && u.get_ref() != "system"
    {
        problems.push((
            u.span(),
            format!(
                "dns.upstream {:?}: the only value is \"system\" (resolv.conf); list explicit servers in dns.servers = [\"127.0.0.53:5353\"]",
                u.get_ref()
            ),
        ));
    }
    if let Some(servers) = &s.servers {
        c.servers = Some(explicit_servers(s, servers, &mut problems));
    }
    let mut num = |v: &Option<Spanned<u64>>, min: u64, max: u64, what: &str, default: u64| {
        check_range(v.as_ref(), default, min, max, &format!("dns.{what}")).unwrap_or_else(
            |problem| {
                problems.push(problem);
                default
            },
        )
    };
    c.cache_size = num(&s.cache_size, 0, 10_000_000, "cache_size", c.cache_size);
    c.attempts = num(&s.attempts, 1, 10, "attempts", c.attempts as u64) as usize;
    c.parallelism = num(&s.parallelism, 1, 1024, "parallelism", c.parallelism as u64) as usize;
    let d = |v: &Option<Spanned<Dur>>| v.as_ref().map(|d| d.get_ref().0);
    c.positive_min_ttl = d(&s.positive_min_ttl);
    c.positive_max_ttl = d(&s.positive_max_ttl);
    c.negative_min_ttl = d(&s.negative_min_ttl);
    c.negative_max_ttl = d(&s.negative_max_ttl);
    for (min, max, what) in [
        (&s.positive_min_ttl, &s.positive_max_ttl, "positive"),
        (&s.negative_min_ttl, &s.negative_max_ttl, "negative"),
    ] {
        if let (Some(a), Some(b)) = (min, max)
            && a.get_ref().0 > b.get_ref().0
        {
            problems.push((
                b.span(),
                format!("dns.{what}_max_ttl is shorter than dns.{what}_min_ttl"),
            ));
        }
    }
    if let Some(t) = &s.timeout {
        if t.get_ref().0.is_zero() {
            problems.push((
                t.span(),
                "dns.timeout of 0 fails every lookup; use e.g. \"5s\"".into(),
            ));
        }
        c.timeout = t.get_ref().0;
    }
    if let Some(t) = &s.error_ttl {
        c.error_ttl = t.get_ref().0;
    }
    if let Some(p) = &s.prevalidate {
        c.prevalidate = match p.get_ref().as_str() {
            "off" => Prevalidate::Off,
            "warn" => Prevalidate::Warn,
            "enforce" => Prevalidate::Enforce,
            other => {
                problems.push((
                    p.span(),
                    format!("dns.prevalidate {other:?}: use \"off\", \"warn\" or \"enforce\""),
                ));
                Prevalidate::Off
            }
        };
    }
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(problems)
    }
}

/// `dns.servers` (`servers`, from `s`) parsed. Problems: an entry that is not IP or IP:PORT, an
/// empty list, `dns.upstream` set as well.
fn explicit_servers(
    s: &DnsSection,
    servers: &Spanned<Vec<String>>,
    problems: &mut SectionProblems,
) -> Vec<SocketAddr> {
    if s.upstream.is_some() {
        problems.push((
            servers.span(),
            "dns.servers and dns.upstream are both set; keep one".into(),
        ));
    }
    let mut out = Vec::new();
    for v in servers.get_ref() {
        match parse_server(v) {
            Some(a) => out.push(a),
            None => problems.push((
                servers.span(),
                format!("dns.servers: {v:?} is not an IP address or IP:PORT"),
            )),
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push((
            servers.span(),
            "dns.servers is empty: list at least one server, or remove it for the system resolver"
                .into(),
        ));
    }
    out
}

fn parse_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse() {
        assert_eq!(
            parse_server("127.0.0.53:5353"),
            Some("127.0.0.53:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1"),
            Some("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(parse_server("[::1]:53"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("dns.example"), None);
    }
}
