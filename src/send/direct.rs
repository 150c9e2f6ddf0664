//! Direct-to-MX delivery (`delivery = "direct"`): each recipient domain's MX hosts instead of
//! a relay pool.
//!
//! It reuses the relay machinery: every MX host becomes a [`Node`] of its own, created the
//! first time a domain routes to it, with the same connection loop, circuit breaker,
//! connection reuse (`messages_per_connection`), outcomes, journal and log. The dispatcher
//! asks the [`Router`] where a job goes instead of its weighted round-robin:
//!
//! - the domain's route comes from the shared [`Domains`] map that the pre-validation stage
//!   fills (always on in direct mode); a domain that failed temporarily is looked up again
//!   here, off the dispatcher's task;
//! - MX hosts are tried in preference order: the most preferred group with a healthy host
//!   gets the job (hosts of equal preference take turns); a host whose connect fails is taken
//!   out of rotation by its circuit breaker, so the job goes to the next MX; when no MX of
//!   the domain is up the job is deferred (retry policy) like a 4xx;
//! - limits: `[[direct.rule]]`s match a domain (`domain = "example.com"`) or every domain
//!   whose MX host names end in a suffix (`mx_suffix = "google.com"`). A rule's `rate` is one
//!   governor bucket for everything it matches (one for all Google-hosted domains); without a
//!   rule, `[direct] rate` is a bucket per domain. `max_connections` is per MX host (its
//!   node's connection slots), from the rule that created the node or `[direct]`;
//! - a job that cannot go now (rate limit, the host's queue is full) is parked in the
//!   dispatcher's heap for a moment, so one slow domain never holds up the others.
//!
//! The settings (`[direct]`, [`DirectConfig`]) are read and validated by `campaign`.
//!
//! TLS: `tls = "opportunistic"` (default) uses STARTTLS when the MX offers it, with the
//! certificate verified against the MX host name, and plain SMTP when it does not;
//! `"required"` refuses MX hosts without STARTTLS; `"none"` never starts TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::address::domain_of;
use crate::campaign::Rate;
use crate::dns::{Dns, Domains, MailHost, Route};
use crate::send::dispatch::{Job, Shared};
use crate::send::node::Node;
use crate::smtp::ClientSettings;

/// `[direct]` is read and validated with the rest of the campaign file.
pub use crate::campaign::{DirectConfig, DirectTls, Rule};

fn keyed(rate: Rate) -> DefaultKeyedRateLimiter<Box<str>> {
    RateLimiter::keyed(crate::send::dispatch::quota(rate))
}

/// What the router did with a job.
pub enum Placed {
    /// In an MX host's queue, or handed elsewhere (made final, deferred, being looked up).
    Done,
    /// Cannot go now: try again at this time.
    Later(Instant, Box<Job>),
}

/// The MX hosts (nodes) created so far and their connection tasks, for the summary and the
/// end of the run.
#[derive(Default)]
pub struct DirectNodes {
    pub nodes: Mutex<Vec<Arc<Node>>>,
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Routes jobs to MX hosts (see the module documentation).
pub struct Router {
    cfg: DirectConfig,
    dns: Arc<Dns>,
    domains: Arc<Domains>,
    /// Settings of the first MX host; others get a copy with their TLS name.
    settings: Arc<ClientSettings>,
    hosts: HashMap<String, Arc<Node>>,
    pub created: Arc<DirectNodes>,
    /// Per rule (same index as `cfg.rules`): its rate bucket.
    rule_limits: Vec<Option<DefaultKeyedRateLimiter<Box<str>>>>,
    /// `[direct] rate`: one bucket per domain.
    domain_limit: Option<DefaultKeyedRateLimiter<Box<str>>>,
    /// Domains being looked up again after a temporary failure, with their jobs.
    resolving: Arc<Mutex<HashMap<Box<str>, Vec<Job>>>>,
    /// Turn-taking among MX hosts of equal preference.
    turn: usize,
}

/// The name a router gives jobs it finishes or defers without an MX host.
const DNS_NODE: &str = "dns";

impl Router {
    pub fn new(
        cfg: DirectConfig,
        dns: Arc<Dns>,
        domains: Arc<Domains>,
        settings: Arc<ClientSettings>,
    ) -> Router {
        let rule_limits = cfg.rules.iter().map(|r| r.rate.map(keyed)).collect();
        let domain_limit = cfg.rate.map(keyed);
        Router {
            cfg,
            dns,
            domains,
            settings,
            hosts: HashMap::new(),
            created: Arc::new(DirectNodes::default()),
            rule_limits,
            domain_limit,
            resolving: Arc::new(Mutex::new(HashMap::new())),
            turn: 0,
        }
    }

    /// The first rule that matches a domain or one of its MX hosts.
    fn rule(&self, domain: &str, hosts: &[MailHost]) -> Option<usize> {
        self.cfg.rules.iter().position(|r| {
            r.domain.as_deref() == Some(domain)
                || r.mx_suffix.as_deref().is_some_and(|s| {
                    hosts
                        .iter()
                        .any(|h| h.name == s || h.name.ends_with(&format!(".{s}")))
                })
        })
    }

    /// Closes every MX host's queue (the end of the run).
    pub fn close(&self) {
        for n in self.hosts.values() {
            n.queue_tx.close();
        }
    }

    /// Places a job on one of its domain's MX hosts, or decides what else happens to it.
    pub fn place(&mut self, mut job: Job, shared: &Arc<Shared>) -> Placed {
        let domain = domain_of(&job.msg.rcpt).to_string();
        let Some(route) = self.domains.get(&domain) else {
            self.resolve_again(domain, job, shared);
            return Placed::Done;
        };
        let hosts = match &*route {
            Route::Hosts(h) => h,
            Route::NoMail(why) => {
                shared.outcomes.fail_job(job, why.reply_line());
                return Placed::Done;
            }
            Route::Unknown(_) => {
                self.domains.remove(&domain);
                self.resolve_again(domain, job, shared);
                return Placed::Done;
            }
        };
        let rule = self.rule(&domain, hosts);
        // Rate: the rule's bucket (shared by all it matches), else the domain's own.
        let limit = match rule {
            Some(i) if self.rule_limits[i].is_some() => {
                let key: Box<str> = self.cfg.rules[i]
                    .domain
                    .clone()
                    .or_else(|| self.cfg.rules[i].mx_suffix.clone())
                    .unwrap_or_default()
                    .into();
                self.rule_limits[i].as_ref().map(|l| (l, key))
            }
            _ => self
                .domain_limit
                .as_ref()
                .map(|l| (l, domain.as_str().into())),
        };
        if let Some((l, key)) = limit
            && let Err(not_until) = l.check_key(&key)
        {
            return Placed::Later(ready_at(&not_until), Box::new(job));
        }
        let max_connections = rule
            .and_then(|i| self.cfg.rules[i].max_connections)
            .unwrap_or(self.cfg.max_connections);
        // Preference groups in order; the first with a healthy host takes the job.
        let mut i = 0;
        let mut down = None;
        while i < hosts.len() {
            let pref = hosts[i].preference;
            let group: Vec<&MailHost> = hosts[i..]
                .iter()
                .take_while(|h| h.preference == pref)
                .collect();
            i += group.len();
            let nodes: Vec<Arc<Node>> = group
                .iter()
                .filter_map(|h| self.node(h, max_connections, shared))
                .collect();
            let healthy: Vec<&Arc<Node>> = nodes.iter().filter(|n| n.is_healthy()).collect();
            if healthy.is_empty() {
                down = nodes.first().map(|n| n.name.clone()).or(down);
                continue;
            }
            self.turn = self.turn.wrapping_add(1);
            for k in 0..healthy.len() {
                let n = healthy[(self.turn + k) % healthy.len()];
                match n.queue_tx.try_send(job) {
                    Ok(()) => return Placed::Done,
                    Err(e) => job = e.into_inner(),
                }
            }
            // The preferred hosts are busy: wait for them rather than spill to a backup MX.
            return Placed::Later(Instant::now() + Duration::from_millis(20), Box::new(job));
        }
        // No MX host of the domain is up: a temporary failure of this attempt.
        let node: Arc<str> = down.unwrap_or_else(|| DNS_NODE.into());
        job.attempts += 1;
        job.charged += 1;
        shared.defer(job, &node, None);
        Placed::Done
    }

    /// The node of an MX host, created (and its connection tasks started) on first use.
    fn node(
        &mut self,
        h: &MailHost,
        max_connections: u32,
        shared: &Arc<Shared>,
    ) -> Option<Arc<Node>> {
        if let Some(n) = self.hosts.get(&h.name) {
            return Some(n.clone());
        }
        let ip = *h.addrs.first()?;
        let settings = match self.settings.with_server_name(&h.name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(mx = %h.name, "{e}");
                return None;
            }
        };
        let node = Arc::new(Node::new(
            &h.name,
            SocketAddr::new(ip, self.cfg.port),
            1,
            false,
            max_connections,
            self.cfg.messages_per_connection,
            settings,
        ));
        let tasks = node.spawn(shared);
        self.created
            .tasks
            .lock()
            .expect("not poisoned")
            .extend(tasks);
        self.created
            .nodes
            .lock()
            .expect("not poisoned")
            .push(node.clone());
        self.hosts.insert(h.name.clone(), node.clone());
        Some(node)
    }

    /// Looks a domain up again (after a temporary failure) off the dispatcher's task; its jobs
    /// wait for the answer and are then placed again, or deferred if it failed again.
    fn resolve_again(&self, domain: String, job: Job, shared: &Arc<Shared>) {
        let mut resolving = self.resolving.lock().expect("not poisoned");
        if let Some(jobs) = resolving.get_mut(domain.as_str()) {
            jobs.push(job);
            return;
        }
        resolving.insert(domain.as_str().into(), vec![job]);
        drop(resolving);
        let (dns, domains, resolving, shared) = (
            self.dns.clone(),
            self.domains.clone(),
            self.resolving.clone(),
            shared.clone(),
        );
        tokio::spawn(async move {
            let route = dns.mail_route(&domain, true).await;
            let temporary = matches!(route, Route::Unknown(_));
            if !temporary {
                domains.insert(&domain, Arc::new(route));
            }
            let jobs = resolving
                .lock()
                .expect("not poisoned")
                .remove(domain.as_str())
                .unwrap_or_default();
            let node: Arc<str> = DNS_NODE.into();
            for mut job in jobs {
                if temporary {
                    job.attempts += 1;
                    job.charged += 1;
                    shared.defer(job, &node, None);
                } else {
                    shared.redispatch(job);
                }
            }
        });
    }
}

/// When a rate-limited key may go again, as a std `Instant`.
fn ready_at(n: &governor::NotUntil<governor::clock::QuantaInstant>) -> Instant {
    use governor::clock::Clock;
    Instant::now() + n.wait_time_from(governor::clock::DefaultClock::default().now())
}
