#!/usr/bin/env python3
"""Independent DKIM check of blast's messages with dkimpy (not part of blast's dependencies).

Usage: python3 tests/dkim_verify.py RECORDS MSG...

RECORDS is a file of DNS key records exactly as `blast keys generate` prints them, one a line:
    S._domainkey.D. IN TXT "v=DKIM1; k=ed25519; p=..." ["more"...]
They are served to dkimpy through its `dnsfunc` hook: no real DNS is queried.

Every DKIM-Signature of every MSG must verify, and each MSG must carry at least one.
Prints one line per message; exits 0 when all verify, 1 when any fails, 3 when dkimpy (with
dnspython, and PyNaCl for ed25519) is not importable.
"""
import re
import sys

try:
    import dkim  # dkimpy
    import nacl.signing  # noqa: F401  (dkimpy needs PyNaCl for ed25519-sha256)
except ImportError as e:  # pragma: no cover
    print(f"dkim_verify: cannot import dkimpy/PyNaCl ({e}); "
          "install with: python3 -m pip install dkimpy pynacl dnspython", file=sys.stderr)
    sys.exit(3)


def load_records(path):
    records = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            name = line.split()[0].rstrip(".").lower()
            records[name] = "".join(re.findall(r'"([^"]*)"', line)).encode("ascii")
    return records


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    records = load_records(argv[1])

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return records.get(name.rstrip(".").lower())

    failed = 0
    for path in argv[2:]:
        with open(path, "rb") as f:
            msg = f.read()
        head = msg.split(b"\r\n\r\n", 1)[0]
        count = len(re.findall(rb"(?im)^dkim-signature:", head))
        results = []
        ok = count > 0
        for i in range(count):
            d = dkim.DKIM(msg)
            try:
                good = d.verify(idx=i, dnsfunc=dnsfunc)
            except dkim.DKIMException as e:
                good = False
                results.append(f"sig{i}: error {e}")
            else:
                results.append(f"sig{i}: {'pass' if good else 'FAIL'}")
            ok = ok and good
        if count == 0:
            results.append("no DKIM-Signature")
        print(f"{'ok  ' if ok else 'FAIL'} {path}: {', '.join(results)}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
