//! What a row must be to be accepted: valid UTF-8, the header's field count, no control
//! character in any field ([`find_control`]), a valid address ([`check_address`], also used
//! for addresses from elsewhere, e.g. `--to`) and, with dedupe on, a new one.

use std::fmt;

use csv::{ByteRecord, StringRecord};

use super::dedupe::{Fingerprints, fingerprint};
use super::{Columns, RejectReason};

/// Longest mailbox that fits the 256-octet RFC 5321 path with its brackets.
const MAX_ADDRESS: usize = 254;
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

/// What is wrong with an address, specific enough for an operator to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    Empty,
    MissingAt,
    MultipleAt,
    EmptyLocalPart,
    LocalPartTooLong(usize),
    /// `"john doe"@x.test` is valid RFC 5321 but not supported here.
    QuotedLocalPart,
    /// Would need SMTPUTF8, which is not supported.
    NonAsciiLocalPart,
    LocalPartCharacter(char),
    /// Leading, trailing or consecutive dots.
    LocalPartDots,
    EmptyDomain,
    /// `user@[192.0.2.1]`: not supported.
    IpLiteral,
    DomainCharacter(char),
    EmptyLabel,
    LabelTooLong(usize),
    LabelHyphen,
    SingleLabelDomain,
    /// `user@192.0.2.1`: an IP address without brackets, not a domain.
    NumericTld,
    /// The Unicode domain cannot be converted to punycode.
    InvalidIdn,
    DomainTooLong(usize),
    AddressTooLong(usize),
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressProblem::Empty => f.write_str("empty address"),
            AddressProblem::MissingAt => f.write_str("missing @"),
            AddressProblem::MultipleAt => f.write_str("more than one @"),
            AddressProblem::EmptyLocalPart => f.write_str("empty local part"),
            AddressProblem::LocalPartTooLong(n) => {
                write!(f, "local part is {n} octets (max {MAX_LOCAL_PART})")
            }
            AddressProblem::QuotedLocalPart => f.write_str("quoted local part not supported"),
            AddressProblem::NonAsciiLocalPart => {
                f.write_str("non-ASCII local part not supported (needs SMTPUTF8)")
            }
            AddressProblem::LocalPartCharacter(c) => {
                write!(f, "character {c:?} not allowed in local part")
            }
            AddressProblem::LocalPartDots => {
                f.write_str("leading, trailing or double dot in local part")
            }
            AddressProblem::EmptyDomain => f.write_str("empty domain"),
            AddressProblem::IpLiteral => f.write_str("IP-literal domain not supported"),
            AddressProblem::DomainCharacter(c) => {
                write!(f, "character {c:?} not allowed in domain")
            }
            AddressProblem::EmptyLabel => f.write_str("empty domain label"),
            AddressProblem::LabelTooLong(n) => {
                write!(f, "domain label is {n} octets (max {MAX_LABEL})")
            }
            AddressProblem::LabelHyphen => f.write_str("domain label starts or ends with a hyphen"),
            AddressProblem::SingleLabelDomain => f.write_str("domain has no dot"),
            AddressProblem::NumericTld => {
                f.write_str("numeric top-level label (IP address, not a domain)")
            }
            AddressProblem::InvalidIdn => f.write_str("invalid internationalised domain"),
            AddressProblem::DomainTooLong(n) => {
                write!(f, "domain is {n} octets (max {MAX_DOMAIN})")
            }
            AddressProblem::AddressTooLong(n) => {
                write!(f, "address is {n} octets (max {MAX_ADDRESS})")
            }
        }
    }
}

/// All per-row checks, cheapest and most fundamental first: the normalised address and the
/// record as text, or why the row is rejected. With dedupe on (`seen`), the address is added.
pub(super) fn check_row(
    record: &ByteRecord,
    columns: &Columns,
    seen: Option<&mut Fingerprints>,
) -> Result<(String, StringRecord), RejectReason> {
    // Dedupe: the fingerprint of the address as written (usually the same as of the
    // normalised address), so its slot is on its way into the cache during the checks.
    let early = seen.as_deref().and_then(|seen| {
        let raw = record.get(columns.address_index())?.trim_ascii();
        let fp = fingerprint(raw);
        seen.prefetch(fp);
        Some((raw, fp))
    });
    // One UTF-8 pass over the whole record plus a boundary check per
    // field is equivalent to validating each field, and cheaper.
    let text = match std::str::from_utf8(record.as_slice()) {
        Ok(text)
            if (0..record.len()).all(|i| {
                record
                    .range(i)
                    .is_some_and(|r| text.is_char_boundary(r.start))
            }) =>
        {
            text
        }
        _ => {
            let bad = record.iter().position(|f| std::str::from_utf8(f).is_err());
            return Err(RejectReason::InvalidUtf8 {
                column: columns.describe(bad.unwrap_or(0)),
            });
        }
    };
    if record.len() != columns.names().len() {
        return Err(RejectReason::FieldCount {
            expected: columns.names().len(),
            found: record.len(),
        });
    }
    if let Some((offset, code_point)) = find_control(text) {
        let i = (0..record.len()).find(|&i| record.range(i).is_some_and(|r| r.contains(&offset)));
        return Err(RejectReason::ControlCharacter {
            column: columns.describe(i.unwrap_or(0)),
            code_point,
        });
    }
    let raw = record
        .range(columns.address_index())
        .and_then(|r| text.get(r))
        .unwrap_or_default();
    let address = check_address(raw).map_err(|problem| match problem {
        AddressProblem::Empty => RejectReason::EmptyAddress,
        problem => RejectReason::InvalidAddress(problem),
    })?;
    if let Some(seen) = seen {
        let fp = match early {
            Some((raw, fp)) if raw.eq_ignore_ascii_case(address.as_bytes()) => fp,
            _ => fingerprint(address.as_bytes()),
        };
        if !seen.insert_fingerprint(fp) {
            return Err(RejectReason::DuplicateAddress);
        }
    }
    // Built from the validated text: `StringRecord::from_byte_record`
    // would validate every non-ASCII field again.
    let mut fields = StringRecord::with_capacity(text.len(), record.len());
    for i in 0..record.len() {
        fields.push_field(
            record
                .range(i)
                .and_then(|r| text.get(r))
                .unwrap_or_default(),
        );
    }
    Ok((address, fields))
}

/// Bytes that are, or may start, a forbidden code point: C0 controls except
/// TAB, DEL, and the lead bytes of C1 controls (C2) and U+2028/U+2029 (E2).
/// A table keeps the scan of every byte of every row to one lookup.
const CONTROL_START: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b != 0x09;
        b += 1;
    }
    table[0x7F] = true;
    table[0xC2] = true;
    table[0xE2] = true;
    table
};

/// Offset and code point of the first forbidden character: C0 controls except
/// TAB, DEL, C1 controls and U+2028/U+2029.
pub(super) fn find_control(text: &str) -> Option<(usize, u32)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = bytes
        .get(from..)?
        .iter()
        .position(|&b| CONTROL_START[usize::from(b)])
    {
        let offset = from + pos;
        // Candidates are ASCII or lead bytes, so always char boundaries.
        if let Some(c) = text.get(offset..).and_then(|t| t.chars().next())
            && matches!(c, '\0'..='\x08' | '\x0A'..='\x1F' | '\x7F'..='\u{9F}' | '\u{2028}' | '\u{2029}')
        {
            return Some((offset, u32::from(c)));
        }
        from = offset + 1;
    }
    None
}

/// RFC 5322 `atext`, the characters of a dot-atom besides the dots.
const ATEXT: [bool; 128] = {
    let mut table = [false; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || {
            let specials = b"!#$%&'*+-/=?^_`{|}~";
            let mut found = false;
            let mut j = 0;
            while j < specials.len() {
                if specials[j] == b {
                    found = true;
                }
                j += 1;
            }
            found
        };
        c += 1;
    }
    table
};

/// Validates and normalises one address with exactly the rules applied to
/// list rows, so addresses from elsewhere (e.g. a `--to` test recipient) are
/// held to the same standard. Returns the address to send to.
pub fn check_address(raw: &str) -> Result<String, AddressProblem> {
    let address = raw.trim();
    if address.is_empty() {
        return Err(AddressProblem::Empty);
    }
    if address.starts_with('"') {
        return Err(AddressProblem::QuotedLocalPart);
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err(AddressProblem::MissingAt);
    };
    if domain.contains('@') {
        return Err(AddressProblem::MultipleAt);
    }
    check_local_part(local)?;
    if domain.is_empty() {
        return Err(AddressProblem::EmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(AddressProblem::IpLiteral);
    }
    let mut out = String::with_capacity(address.len());
    out.push_str(local);
    out.push('@');
    if domain.is_ascii() && !has_ace_label(domain) {
        push_ldh_domain(&mut out, domain)?;
    } else {
        let ascii = idna::domain_to_ascii(domain).map_err(|_| AddressProblem::InvalidIdn)?;
        push_ldh_domain(&mut out, &ascii)?;
    }
    if out.len() > MAX_ADDRESS {
        return Err(AddressProblem::AddressTooLong(out.len()));
    }
    Ok(out)
}

fn check_local_part(local: &str) -> Result<(), AddressProblem> {
    if local.is_empty() {
        return Err(AddressProblem::EmptyLocalPart);
    }
    if !local.is_ascii() {
        return Err(AddressProblem::NonAsciiLocalPart);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressProblem::LocalPartTooLong(local.len()));
    }
    let bytes = local.as_bytes();
    if bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' {
        return Err(AddressProblem::LocalPartDots);
    }
    let mut previous_dot = false;
    for &b in bytes {
        if b == b'.' {
            if previous_dot {
                return Err(AddressProblem::LocalPartDots);
            }
            previous_dot = true;
        } else if ATEXT[usize::from(b)] {
            previous_dot = false;
        } else {
            return Err(AddressProblem::LocalPartCharacter(char::from(b)));
        }
    }
    Ok(())
}

/// Whether an ASCII domain has an `xn--` label, which must go through IDNA so
/// that broken punycode is rejected here rather than by a relay.
fn has_ace_label(domain: &str) -> bool {
    domain.split('.').any(|label| {
        label
            .as_bytes()
            .get(..4)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"xn--"))
    })
}

/// Appends the ASCII `domain` lowercased, checking LDH syntax as it goes.
fn push_ldh_domain(out: &mut String, domain: &str) -> Result<(), AddressProblem> {
    if domain.len() > MAX_DOMAIN {
        return Err(AddressProblem::DomainTooLong(domain.len()));
    }
    let mut labels = 0;
    let mut last_label = "";
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        if bytes.is_empty() {
            return Err(AddressProblem::EmptyLabel);
        }
        if bytes.len() > MAX_LABEL {
            return Err(AddressProblem::LabelTooLong(bytes.len()));
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(AddressProblem::LabelHyphen);
        }
        if let Some(&bad) = bytes
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(AddressProblem::DomainCharacter(char::from(bad)));
        }
        if labels > 0 {
            out.push('.');
        }
        for &b in bytes {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        labels += 1;
        last_label = label;
    }
    if labels < 2 {
        return Err(AddressProblem::SingleLabelDomain);
    }
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressProblem::NumericTld);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        check_address(raw).unwrap_or_else(|e| panic!("{raw:?} rejected: {e:?}"))
    }

    fn problem(raw: &str) -> AddressProblem {
        match check_address(raw) {
            Err(p) => p,
            Ok(a) => panic!("{raw:?}: expected a problem, got {a:?}"),
        }
    }

    #[test]
    fn normalises_domain_case_whitespace_and_idn() {
        assert_eq!(ok("  Bob.Smith@Example.TEST \t"), "Bob.Smith@example.test");
        assert_eq!(ok("a+tag@bücher-42.test"), "a+tag@xn--bcher-42-65a.test");
        assert_eq!(ok("a@BÜCHER.Example"), "a@xn--bcher-kva.example");
        assert_eq!(
            ok("x!#$%&'*+-/=?^_`{|}~y@a-b.c0"),
            "x!#$%&'*+-/=?^_`{|}~y@a-b.c0"
        );
    }

    #[test]
    fn rejects_each_address_problem() {
        use AddressProblem::*;
        assert_eq!(problem("   "), Empty);
        assert_eq!(problem("bob.example.test"), MissingAt);
        assert_eq!(problem("a@b@c.test"), MultipleAt);
        assert_eq!(problem("@c.test"), EmptyLocalPart);
        assert_eq!(
            problem(&format!("{}@c.test", "a".repeat(65))),
            LocalPartTooLong(65)
        );
        assert!(check_address(&format!("{}@c.test", "a".repeat(64))).is_ok());
        assert_eq!(problem("\"john doe\"@c.test"), QuotedLocalPart);
        assert_eq!(problem("josé@c.test"), NonAsciiLocalPart);
        assert_eq!(problem("john doe@c.test"), LocalPartCharacter(' '));
        assert_eq!(problem("Bob <bob@c.test>"), LocalPartCharacter(' '));
        assert_eq!(problem(".bob@c.test"), LocalPartDots);
        assert_eq!(problem("bob.@c.test"), LocalPartDots);
        assert_eq!(problem("b..ob@c.test"), LocalPartDots);
        assert_eq!(problem("bob@"), EmptyDomain);
        assert_eq!(problem("bob@[192.0.2.1]"), IpLiteral);
        assert_eq!(problem("bob@exa_mple.test"), DomainCharacter('_'));
        assert_eq!(problem("bob@example..test"), EmptyLabel);
        assert_eq!(problem("bob@example.test."), EmptyLabel);
        assert_eq!(
            problem(&format!("bob@{}.test", "a".repeat(64))),
            LabelTooLong(64)
        );
        assert_eq!(problem("bob@-example.test"), LabelHyphen);
        assert_eq!(problem("bob@example-.test"), LabelHyphen);
        assert_eq!(problem("bob@localhost"), SingleLabelDomain);
        assert_eq!(problem("bob@192.0.2.1"), NumericTld);
        assert_eq!(problem("bob@xn--a.test"), InvalidIdn);
        let long_domain = format!("{}.test", vec!["a".repeat(63); 4].join("."));
        assert_eq!(
            problem(&format!("b@{long_domain}")),
            DomainTooLong(long_domain.len())
        );
        let near = format!(
            "{}.{}.{}.test",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        );
        assert_eq!(
            problem(&format!("{}@{near}", "x".repeat(60))),
            AddressTooLong(60 + 1 + near.len())
        );
    }

    #[test]
    fn finds_every_forbidden_control_and_allows_tab() {
        for c in (0u32..0x20)
            .filter(|&c| c != 9)
            .chain([0x7F])
            .chain(0x80..0xA0)
            .chain([0x2028, 0x2029])
        {
            let s = format!("é\tb{}cd\n", char::from_u32(c).unwrap());
            assert_eq!(find_control(&s), Some((4, c)), "U+{c:04X}");
        }
        for ok in [
            "a\tb",
            "José Zoë Łukasz",
            "明 Ольга Nguyễn",
            "\u{2027}\u{202A}\u{A0}\u{FEFF}",
        ] {
            assert_eq!(find_control(ok), None, "{ok:?}");
        }
    }
}
