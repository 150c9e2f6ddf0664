//! `[dkim]`: the section as written and its validation, which loads the keys (with
//! [`PrivateKey::load`]) and builds the [`Dkim`] signer render uses, so a missing or malformed
//! key is a `blast check` problem at its `key_file` line. Also the DMARC alignment warnings of
//! `blast check`, which compare the From domain with the envelope and DKIM domains.
//!
//! Signing itself, key parsing and key generation stay in the `dkim` module.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::address::{domain_of, org_domain, valid_domain};
use crate::dkim::{Algorithm, Dkim, PrivateKey, Signer};

use super::{Campaign, SectionProblems};

/// Default `feedback_id`: campaign id and From domain (Gmail's Feedback-ID, `campaign:sender`).
pub const DEFAULT_FEEDBACK_ID: &str = "{campaign}:{from_domain}";

/// `[dkim]`: sign every message. See `campaigns/example.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSection {
    /// The signing domain (`d=`), e.g. "example.com". For DMARC it must share the From
    /// address's organisational domain (relaxed alignment); `blast check` warns when not.
    pub domain: Spanned<String>,
    /// The selector (`s=`): the key's DNS name is `SELECTOR._domainkey.DOMAIN`.
    pub selector: Spanned<String>,
    /// The private key, PEM: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA, 2048 bits or more).
    /// `blast keys generate` writes one.
    pub key_file: Spanned<String>,
    /// "rsa-sha256" or "ed25519-sha256". Default: from the key.
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
    /// A second signature on every message (dual signing, typically Ed25519 next to RSA for
    /// receivers that do not verify Ed25519 yet): `dual = { selector, key_file, algorithm }`;
    /// `domain` defaults to this section's.
    #[serde(default)]
    pub dual: Option<Spanned<DualSection>>,
    /// The Feedback-ID header (Gmail's feedback loop), signed with the message. `{campaign}`
    /// and `{from_domain}` are replaced. Default "{campaign}:{from_domain}"; "" leaves it out.
    #[serde(default)]
    pub feedback_id: Option<Spanned<String>>,
}

/// `[dkim] dual = {...}`: the second signature.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DualSection {
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    pub selector: Spanned<String>,
    pub key_file: Spanned<String>,
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
}

/// Validates `[dkim]` and loads its keys. Problems come back as (span, message) pairs for the
/// campaign's problem list. `base` is the campaign file's directory.
pub fn validate(
    d: &DkimSection,
    base: &Path,
    campaign_id: &str,
    from_domain: &str,
) -> Result<Dkim, SectionProblems> {
    let mut problems = Vec::new();
    let mut signers = Vec::new();
    let primary = signer(
        &d.domain,
        &d.selector,
        &d.key_file,
        d.algorithm.as_ref(),
        base,
        "dkim",
        &mut problems,
    );
    signers.extend(primary);
    if let Some(dual) = &d.dual {
        let dual = dual.get_ref();
        let second = signer(
            dual.domain.as_ref().unwrap_or(&d.domain),
            &dual.selector,
            &dual.key_file,
            dual.algorithm.as_ref(),
            base,
            "dkim.dual",
            &mut problems,
        );
        if let Some(s) = second {
            if signers
                .first()
                .is_some_and(|p| p.domain == s.domain && p.selector == s.selector)
            {
                problems.push((
                    dual.selector.span(),
                    "dkim.dual uses the same domain and selector as [dkim]: one DNS name holds one key; pick another selector".to_string(),
                ));
            }
            signers.push(s);
        }
    }
    let feedback_id = match &d.feedback_id {
        None => Some(expand_feedback_id(
            DEFAULT_FEEDBACK_ID,
            campaign_id,
            from_domain,
        )),
        Some(f) if f.get_ref().is_empty() => None,
        Some(f) => {
            let v = expand_feedback_id(f.get_ref(), campaign_id, from_domain);
            if v.chars().any(|c| c.is_control() || !c.is_ascii()) || v.len() > 200 {
                problems.push((
                    f.span(),
                    "dkim.feedback_id must be printable ASCII up to 200 characters, e.g. \"{campaign}:newsletter:{from_domain}\"".to_string(),
                ));
            }
            Some(v)
        }
    };
    if problems.is_empty() {
        Ok(Dkim {
            signers,
            feedback_id,
        })
    } else {
        Err(problems)
    }
}

fn expand_feedback_id(pattern: &str, campaign: &str, from_domain: &str) -> String {
    pattern
        .replace("{campaign}", campaign)
        .replace("{from_domain}", from_domain)
}

fn signer(
    domain: &Spanned<String>,
    selector: &Spanned<String>,
    key_file: &Spanned<String>,
    algorithm: Option<&Spanned<String>>,
    base: &Path,
    what: &str,
    problems: &mut SectionProblems,
) -> Option<Signer> {
    let n = problems.len();
    let dom = domain.get_ref().trim().to_ascii_lowercase();
    if !valid_domain(&dom) || !dom.contains('.') {
        problems.push((
            domain.span(),
            format!("{what}.domain {dom:?} is not a domain name; use the From domain (or its parent), e.g. \"example.com\""),
        ));
    }
    let sel = selector.get_ref().trim().to_string();
    if !valid_domain(&sel) {
        problems.push((
            selector.span(),
            format!("{what}.selector {sel:?} must be letters, digits, '-' and '.', e.g. \"s2026\""),
        ));
    }
    let wanted = match algorithm {
        None => None,
        Some(a) => match Algorithm::parse(a.get_ref()) {
            Some(alg) => Some((alg, a)),
            None => {
                problems.push((
                    a.span(),
                    format!(
                        "{what}.algorithm {:?} is not \"rsa-sha256\" or \"ed25519-sha256\"",
                        a.get_ref()
                    ),
                ));
                None
            }
        },
    };
    let path = base.join(key_file.get_ref());
    let key = match PrivateKey::load(&path) {
        Ok(k) => Some(k),
        Err(e) => {
            let hint = if e.contains("cannot read") || e.contains("no PEM private key") {
                " (generate one with `blast keys generate --selector S --domain D`)"
            } else {
                ""
            };
            problems.push((key_file.span(), format!("{what}.key_file: {e}{hint}")));
            None
        }
    };
    if let (Some(k), Some((alg, span))) = (&key, wanted)
        && k.algorithm() != alg
    {
        problems.push((
            span.span(),
            format!(
                "{what}.algorithm = \"{alg}\" but {} holds a {} key; set algorithm = \"{}\" or use a matching key",
                path.display(),
                k.algorithm().key_type(),
                k.algorithm()
            ),
        ));
    }
    if problems.len() > n {
        return None;
    }
    Some(Signer {
        domain: dom,
        selector: sel,
        key_file: path,
        key: key?,
    })
}

// ---------------------------------------------------------------------------------------------
// `blast check`: DMARC alignment.
// ---------------------------------------------------------------------------------------------

/// DMARC alignment warnings for `blast check`: the VERP (envelope) domain and each DKIM `d=`
/// should share the From domain's organisational domain (relaxed alignment).
pub fn alignment_warnings(campaign: &Campaign) -> Vec<String> {
    let from_domain = domain_of(&campaign.from.address);
    let from_org = org_domain(from_domain);
    let mut out = Vec::new();
    let verp = &campaign.envelope.verp_domain;
    if org_domain(verp) != from_org {
        out.push(format!(
            "envelope domain {verp} and From domain {from_domain} have different organisational domains ({} vs {from_org}, approximated as the last two labels): SPF cannot align for DMARC; use a bounce subdomain of the From domain, e.g. \"b-{{token}}@bounce.{from_org}\"",
            org_domain(verp)
        ));
    }
    if campaign.dkim.is_none() && !campaign.all_embedded() {
        out.push("no [dkim] section: mailbox providers send unsigned bulk mail to spam (or reject it); add [dkim] (see `blast keys generate`)".to_string());
    }
    if let Some(d) = &campaign.dkim {
        for s in &d.signers {
            if org_domain(&s.domain) != from_org {
                out.push(format!(
                    "DKIM d={} does not share the organisational domain of From ({from_domain}): the signature cannot align for DMARC; sign with {from_org} or a subdomain of it",
                    s.domain
                ));
            }
        }
    }
    out
}
