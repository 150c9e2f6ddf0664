#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/TARGET/seed-*: the project's
test data (bounce messages, CSV lists, campaign files) and hand-written SMTP replies, sessions
and VERP inputs, in each target's input format (see src/fuzzing.rs). Idempotent; run by
`scripts/fuzz seed`."""
import hashlib, os, sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
corpus = os.path.join(root, "fuzz", "corpus")

def put(target, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def files(*dirs):
    for d in dirs:
        p = os.path.join(root, d)
        for n in sorted(os.listdir(p)):
            fp = os.path.join(p, n)
            if os.path.isfile(fp):
                yield fp

# reply: what relays say, single and multi-line, pipelined.
for r in [b"220 mx.example.test ESMTP Postfix\r\n",
          b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
          b"250 2.0.0 Ok: queued as 4XyZ12\r\n", b"250 OK id=1abcDE-000123-XY\r\n",
          b"354 End data with <CR><LF>.<CR><LF>\r\n", b"451 4.3.0 Try again later\r\n250 ok\r\n",
          b"550-5.1.1 The email account does not exist.\r\n550-5.1.1 Please check\r\n550 5.1.1 https://support.example/x\r\n",
          b"421 4.7.0 Too many connections\r\n", b"250\r\n", b"554 5.7.1 <x@y>: Relay access denied\n",
          b"250 abc123 Message accepted for delivery\r\n"]:
    put("reply", r)

# receiver: mode byte (bit 0: scripted; bits 1-4: number of read-size bytes), read sizes, session.
session = (b"EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<bounce+t@x.test>\r\n"
           b"RCPT TO:<nobody@x.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\nline\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
put("receiver", bytes([0]) + session)
put("receiver", bytes([1 | (3 << 1), 1, 7, 30]) + session.replace(b"bounce+t", b"tempfail+x"))
put("receiver", bytes([0 | (2 << 1), 0, 200]) + b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<b@x>\r\nDATA\r\n" + b"x" * 5000 + b"\r\n.\r\nQUIT\r\n")
put("receiver", bytes([1]) + b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<datafail+y@x>\r\nRCPT TO:<slow+z@x>\r\nDATA\r\nbody\n.\n\r\n.\r\nVRFY a\r\nSTARTTLS\r\n")
put("receiver", bytes([0]) + b"EHLO " + b"a" * 1200 + b"\r\n" + b"BOGUS\r\n" * 12)

# dsn: every bounce message of the test corpus.
for fp in files("tests/data/bounces/eml", "tests/data/bounces/crlf", "tests/data/bounces/not-bounce"):
    put("dsn", open(fp, "rb").read())

# csv: mode byte (bits 0-1 delimiter , ; TAB |, bit 2 no header, bit 3 rejects file) + list.
for fp in list(files("tests/data")) + [os.path.join(root, "campaigns/example-recipients.csv")]:
    if fp.endswith(".csv"):
        data = open(fp, "rb").read()[:4096]
        put("csv", bytes([0]) + data)
        put("csv", bytes([8]) + data)
put("csv", bytes([5]) + b"a@x.test;A\nb@x.test;B\n")

# campaign: the shipped campaign files and small variations.
for fp in files("campaigns"):
    if fp.endswith(".toml"):
        put("campaign", open(fp, "rb").read())
put("campaign", b'id = "x"\n[from]\naddress = "a@b.test"\n')

# verp: campaign NUL row NUL address NUL edit (pairs: position, byte; a lone byte deletes).
for v in [b"spring-sale\x0042\x00alice@example.com\x00", b"c\x001\x00b@x\x00\x05z",
          b"demo\x00\xff\xff\x00Bob@Example.ORG\x00\x03", b"spring-sale-2026-7hq-abcd0123456789abcdef",
          b"x-0-00000000000000000000"]:
    put("verp", v)
print("seeds written under", corpus)
