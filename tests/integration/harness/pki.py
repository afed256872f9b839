"""Test PKI built with the `cryptography` package: certificate authorities,
the broker's server certificate, SPIFFE client certificates, deliberately bad
ones, and `mint` for any certificate an identity test needs.

Everything is written as PEM files (key PKCS#8, certificate followed by any
intermediates) so that both the broker and `requests` can load them.
"""
import datetime
import ipaddress
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
DEFAULT_TRUST_DOMAIN = "cluster.local"

# The kinds of bad client certificate every identity test should try.
BAD_KINDS = ("expired", "not_yet_valid", "unknown_ca", "no_client_auth",
             "two_uri_sans", "wrong_trust_domain", "ca_as_leaf")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def spiffe_id(ns, sa, trust_domain=DEFAULT_TRUST_DOMAIN):
    return f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"


def new_key(kind="ec"):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _sig_hash(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "cert"


@dataclass
class Issued:
    """A certificate with its key, on disk. `pair` is what requests' cert=
    takes; cert_path holds the leaf followed by its intermediates."""
    name: str
    cert: x509.Certificate
    key: object
    cert_path: Path
    key_path: Path
    chain: tuple = ()

    @property
    def pair(self):
        return (str(self.cert_path), str(self.key_path))

    @property
    def pem(self):
        return self.cert_path.read_bytes()

    @property
    def serial_hex(self):
        return format(self.cert.serial_number, "x")


class CA:
    """A certificate authority; `issue` signs leaves, `intermediate` sub-CAs."""

    def __init__(self, directory, name, cn=None, key_kind="ec", parent=None,
                 not_before=None, not_after=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = new_key(key_kind)
        self.parent = parent
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secrets-broker tests"),
                             x509.NameAttribute(NameOID.COMMON_NAME, cn or name)])
        signer_key = parent.key if parent else self.key
        issuer = parent.cert.subject if parent else subject
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer)
                   .public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now() - datetime.timedelta(hours=1))
                   .not_valid_after(not_after or now() + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                       key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                       self.key.public_key()), critical=False))
        if parent:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                critical=False)
        self.cert = builder.sign(signer_key, _sig_hash(signer_key))
        self.cert_path = self.dir / f"{_safe(name)}.crt"
        self.key_path = self.dir / f"{_safe(name)}.key"
        self.cert_path.write_bytes(cert_pem(self.cert))
        self.key_path.write_bytes(key_pem(self.key))
        self.key_path.chmod(0o600)
        self._seq = itertools.count(1)

    @property
    def chain(self):
        """This CA's certificate and its parents', up to (not including) the root."""
        if not self.parent:
            return ()
        return (self.cert,) + self.parent.chain

    def intermediate(self, name, **kw):
        return CA(self.dir, name, parent=self, **kw)

    def issue(self, name, uris=(), dns=(), ips=(), cn=None, organizations=(),
              eku=(CLIENT_AUTH,), not_before=None, not_after=None, is_ca=False,
              key_kind="ec", key_usage=True, extra_extensions=()):
        """Signs a leaf (or, with is_ca, a CA certificate used as a leaf) and
        writes it out. eku=None leaves the extension out entirely."""
        key = new_key(key_kind)
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        if cn is not None:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        sans = ([x509.UniformResourceIdentifier(u) for u in uris]
                + [x509.DNSName(d) for d in dns]
                + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name(attrs)).issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now() - datetime.timedelta(minutes=10))
                   .not_valid_after(not_after or now() + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None),
                                  critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if sans:
            # RFC 5280 4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans),
                                            critical=not attrs)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if key_usage:
            builder = builder.add_extension(_leaf_key_usage(key, is_ca), critical=True)
        for ext, critical in extra_extensions:
            builder = builder.add_extension(ext, critical=critical)
        cert = builder.sign(self.key, _sig_hash(self.key))

        stem = f"{next(self._seq):03d}-{_safe(name)}"
        cert_path = self.dir / f"{_safe(self.name)}.{stem}.crt"
        key_path = self.dir / f"{_safe(self.name)}.{stem}.key"
        chain = self.chain
        cert_path.write_bytes(cert_pem(cert) + b"".join(cert_pem(c) for c in chain))
        key_path.write_bytes(key_pem(key))
        key_path.chmod(0o600)
        return Issued(name, cert, key, cert_path, key_path, chain)


def _leaf_key_usage(key, is_ca):
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True, key_encipherment=rsa_key, key_cert_sign=is_ca, crl_sign=is_ca,
        content_commitment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False)


class TestPKI:
    """The callers' PKI: one CA the broker trusts (ca.crt is its bundle), the
    broker's server certificate, SPIFFE client certificates and bad ones."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, trust_domain=DEFAULT_TRUST_DOMAIN):
        self.dir = Path(directory)
        self.trust_domain = trust_domain
        self.ca = CA(self.dir, "callers-ca", cn="secrets-broker test callers CA")
        # Same subject as the real CA, different key: only the signature tells.
        self.rogue_ca = CA(self.dir / "rogue", "callers-ca", cn="secrets-broker test callers CA")
        self.ca_bundle = self.ca.cert_path
        self.server = self.ca.issue("broker-server", dns=["localhost"], ips=["127.0.0.1"],
                                    cn="localhost", eku=(SERVER_AUTH,))
        self._clients = {}

    def client(self, ns, sa):
        """A good client certificate for ServiceAccount ns/sa (cached)."""
        if (ns, sa) not in self._clients:
            self._clients[(ns, sa)] = self.ca.issue(
                f"{ns}-{sa}", uris=[spiffe_id(ns, sa, self.trust_domain)])
        return self._clients[(ns, sa)]

    def mint(self, name="minted", issuer=None, **kw):
        """Any client certificate: see CA.issue for the knobs (uris, cn, eku,
        not_before/not_after, is_ca, key_kind, ...). issuer defaults to the
        trusted CA."""
        return (issuer or self.ca).issue(name, **kw)

    def bad(self, kind, ns="bad", sa="app"):
        """A client certificate that names ns/sa but must be refused."""
        uri = spiffe_id(ns, sa, self.trust_domain)
        past, future = now() - datetime.timedelta(days=2), now() + datetime.timedelta(days=2)
        day = datetime.timedelta(days=1)
        makers = {
            "expired": lambda: self.ca.issue(kind, uris=[uri], not_before=past,
                                             not_after=past + day),
            "not_yet_valid": lambda: self.ca.issue(kind, uris=[uri], not_before=future,
                                                   not_after=future + day),
            "unknown_ca": lambda: self.rogue_ca.issue(kind, uris=[uri]),
            "no_client_auth": lambda: self.ca.issue(kind, uris=[uri], eku=(SERVER_AUTH,)),
            "two_uri_sans": lambda: self.ca.issue(
                kind, uris=[uri, spiffe_id(ns, sa + "-other", self.trust_domain)]),
            "wrong_trust_domain": lambda: self.ca.issue(
                kind, uris=[spiffe_id(ns, sa, "evil.example")]),
            "ca_as_leaf": lambda: self.ca.issue(kind, uris=[uri], is_ca=True),
        }
        return makers[kind]()

    def bad_certs(self, ns="bad", sa="app"):
        return {kind: self.bad(kind, ns, sa) for kind in BAD_KINDS}
