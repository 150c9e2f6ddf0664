//! The bytes a transaction writes: command lines, the dot-stuffed body, and the address check
//! that keeps list input from ending or splitting a command line.

use super::SmtpError;

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including "<>".
const MAX_ADDRESS: usize = 254;

/// Defence in depth against command injection through addresses taken
/// from CSV input: nothing that could end or split an SMTP command line.
pub(super) fn check_address(addr: &str, allow_empty: bool) -> Result<(), SmtpError> {
    let bad = (addr.is_empty() && !allow_empty)
        || addr.len() > MAX_ADDRESS
        || addr
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '<' | '>'));
    if bad {
        return Err(SmtpError::InvalidAddress(addr.to_owned()));
    }
    Ok(())
}

pub(super) fn push_rcpt(buf: &mut Vec<u8>, rcpt: &str) {
    buf.extend_from_slice(b"RCPT TO:<");
    buf.extend_from_slice(rcpt.as_bytes());
    buf.extend_from_slice(b">\r\n");
}

pub(super) fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `message` as a DATA payload: a "." starting a line is doubled,
/// bare LF becomes CRLF (a lone LF or "\n.\n" is how SMTP smuggling starts),
/// a missing final CRLF is added, then the terminating ".\r\n".
pub(crate) fn stuff_body(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 32 + 8);
    let mut rest = message;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                out.extend_from_slice(line);
                if line.last() != Some(&b'\r') {
                    out.push(b'\r');
                }
                out.push(b'\n');
                rest = &rest[i + 1..];
            }
            None => {
                out.extend_from_slice(rest);
                if rest.last() != Some(&b'\r') {
                    out.push(b'\r');
                }
                out.push(b'\n');
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(m: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        stuff_body(m, &mut v);
        v
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(stuffed(b"a"), b"a\r\n.\r\n");
        assert_eq!(stuffed(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(
            stuffed(b"Subject: x\r\n\r\n.hidden\r\nmid.dle\r\n..two\r\n"),
            b"Subject: x\r\n\r\n..hidden\r\nmid.dle\r\n...two\r\n.\r\n"
        );
    }

    #[test]
    fn bare_newlines_cannot_smuggle_an_end_of_data() {
        assert_eq!(
            stuffed(b"a\n.\nMAIL FROM:<x>\n"),
            b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
        );
        assert_eq!(stuffed(b"a\r"), b"a\r\n.\r\n");
    }

    #[test]
    fn address_validation() {
        assert!(check_address("", true).is_ok());
        assert!(check_address("", false).is_err());
        assert!(check_address("bounce+x=y@example.org", false).is_ok());
        assert!(check_address("jörg@exämple.org", false).is_ok());
        for bad in [
            "a@b\r\nRCPT TO:<c@d>",
            "a@b\n",
            "a\0@b",
            "a @b",
            "a<@b",
            "a>@b",
            "a\u{7f}@b",
            "a\u{85}@b",
        ] {
            assert!(
                matches!(check_address(bad, false), Err(SmtpError::InvalidAddress(_))),
                "{bad:?}"
            );
        }
        assert!(check_address(&"a".repeat(MAX_ADDRESS + 1), false).is_err());
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }
}
