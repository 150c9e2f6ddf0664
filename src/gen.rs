//! Deterministic synthetic recipient lists for benchmarks and tests.
//!
//! Why it exists: real lists cannot be shared or committed, yet the pipeline
//! must be measured and tested at production scale (1.2M+ rows) on data that
//! looks like production: non-ASCII names, tens of thousands of domains with a
//! few very large ones, IDN and upper-case domains, empty first names (to
//! exercise template `default(...)`), and optionally a sprinkling of every kind
//! of broken row [`crate::send::source`] must reject. The same options and seed always
//! give the same bytes, so benchmark runs and bug reports are reproducible.
//!
//! Only reserved TLDs are used (`.test`, `.example`, `.invalid`), so a
//! generated list can never mail a real person. Addresses are unique (also
//! case-insensitively) except for the deliberately duplicated broken rows:
//! every local part ends with the row number behind a per-format separator.

use std::io::{self, BufWriter, Write};

/// Header of every generated list.
pub const COLUMNS: [&str; 7] = [
    "email",
    "first_name",
    "last_name",
    "city",
    "country",
    "plan",
    "signup_date",
];

/// What to generate; `Default` is the standard 1.2M-row benchmark list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    pub rows: u64,
    /// Distinct generated domains (besides 8 very large ones); 0 acts as 1.
    pub domains: u32,
    /// Broken rows per million, cycling through every reject kind.
    pub broken_per_million: u32,
    pub seed: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            rows: 1_200_000,
            domains: 50_000,
            broken_per_million: 0,
            seed: 0,
        }
    }
}

/// Display form (CSV-ready) and ASCII slug for the local part.
const FIRST_NAMES: &[(&str, &str)] = &[
    ("James", "james"),
    ("Mary", "mary"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Łukasz", "lukasz"),
    ("Søren", "soren"),
    ("明", "ming"),
    ("Ольга", "olga"),
    ("Mohammed", "mohammed"),
    ("Aiko", "aiko"),
    ("François", "francois"),
    ("Björn", "bjorn"),
    ("Chloé", "chloe"),
    ("Siobhán", "siobhan"),
    ("Ngọc", "ngoc"),
    ("Priya", "priya"),
    ("Wei", "wei"),
    ("Fatima", "fatima"),
    ("Dmitri", "dmitri"),
    ("Ana", "ana"),
    ("Liam", "liam"),
    ("Emma", "emma"),
    ("Noah", "noah"),
    ("Olivia", "olivia"),
    ("Mateo", "mateo"),
    ("Sofía", "sofia"),
    ("Jürgen", "jurgen"),
    ("Ingrid", "ingrid"),
    ("Kwame", "kwame"),
    ("Amara", "amara"),
    ("Hiroshi", "hiroshi"),
    ("Ayşe", "ayse"),
    ("Zsófia", "zsofia"),
    ("Tomáš", "tomas"),
    ("Élodie", "elodie"),
    ("Олександр", "oleksandr"),
    ("민준", "minjun"),
    ("Thảo", "thao"),
    ("Connor", "connor"),
    ("Mary Ann", "maryann"),
];

const LAST_NAMES: &[(&str, &str)] = &[
    ("Smith", "smith"),
    ("García", "garcia"),
    ("Müller", "muller"),
    ("Nguyễn", "nguyen"),
    ("Kowalski", "kowalski"),
    ("Jensen", "jensen"),
    ("王", "wang"),
    ("Иванова", "ivanova"),
    ("O'Brien", "obrien"),
    ("Dubois", "dubois"),
    ("Rossi", "rossi"),
    ("Silva", "silva"),
    ("Yamamoto", "yamamoto"),
    ("Kim", "kim"),
    ("Patel", "patel"),
    ("Okafor", "okafor"),
    ("Andersson", "andersson"),
    ("Novák", "novak"),
    ("Öztürk", "ozturk"),
    ("Papadopoulos", "papadopoulos"),
    ("Fernández", "fernandez"),
    ("Schröder", "schroder"),
    ("Løvland", "lovland"),
    ("Kovačević", "kovacevic"),
    ("Smith-Jones", "smithjones"),
    ("de la Cruz", "delacruz"),
    ("Zhang", "zhang"),
    ("Mensah", "mensah"),
    ("Virtanen", "virtanen"),
    ("Wiśniewska", "wisniewska"),
    ("\"Brown, Jr.\"", "brown"),
    ("Ó Súilleabháin", "osuilleabhain"),
];

const CITIES: &[(&str, &str)] = &[
    ("Lisbon", "PT"),
    ("São Paulo", "BR"),
    ("Zürich", "CH"),
    ("Kraków", "PL"),
    ("København", "DK"),
    ("東京", "JP"),
    ("Москва", "RU"),
    ("Hà Nội", "VN"),
    ("New York", "US"),
    ("Reykjavík", "IS"),
    ("Montréal", "CA"),
    ("Düsseldorf", "DE"),
    ("Malmö", "SE"),
    ("Athens", "GR"),
    ("Lagos", "NG"),
    ("Mumbai", "IN"),
    ("Paris", "FR"),
    ("İstanbul", "TR"),
    ("Ciudad de México", "MX"),
    ("Cape Town", "ZA"),
    ("\"Washington, D.C.\"", "US"),
    ("", ""),
];

/// Weighted towards the cheap plans, as real customer bases are.
const PLANS: &[&str] = &[
    "free",
    "free",
    "free",
    "basic",
    "basic",
    "pro",
    "enterprise",
];

/// The few huge providers that take a large share of any real list.
const BIG_DOMAINS: &[&str] = &[
    "bigmail.example",
    "post.test",
    "inbox.example",
    "webmail.test",
    "corp.example",
    "mail.invalid",
    "freemail.example",
    "telco.test",
];

const WORDS: &[&str] = &[
    "acme",
    "northwind",
    "contoso",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
];

const IDN_WORDS: &[&str] = &[
    "bücher",
    "café",
    "straße",
    "münchen",
    "日本",
    "ελλάδα",
    "пример",
    "ñandú",
];

const BAD_ADDRESSES: &[&str] = &[
    "no-at-sign.example",
    "a..b@dots.test",
    "user@[192.0.2.1]",
    "user@localhost",
    "\"\"\"quoted\"\"@quoted.test\"",
    "josé@utf8-local.test",
    "user@exa_mple.test",
    "\"Bob <bob@display.test>\"",
    "user@xn--a.test",
    "user@192.0.2.1",
];

/// Broken-row kinds, emitted round-robin so any run with at least this many
/// broken rows has all of them.
const BROKEN_KINDS: u64 = 8;

/// Writes a header and `opts.rows` data rows (broken ones included) as CSV.
pub fn write_recipients(out: impl Write, opts: &GenOptions) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut generator = Generator {
        rng: SplitMix64(opts.seed),
        domains: u64::from(opts.domains.max(1)),
        line: Vec::with_capacity(256),
        email: Vec::with_capacity(128),
        last_good: Vec::with_capacity(128),
        broken: 0,
    };
    out.write_all(COLUMNS.join(",").as_bytes())?;
    out.write_all(b"\n")?;
    for n in 1..=opts.rows {
        let broken = opts.broken_per_million > 0
            && generator.rng.below(1_000_000) < u64::from(opts.broken_per_million);
        generator.row(n, broken);
        out.write_all(&generator.line)?;
    }
    out.flush()
}

struct Generator {
    rng: SplitMix64,
    domains: u64,
    /// Reused output line.
    line: Vec<u8>,
    /// Reused email of the current row.
    email: Vec<u8>,
    /// Latest valid email, for duplicate rows.
    last_good: Vec<u8>,
    broken: u64,
}

impl Generator {
    fn row(&mut self, n: u64, broken: bool) {
        let first = if self.rng.below(100) == 0 {
            ("", "")
        } else {
            *self.rng.pick(FIRST_NAMES)
        };
        let last = *self.rng.pick(LAST_NAMES);
        self.email(n, first.1, last.1);

        let kind = if broken {
            self.broken += 1;
            Some(self.broken % BROKEN_KINDS)
        } else {
            self.last_good.clone_from(&self.email);
            None
        };
        let (city, country) = *self.rng.pick(CITIES);
        let plan = *self.rng.pick(PLANS);
        let (year, month, day) = (
            2015 + self.rng.below(11),
            1 + self.rng.below(12),
            1 + self.rng.below(28),
        );

        let line = &mut self.line;
        line.clear();
        match kind {
            Some(2) => line.extend_from_slice(self.rng.pick(BAD_ADDRESSES).as_bytes()),
            Some(3) => {}
            // Before any good row there is nothing to duplicate: stay valid.
            Some(5) if !self.last_good.is_empty() => {
                line.extend(self.last_good.iter().map(u8::to_ascii_uppercase));
            }
            _ => line.extend_from_slice(&self.email),
        }
        line.push(b',');
        match kind {
            Some(0) => line.extend_from_slice(b"\"Bob\nSmith\""),
            Some(1) => line.extend_from_slice(b"\"Bob\r\nBcc: x@evil.test\""),
            _ => line.extend_from_slice(first.0.as_bytes()),
        }
        line.push(b',');
        match kind {
            // Latin-1 "ü": a list exported with the wrong encoding.
            Some(6) => line.extend_from_slice(b"M\xFCller"),
            _ => line.extend_from_slice(last.0.as_bytes()),
        }
        line.push(b',');
        match kind {
            Some(7) => {
                let controls: [&[u8]; 4] = [
                    b"Pa\0ris",
                    b"Pa\x7Fris",
                    "Pa\u{85}ris".as_bytes(),
                    "Pa\u{2028}ris".as_bytes(),
                ];
                line.extend_from_slice(controls[(self.broken / BROKEN_KINDS % 4) as usize]);
            }
            _ => line.extend_from_slice(city.as_bytes()),
        }
        line.push(b',');
        line.extend_from_slice(country.as_bytes());
        line.push(b',');
        line.extend_from_slice(plan.as_bytes());
        match kind {
            // Alternately a missing and an extra field.
            Some(4) if (self.broken / BROKEN_KINDS).is_multiple_of(2) => {}
            Some(4) => line.extend_from_slice(b",2020-01-01,extra"),
            _ => {
                line.push(b',');
                push_u64(line, year);
                line.push(b'-');
                push_2digits(line, month);
                line.push(b'-');
                push_2digits(line, day);
            }
        }
        line.extend_from_slice(if self.rng.below(10) == 0 {
            b"\r\n"
        } else {
            b"\n"
        });
    }

    /// Unique local part (row number last, format told apart by punctuation)
    /// at a skewed choice of domain.
    fn email(&mut self, n: u64, first: &str, last: &str) {
        let email = &mut self.email;
        email.clear();
        let format = if first.is_empty() {
            4
        } else {
            self.rng.below(4)
        };
        match format {
            0 => {
                email.extend_from_slice(first.as_bytes());
                email.push(b'.');
                email.extend_from_slice(last.as_bytes());
                email.push(b'.');
            }
            1 => {
                email.push(first.as_bytes()[0]);
                email.extend_from_slice(last.as_bytes());
            }
            2 => {
                email.extend_from_slice(first.as_bytes());
                email.push(b'_');
            }
            3 => {
                email.extend_from_slice(last.as_bytes());
                email.extend_from_slice(b"+news");
            }
            _ => {
                email.extend_from_slice(last.as_bytes());
                email.push(b'.');
            }
        }
        push_u64(email, n);
        if self.rng.below(20) == 0 {
            email[0].make_ascii_uppercase();
        }
        email.push(b'@');
        let domain_start = email.len();
        if self.rng.below(10) < 3 {
            email.extend_from_slice(self.rng.pick(BIG_DOMAINS).as_bytes());
        } else {
            let d = self.rng.below(self.domains);
            let word = WORDS[(d % WORDS.len() as u64) as usize];
            let (prefix, tld): (&str, &[u8]) = match d % 20 {
                0..=12 => ("mail", b".example"),
                13..=15 => (word, b".test"),
                16 => ("shop", b".co.example"),
                17 => (
                    IDN_WORDS[(d / 20 % IDN_WORDS.len() as u64) as usize],
                    b".test",
                ),
                18 => (word, b".invalid"),
                _ => ("lists", b".example"),
            };
            email.extend_from_slice(prefix.as_bytes());
            email.push(b'-');
            push_u64(email, d);
            email.extend_from_slice(tld);
        }
        if self.rng.below(50) == 0 {
            email[domain_start..].make_ascii_uppercase();
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
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
    out.extend_from_slice(&digits[i..]);
}

fn push_2digits(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// SplitMix64: tiny, fast, well-distributed and fully specified, so output
/// never changes with a dependency upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias is negligible here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn generate(opts: &GenOptions) -> Vec<u8> {
        let mut out = Vec::new();
        write_recipients(&mut out, opts).unwrap();
        out
    }

    fn small(rows: u64, broken_per_million: u32, seed: u64) -> GenOptions {
        GenOptions {
            rows,
            domains: 1_000,
            broken_per_million,
            seed,
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = generate(&small(5_000, 10_000, 7));
        assert_eq!(a, generate(&small(5_000, 10_000, 7)));
        assert_ne!(a, generate(&small(5_000, 10_000, 8)));
    }

    #[test]
    fn clean_list_has_header_row_count_and_unique_addresses() {
        let data = generate(&small(20_000, 0, 1));
        let mut reader = csv::Reader::from_reader(&data[..]);
        assert_eq!(reader.headers().unwrap(), &COLUMNS[..]);
        let mut seen = HashSet::new();
        let mut rows = 0;
        let (mut idn, mut upper, mut empty_first, mut non_ascii_name) = (0, 0, 0, 0);
        for record in reader.records() {
            let record = record.unwrap();
            assert_eq!(record.len(), COLUMNS.len());
            let email = &record[0];
            assert!(seen.insert(email.to_lowercase()), "duplicate {email}");
            let domain = email.split_once('@').unwrap().1;
            assert!(
                [".test", ".example", ".invalid"]
                    .iter()
                    .any(|tld| domain.to_lowercase().ends_with(tld)),
                "{domain}"
            );
            idn += usize::from(!domain.is_ascii());
            upper += usize::from(domain.bytes().any(|b| b.is_ascii_uppercase()));
            empty_first += usize::from(record[1].is_empty());
            non_ascii_name += usize::from(!record[1].is_ascii() || !record[2].is_ascii());
            rows += 1;
        }
        assert_eq!(rows, 20_000);
        assert!(idn > 100 && upper > 100 && empty_first > 50 && non_ascii_name > 1_000);
    }

    #[test]
    fn domains_are_varied_and_bounded_by_option() {
        let data = generate(&GenOptions {
            rows: 50_000,
            domains: 20_000,
            ..GenOptions::default()
        });
        let domains: HashSet<String> = String::from_utf8(data)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                l.split_once(',')
                    .unwrap()
                    .0
                    .split_once('@')
                    .unwrap()
                    .1
                    .to_lowercase()
            })
            .collect();
        assert!(domains.len() > 15_000, "{}", domains.len());
        assert!(domains.len() <= 20_000 + BIG_DOMAINS.len());
    }

    #[test]
    fn push_u64_formats_extremes() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
    }
}
