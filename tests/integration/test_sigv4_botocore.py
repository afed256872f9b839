"""The broker's SigV4 signer agrees with botocore, byte for byte.

moto verifies request signatures by recomputing them with botocore's
SigV4Auth, and the AWS SDKs compute them the same way, so botocore is the
reference. A fixed-seed generator makes requests with awkward paths (dot
segments, empty segments, reserved characters, %-escapes, non-ASCII),
queries (repeated keys, empty values, keys without '=', non-ASCII, loose
encodings), headers (mixed-case names, runs of blanks, repeats, headers
botocore never signs) and bodies (empty, binary, UTF-8). Each is signed by
tests/tools/sigv4_vectors (the C signer) and by botocore with a frozen clock,
and the canonical request, string to sign, signature and Authorization
header must be identical.

Standalone: needs only pytest, botocore and a build of the tree (the tool is
found through SB_SIGV4_VECTORS, SB_BUILD_DIR, or build/ at the repo root).
"""

import collections
import datetime
import json
import os
import pathlib
import random
import subprocess
from unittest import mock
from urllib.parse import quote

import pytest

botocore_auth = pytest.importorskip("botocore.auth")
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

SEED = 20240917
COUNT = 1500
ENDPOINT = "https://example.amazonaws.com"

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
SUB_DELIMS = "!$&'()*+,;="
NON_ASCII = ["é", "ß", "ü", "日本", "Ω", "😀", "\u00a0", "ñ", "Ж", "€", "\u200b"]
REGIONS = ["us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "cn-north-1"]
SERVICES = ["secretsmanager", "sts", "iam", "execute-api", "kms"]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "post", "Get"]
HOSTS = [
    "secretsmanager.us-east-1.amazonaws.com",
    "sts.amazonaws.com",
    "127.0.0.1:5000",
    "localhost:4566",
    "vpce-0123-abcd.secretsmanager.eu-west-3.vpce.amazonaws.com",
]
HEADER_NAMES = [
    "Content-Type",
    "X-Amz-Target",
    "Accept",
    "Content-Length",
    "X-Amz-Meta-Owner",
    "x-custom_header",
    "X-Foo.Bar",
    "x-odd!#$%&'*+^`|~",
    "Accept-Encoding",
    "Audit-ID",
]
UNSIGNED_NAMES = ["User-Agent", "Connection", "Expect", "X-Amzn-Trace-Id", "TE", "Keep-Alive"]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def find_tool():
    explicit = os.environ.get("SB_SIGV4_VECTORS")
    if explicit:
        return pathlib.Path(explicit)
    root = pathlib.Path(__file__).resolve().parents[2]
    build = pathlib.Path(os.environ.get("SB_BUILD_DIR") or root / "build")
    if not build.is_absolute():
        build = root / build
    return build / "tests" / "tools" / "sigv4_vectors"


def escape(rng, ch):
    """Percent-encodes one character as UTF-8, in random hex case."""
    out = quote(ch, safe="")
    if out == ch:
        out = "%{:02X}".format(ord(ch))
    return out.lower() if rng.random() < 0.3 else out


class Generator:
    """Random requests; `seen` counts the features each one exercised."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.seen = collections.Counter()

    def word(self, alphabet, lo=1, hi=8):
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(lo, hi)))

    def path_segment(self):
        rng = self.rng
        kind = rng.choice(["word", "word", "dot", "dotdot", "empty", "reserved", "escape",
                           "space", "unicode", "percent"])
        self.seen["path_" + kind] += 1
        if kind == "dot":
            return "."
        if kind == "dotdot":
            return ".."
        if kind == "empty":
            return ""
        if kind == "reserved":
            return self.word(UNRESERVED + SUB_DELIMS + ":@\\[]")
        if kind == "escape":
            return self.word(UNRESERVED, 0, 3) + escape(rng, rng.choice(" /?#%.é&"))
        if kind == "space":
            return self.word(UNRESERVED + "  ", 2, 8)
        if kind == "unicode":
            return self.word(UNRESERVED, 0, 3) + rng.choice(NON_ASCII)
        if kind == "percent":
            return rng.choice(["%", "%z", "100%", "%2", "%2e%2E", "%2F"])
        return self.word(UNRESERVED)

    def path(self):
        segs = [self.path_segment() for _ in range(self.rng.randint(0, 6))]
        path = "/" + "/".join(segs)
        if self.rng.random() < 0.3:
            path += "/"
            self.seen["path_trailing_slash"] += 1
        return path

    def query_text(self):
        rng = self.rng
        kind = rng.choice(["word", "word", "empty", "reserved", "space", "unicode", "plus"])
        self.seen["query_" + kind] += 1
        if kind == "empty":
            return ""
        if kind == "reserved":
            return self.word(UNRESERVED + SUB_DELIMS + ":@/?%#")
        if kind == "space":
            return self.word(UNRESERVED + "  ", 2, 8)
        if kind == "unicode":
            return self.word(UNRESERVED, 0, 3) + rng.choice(NON_ASCII)
        if kind == "plus":
            return "a+b"
        return self.word(UNRESERVED)

    def params(self):
        """(name, value) pairs; value None means the key has no '='."""
        rng = self.rng
        names = [self.query_text() for _ in range(rng.randint(1, 4))]
        pairs = []
        for _ in range(rng.randint(0, 6)):
            value = None if rng.random() < 0.15 else self.query_text()
            pairs.append((rng.choice(names), value))
        if len({n for n, _ in pairs}) < len(pairs):
            self.seen["query_repeated_key"] += 1
        if any(v is None for _, v in pairs):
            self.seen["query_no_equals"] += 1
        return pairs

    def loose_encode(self, text, is_name):
        """A valid but non-canonical encoding: unreserved characters may be
        escaped, some reserved ones left raw, hex in either case."""
        rng = self.rng
        raw_ok = "!$'()*+,;:@/?" + ("" if is_name else "=")
        out = []
        for ch in text:
            if ch in UNRESERVED or ch in raw_ok:
                out.append(escape(rng, ch) if rng.random() < 0.3 else ch)
            elif ord(ch) > 127 and rng.random() < 0.5:
                out.append(ch)
            else:
                out.append(escape(rng, ch))
        return "".join(out)

    def query(self):
        """Returns (raw query as sent, params for botocore or None)."""
        pairs = self.params()
        if not pairs:
            return "", None
        if self.rng.random() < 0.5:
            # As botocore sends it: botocore signs the raw query as is.
            self.seen["query_canonical"] += 1
            raw = "&".join(quote(n, safe="-_.~") + ("" if v is None else
                           "=" + quote(v, safe="-_.~")) for n, v in pairs)
            return raw, None
        # Loosely encoded: botocore's own canonical form for the same
        # parameters is what AWS computes after decoding them.
        self.seen["query_loose"] += 1
        raw = "&".join(self.loose_encode(n, True) + ("" if v is None else
                       "=" + self.loose_encode(v, False)) for n, v in pairs)
        # A lone empty name encodes to "", which is no query at all.
        return raw, ([(n, v or "") for n, v in pairs] if raw else None)

    def header_value(self):
        rng = self.rng
        kind = rng.choice(["word", "blanks", "empty", "punct", "tabs"])
        self.seen["header_" + kind] += 1
        if kind == "empty":
            return ""
        if kind == "blanks":
            return "  " + self.word(UNRESERVED + "    ", 3, 12) + "   "
        if kind == "punct":
            return self.word(UNRESERVED + "\"(),/:;<=>?@[\\]{}!#$%&'*+^`|~ ", 1, 20)
        if kind == "tabs":
            return "\t" + self.word(UNRESERVED + "\t ", 1, 10) + " \t"
        return self.word(UNRESERVED, 1, 16)

    def mixed_case(self, name):
        return "".join(c.upper() if self.rng.random() < 0.5 else c.lower() for c in name)

    def headers(self):
        rng = self.rng
        hdrs = [(self.mixed_case("host"), rng.choice(HOSTS))]
        for _ in range(rng.randint(0, 6)):
            hdrs.append((self.mixed_case(rng.choice(HEADER_NAMES)), self.header_value()))
        if rng.random() < 0.2:
            hdrs.append((rng.choice(UNSIGNED_NAMES), self.header_value()))
            self.seen["header_unsigned"] += 1
        rng.shuffle(hdrs)
        lowered = [n.lower() for n, _ in hdrs]
        if len(set(lowered)) < len(lowered):
            self.seen["header_repeated"] += 1
        return hdrs

    def body(self):
        rng = self.rng
        kind = rng.choice(["empty", "binary", "utf8", "json"])
        self.seen["body_" + kind] += 1
        if kind == "empty":
            return b""
        if kind == "binary":
            return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        if kind == "utf8":
            return "".join(rng.choice(NON_ASCII + ["a", " "]) for _ in range(20)).encode()
        return json.dumps({"SecretId": self.word(UNRESERVED), "VersionStage": "AWSCURRENT"}).encode()

    def credentials(self):
        rng = self.rng
        upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        secret = self.word(B64, 40, 40)
        if rng.random() < 0.5:
            self.seen["creds_session"] += 1
            token = self.word(B64 + "=", 100, 400)
            return "ASIA" + self.word(upper, 16, 16), secret, token
        return "AKIA" + self.word(upper, 16, 16), secret, None

    def timestamp(self):
        start = datetime.datetime(2000, 1, 1)
        return start + datetime.timedelta(seconds=self.rng.randrange(100 * 365 * 86400))

    def request(self):
        access_key, secret_key, token = self.credentials()
        raw_query, params = self.query()
        return {
            "method": self.rng.choice(METHODS),
            "path": self.path(),
            "query": raw_query,
            "params": params,
            "headers": self.headers(),
            "body": self.body(),
            "access_key": access_key,
            "secret_key": secret_key,
            "session_token": token,
            "region": self.rng.choice(REGIONS),
            "service": self.rng.choice(SERVICES),
            "when": self.timestamp(),
        }


class RecordingSigV4Auth(botocore_auth.SigV4Auth):
    """botocore's signer, keeping the texts it computes along the way."""

    def canonical_request(self, request):
        self.recorded_canonical_request = super().canonical_request(request)
        return self.recorded_canonical_request

    def string_to_sign(self, request, canonical_request):
        self.recorded_string_to_sign = super().string_to_sign(request, canonical_request)
        return self.recorded_string_to_sign

    def signature(self, string_to_sign, request):
        self.recorded_signature = super().signature(string_to_sign, request)
        return self.recorded_signature


def frozen_clock(when):
    """Freezes the time botocore signs at, as botocore's own tests do."""
    if hasattr(botocore_auth, "get_current_datetime"):
        return mock.patch.object(botocore_auth, "get_current_datetime", return_value=when)
    fake = mock.Mock(wraps=datetime)
    fake.datetime.utcnow.return_value = when
    return mock.patch.object(botocore_auth, "datetime", fake)


def botocore_sign(req):
    url = ENDPOINT + req["path"]
    if req["query"] and req["params"] is None:
        url += "?" + req["query"]
    aws_req = AWSRequest(method=req["method"], url=url, data=req["body"],
                         params=req["params"] or {})
    for name, value in req["headers"]:
        aws_req.headers[name] = value  # appends: repeated headers stay repeated
    creds = Credentials(req["access_key"], req["secret_key"], req["session_token"])
    auth = RecordingSigV4Auth(creds, req["service"], req["region"])
    with frozen_clock(req["when"]):
        auth.add_auth(aws_req)
    return {
        "canonical_request": auth.recorded_canonical_request,
        "string_to_sign": auth.recorded_string_to_sign,
        "signature": auth.recorded_signature,
        "authorization": aws_req.headers["Authorization"],
    }


def tool_input(req):
    return {
        "method": req["method"],
        "path": req["path"],
        "query": req["query"],
        "headers": [list(h) for h in req["headers"]],
        "body_hex": req["body"].hex(),
        "access_key": req["access_key"],
        "secret_key": req["secret_key"],
        "session_token": req["session_token"],
        "region": req["region"],
        "service": req["service"],
        "amz_date": req["when"].strftime("%Y%m%dT%H%M%SZ"),
    }


def run_tool(inputs):
    tool = find_tool()
    if not tool.exists():
        pytest.fail(f"{tool} is missing: build the tree first (ninja -C build)")
    lines = "".join(json.dumps(i) + "\n" for i in inputs)
    proc = subprocess.run([str(tool)], input=lines.encode(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def describe_mismatch(index, req, ours, theirs):
    shown = {k: v for k, v in tool_input(req).items() if k not in ("secret_key", "session_token")}
    parts = [f"request #{index} (seed {SEED}) differs from botocore:",
             json.dumps(shown, ensure_ascii=False, indent=1),
             f"botocore params: {req['params']!r}"]
    for key in ("canonical_request", "string_to_sign", "signature", "authorization"):
        if ours.get(key) != theirs[key]:
            parts.append(f"--- {key}, botocore:\n{theirs[key]}\n--- {key}, ours:\n"
                         f"{ours.get(key, ours.get('error'))}")
    return "\n".join(parts)


def test_signer_matches_botocore():
    gen = Generator(SEED)
    requests = [gen.request() for _ in range(COUNT)]
    results = run_tool([tool_input(r) for r in requests])
    assert len(results) == len(requests)

    compared = 0
    for index, (req, ours) in enumerate(zip(requests, results)):
        theirs = botocore_sign(req)
        same = all(ours.get(k) == theirs[k] for k in theirs)
        assert same, describe_mismatch(index, req, ours, theirs)
        compared += 1
    print(f"{compared} requests signed identically by the C signer and botocore")
    assert compared >= 1000

    # The generator must have produced every awkward case often enough.
    rare = {k: v for k, v in gen.seen.items() if v < 20}
    assert not rare, f"features exercised too rarely: {rare}"
    expected = {"path_dotdot", "path_empty", "path_unicode", "path_escape", "query_loose",
                "query_repeated_key", "query_no_equals", "query_unicode", "header_repeated",
                "header_blanks", "header_unsigned", "body_binary", "body_empty", "creds_session"}
    assert expected <= set(gen.seen), expected - set(gen.seen)


def test_documented_iam_example():
    """The ListUsers example of the AWS documentation, by both signers."""
    req = {
        "method": "GET", "path": "/", "query": "Action=ListUsers&Version=2010-05-08",
        "params": None,
        "headers": [("Host", "iam.amazonaws.com"),
                    ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
        "body": b"", "access_key": "AKIDEXAMPLE",
        "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session_token": None,
        "region": "us-east-1", "service": "iam",
        "when": datetime.datetime(2015, 8, 30, 12, 36, 0),
    }
    ours = run_tool([tool_input(req)])[0]
    documented = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    assert ours["signature"] == documented
    assert botocore_sign(req)["signature"] == documented
