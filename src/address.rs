//! The syntax of mail addresses and domain names: what an operator writes (From, Reply-To, the
//! bounce domain, DKIM domains and selectors, EHLO and node host names) and the small pieces of
//! an address the rest of blast takes apart (its domain, the organisational domain).
//!
//! Pure functions on strings; this module uses nothing from the crate, so every module may use
//! it. Recipient addresses from the list get their own, fuller check in `source`.

/// A host name: one or more LDH labels (letters, digits, `-` inside) of 1–63 octets, 253
/// octets at most. A single label (`localhost`) passes; callers that need a dot check for one.
pub fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    })
}

/// A simple addr-spec check for addresses written by the operator (From, Reply-To): dot-atom
/// local part and a domain. Recipient addresses get the full check in `source`.
pub fn valid_operator_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
        })
        && valid_domain(domain)
        && domain.contains('.')
}

/// The address with its domain lowercased (the local part is left as written).
pub fn lowercase_domain(a: &str) -> String {
    match a.rsplit_once('@') {
        Some((l, d)) => format!("{l}@{}", d.to_ascii_lowercase()),
        None => a.to_string(),
    }
}

/// The domain of an address (after the last `@`); empty without one.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Approximate organisational domain: the last two labels ("bounce.mail.example.com" →
/// "example.com"). Without the public suffix list this is wrong for suffixes like "co.uk";
/// it is only used for warnings.
pub fn org_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut labels = d.rsplit('.');
    match (labels.next(), labels.next()) {
        (Some(tld), Some(name)) => format!("{name}.{tld}"),
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_domains() {
        assert_eq!(org_domain("bounce.mail.Example.com"), "example.com");
        assert_eq!(org_domain("example.com."), "example.com");
        assert_eq!(org_domain("localhost"), "localhost");
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@b.example"), "b.example");
        assert_eq!(domain_of("nodomain"), "");
    }
}
