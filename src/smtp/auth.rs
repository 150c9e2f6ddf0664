//! SMTP AUTH encodings (RFC 4954 PLAIN and the de-facto LOGIN).
//!
//! Only the encoding lives here; the exchange is in `client`. A dozen lines
//! of base64 are cheaper than another dependency.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends the standard (padded) base64 encoding of `input` to `out`.
pub(crate) fn base64_into(out: &mut Vec<u8>, input: &[u8]) {
    for chunk in input.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = u32::from(chunk[0]) << 16 | u32::from(b1) << 8 | u32::from(b2);
        let sextet = |shift: u32| ALPHABET[(n >> shift) as usize & 63];
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { b'=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { b'=' });
    }
}

/// Appends "AUTH PLAIN <base64(\0user\0password)>\r\n".
pub(crate) fn plain_command(out: &mut Vec<u8>, user: &str, password: &str) {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    out.extend_from_slice(b"AUTH PLAIN ");
    base64_into(out, &raw);
    out.extend_from_slice(b"\r\n");
    raw.fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        let mut v = Vec::new();
        base64_into(&mut v, s);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(b64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn plain_payload() {
        let mut v = Vec::new();
        plain_command(&mut v, "bob", "secret");
        assert_eq!(v, b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    }
}
