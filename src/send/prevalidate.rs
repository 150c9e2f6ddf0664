//! The pre-validation stage of `blast send`, between the render threads and the dispatcher:
//! each distinct recipient domain is looked up once, concurrently (at most `parallelism`
//! lookups at a time); rows of a domain being looked up wait in a per-domain pending list while
//! other rows go on; in `enforce` mode (and always in direct delivery) rows of a domain that
//! does not accept mail are final `failed` without touching a relay (through
//! [`OutcomeSink::fail_unsent`](crate::send::outcomes::OutcomeSink::fail_unsent)). What it learns goes into [`Domains`], which direct delivery reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::address::domain_of;
use crate::dns::{Dns, Domains, Route};
use crate::send::dispatch::Shared;
use crate::send::render::Message;

/// The stage between the render threads and the dispatcher that looks up each distinct
/// recipient domain once (see the module documentation).
pub struct Prevalidator {
    pub dns: Arc<Dns>,
    pub domains: Arc<Domains>,
    /// Rows of a domain that does not accept mail are made final (enforce, direct delivery);
    /// otherwise only counted.
    pub enforce: bool,
    /// Look up the mail hosts' addresses too (direct delivery).
    pub addresses: bool,
    pub parallelism: usize,
    /// Rows held while their domain is being looked up, at most (then input waits).
    pub hold_limit: usize,
}

/// Messages per hand-over to the dispatcher.
const OUT_BATCH: usize = 32;

impl Prevalidator {
    /// Runs until `input` is closed and every held row has been passed on or made final, or
    /// until `output` is closed (the dispatcher ended).
    pub async fn run(
        self,
        input: async_channel::Receiver<Vec<Message>>,
        output: async_channel::Sender<Vec<Message>>,
        shared: Arc<Shared>,
    ) {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Box<str>, Route)>();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.parallelism));
        // The routes this stage knows: its own map, read for every row without a lock (the
        // shared `Domains` map, which direct delivery reads, is written once per domain).
        let mut known: HashMap<Box<str>, Arc<Route>> = HashMap::new();
        let mut pending: HashMap<Box<str>, Vec<Message>> = HashMap::new();
        let mut held = 0usize;
        let mut out: Vec<Message> = Vec::with_capacity(OUT_BATCH);
        let mut input_done = false;
        let stats = &self.dns.stats;
        loop {
            if input_done && pending.is_empty() {
                break;
            }
            let take = !input_done && held < self.hold_limit;
            tokio::select! {
                biased;
                Some((domain, route)) = done_rx.recv() => {
                    let route = Arc::new(route);
                    match &*route {
                        Route::NoMail(why) => {
                            stats.negative.fetch_add(1, Ordering::Relaxed);
                            if !self.enforce {
                                // warn: logged once per domain; its rows are counted.
                                tracing::warn!(%domain, "{}; its rows are sent anyway", why.reply_line());
                            }
                        }
                        Route::Unknown(_) => { stats.temporary.fetch_add(1, Ordering::Relaxed); }
                        Route::Hosts(_) => {}
                    }
                    // A temporary failure is remembered too: its rows go on (only a definite
                    // answer fails a row); direct delivery looks such a domain up again when
                    // it places one of them (see `crate::send::direct`).
                    self.domains.insert(&domain, route.clone());
                    let rows = pending.remove(&domain).unwrap_or_default();
                    held -= rows.len();
                    for msg in rows {
                        self.pass(msg, &route, &shared, &mut out);
                    }
                    known.insert(domain, route);
                }
                batch = input.recv(), if take => match batch {
                    Ok(batch) => {
                        // Counted once per batch, not per row.
                        let mut hits = 0u64;
                        for msg in batch {
                            let domain = domain_of(&msg.rcpt);
                            if let Some(route) = known.get(domain) {
                                hits += 1;
                                self.pass(msg, route, &shared, &mut out);
                            } else if let Some(list) = pending.get_mut(domain) {
                                hits += 1;
                                list.push(msg);
                                held += 1;
                            } else {
                                stats.domain_lookups.fetch_add(1, Ordering::Relaxed);
                                let domain: Box<str> = domain.into();
                                let (dns, permits, tx, addresses) =
                                    (self.dns.clone(), permits.clone(), done_tx.clone(), self.addresses);
                                let d = domain.clone();
                                tokio::spawn(async move {
                                    let _permit = permits.acquire_owned().await;
                                    let route = dns.mail_route(&d, addresses).await;
                                    let _ = tx.send((d, route));
                                });
                                pending.insert(domain, vec![msg]);
                                held += 1;
                            }
                        }
                        if hits > 0 {
                            stats.cache_hits.fetch_add(hits, Ordering::Relaxed);
                        }
                    }
                    Err(_) => input_done = true,
                },
            }
            // Hand over full batches, and whatever is ready when nothing more is waiting.
            if out.len() >= OUT_BATCH || (!out.is_empty() && input.is_empty()) {
                let batch = std::mem::replace(&mut out, Vec::with_capacity(OUT_BATCH));
                if output.send(batch).await.is_err() {
                    input.close();
                    return;
                }
            }
        }
        if !out.is_empty() {
            let _ = output.send(out).await;
        }
    }

    fn pass(&self, msg: Message, route: &Route, shared: &Shared, out: &mut Vec<Message>) {
        match route {
            Route::NoMail(why) if self.enforce => {
                self.dns.stats.rows_failed.fetch_add(1, Ordering::Relaxed);
                shared.outcomes.fail_unsent(msg, why.reply_line());
            }
            Route::NoMail(why) => {
                self.dns.stats.rows_warned.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(row = msg.row, rcpt = %msg.rcpt, "{}", why.reply_line());
                out.push(msg);
            }
            _ => out.push(msg),
        }
    }
}
