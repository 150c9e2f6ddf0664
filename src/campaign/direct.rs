//! `[direct]`: the settings of direct-to-MX delivery (`delivery = "direct"`), as written and
//! validated. The router that uses them is the `direct` module's.

use serde::Deserialize;
use toml::Spanned;

use super::SectionProblems;
use super::values::{Rate, check_range};

/// `[direct]`: settings of direct-to-MX delivery.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DirectSection {
    /// SMTP port of the MX hosts. Default 25 (tests point it elsewhere).
    #[serde(default)]
    pub port: Option<Spanned<u64>>,
    /// Connections per MX host. Default 2.
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
    /// Messages per connection before QUIT. Default 100.
    #[serde(default)]
    pub messages_per_connection: Option<Spanned<u64>>,
    /// Rate per recipient domain without a rule, e.g. "10/s". Unlimited when absent.
    #[serde(default)]
    pub rate: Option<Spanned<Rate>>,
    /// "opportunistic" (default), "required" or "none".
    #[serde(default)]
    pub tls: Option<Spanned<String>>,
    /// Limits for some domains, by domain or by MX host suffix.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RuleSection>>,
}

/// `[[direct.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// The recipient domain this rule is for.
    #[serde(default)]
    pub domain: Option<String>,
    /// Every domain with an MX host ending in this suffix, e.g. "google.com".
    #[serde(default)]
    pub mx_suffix: Option<String>,
    /// Connections per MX host of matching domains.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// One rate for everything the rule matches.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// TLS towards MX hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectTls {
    Opportunistic,
    Required,
    None,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub domain: Option<String>,
    pub mx_suffix: Option<String>,
    pub max_connections: Option<u32>,
    pub rate: Option<Rate>,
}

/// `[direct]`, validated.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    pub port: u16,
    pub max_connections: u32,
    pub messages_per_connection: u32,
    pub rate: Option<Rate>,
    pub tls: DirectTls,
    pub rules: Vec<Rule>,
}

/// Validates `[direct]`.
pub fn validate(s: &DirectSection) -> Result<DirectConfig, SectionProblems> {
    let mut problems = Vec::new();
    let mut num = |v: &Option<Spanned<u64>>, min: u64, max: u64, what: &str, default: u64| {
        check_range(v.as_ref(), default, min, max, &format!("direct.{what}")).unwrap_or_else(
            |problem| {
                problems.push(problem);
                default
            },
        )
    };
    let port = num(&s.port, 1, 65535, "port", 25) as u16;
    let max_connections = num(&s.max_connections, 1, 1000, "max_connections", 2) as u32;
    let messages_per_connection = num(
        &s.messages_per_connection,
        1,
        10_000_000,
        "messages_per_connection",
        100,
    ) as u32;
    let tls = match s.tls.as_ref().map(|t| t.get_ref().as_str()) {
        None | Some("opportunistic") => DirectTls::Opportunistic,
        Some("required") => DirectTls::Required,
        Some("none") => DirectTls::None,
        Some(other) => {
            problems.push((
                s.tls.as_ref().expect("some").span(),
                format!("direct.tls {other:?}: use \"opportunistic\", \"required\" or \"none\""),
            ));
            DirectTls::Opportunistic
        }
    };
    let mut rules = Vec::new();
    for r in &s.rules {
        let (span, r) = (r.span(), r.get_ref());
        if r.domain.is_some() == r.mx_suffix.is_some() {
            problems.push((
                span.clone(),
                "[[direct.rule]] needs exactly one of domain = \"example.com\" or mx_suffix = \"google.com\"".into(),
            ));
        }
        if let Some(m) = r.max_connections
            && !(1..=1000).contains(&m)
        {
            problems.push((
                span.clone(),
                format!("direct.rule max_connections = {m} is out of range: use 1 to 1000"),
            ));
        }
        let clean = |s: &Option<String>| {
            s.as_ref()
                .map(|s| s.trim().trim_matches('.').to_ascii_lowercase())
        };
        rules.push(Rule {
            domain: clean(&r.domain),
            mx_suffix: clean(&r.mx_suffix),
            max_connections: r.max_connections.map(|m| m.clamp(1, 1000) as u32),
            rate: r.rate,
        });
    }
    if problems.is_empty() {
        Ok(DirectConfig {
            port,
            max_connections,
            messages_per_connection,
            rate: s.rate.as_ref().map(|r| *r.get_ref()),
            tls,
            rules,
        })
    } else {
        Err(problems)
    }
}
