"""Credentials for deployment: a CA, server and client certificates, client tokens and their hashed registry."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import FedstackError

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def make_credentials(out: str | Path, clients: int, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
                     days: int = 365) -> Path:
    """Write a CA, a server certificate for `hosts`, and a certificate, key and token per client into `out`.

    Also writes clients.toml, the server's registry of token hashes. Refuses a directory that already
    holds any of these files, so nothing is overwritten. Returns `out` as a Path.
    """
    out = Path(out)
    if clients < 1:
        raise FedstackError(f"need at least 1 client, not {clients}")
    if days < 1:
        raise FedstackError(f"certificate validity must be at least 1 day, not {days}")
    if not hosts:
        raise FedstackError("give at least one server host name or IP address")
    names = [f"client-{i}" for i in range(1, clients + 1)]
    files = ["ca.pem", "ca.key", "server.pem", "server.key", "clients.toml"]
    files += [f"{name}{ext}" for name in names for ext in (".pem", ".key", ".token")]
    for file in files:
        if (out / file).exists():
            raise FedstackError(f"{out / file} already exists: choose a new directory for credentials")
    out.mkdir(parents=True, exist_ok=True)

    ca_key = _new_key()
    ca_name = _name("fedstack CA")
    ca = _certificate(ca_name, ca_key.public_key(), ca_name, ca_key, days, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
    ])
    _write(out / "ca.pem", _cert_pem(ca))
    _write(out / "ca.key", _key_pem(ca_key), private=True)

    server_key = _new_key()
    san = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
    server = _leaf(hosts[0], server_key, ca, ca_key, days, ExtendedKeyUsageOID.SERVER_AUTH, san)
    _write(out / "server.pem", _cert_pem(server))
    _write(out / "server.key", _key_pem(server_key), private=True)

    registry = ["# Who may connect: one [[client]] per client, by the SHA-256 of its token (never the token)."]
    for name in names:
        key = _new_key()
        _write(out / f"{name}.pem", _cert_pem(_leaf(name, key, ca, ca_key, days, ExtendedKeyUsageOID.CLIENT_AUTH)))
        _write(out / f"{name}.key", _key_pem(key), private=True)
        token = secrets.token_urlsafe(32)
        _write(out / f"{name}.token", (token + "\n").encode(), private=True)
        registry += ["", "[[client]]", f'name = "{name}"', f'token_sha256 = "{hash_token(token)}"']
    _write(out / "clients.toml", ("\n".join(registry) + "\n").encode())
    return out


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of the token, ignoring surrounding whitespace."""
    # Tokens are 256-bit random values, not passwords: a fast hash is enough, no salt or key stretching needed.
    return hashlib.sha256(token.strip().encode()).hexdigest()


def read_token(path: str | Path) -> str:
    """A client's bearer token: the content of its token file, without surrounding whitespace."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise FedstackError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FedstackError(f"token file {path} is not text") from None
    if not token:
        raise FedstackError(f"token file {path} is empty")
    return token


def read_pem(path: str | Path) -> bytes:
    """The bytes of a PEM certificate or key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FedstackError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise FedstackError(f"{path} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ClientRegistry:
    """Who may connect: client names by token hash, and the largest example count each may claim for
    its update's weight (`max_examples = N` in its [[client]] table; absent: none declared)."""

    by_hash: dict[str, str]
    max_examples: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ClientRegistry:
        """The registry in a clients.toml file, checked entry by entry."""
        path = Path(path)
        try:
            tree = tomllib.loads(path.read_text())
        except OSError as exc:
            raise FedstackError(f"cannot read client registry {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FedstackError(f"client registry {path} is not valid TOML: {exc}") from None
        entries = tree.get("client", [])
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise FedstackError(f"client registry {path} needs one or more [[client]] tables")
        by_hash: dict[str, str] = {}
        bounds: dict[str, int] = {}
        for i, entry in enumerate(entries, start=1):
            where = f"client registry {path}, [[client]] #{i}"
            name, digest = entry.get("name"), entry.get("token_sha256")
            if not isinstance(name, str) or not name:
                raise FedstackError(f"{where}: needs name = \"...\"")
            where += f" ({name})"
            if not isinstance(digest, str):
                raise FedstackError(f"{where}: needs token_sha256 = \"<64 hex digits>\"")
            if not _HEX64.fullmatch(digest):
                raise FedstackError(f"{where}: token_sha256 is not 64 hex digits")
            if name in by_hash.values():
                raise FedstackError(f"{where}: duplicate name {name!r}")
            if digest.lower() in by_hash:
                raise FedstackError(f"{where}: same token_sha256 as {by_hash[digest.lower()]!r}")
            by_hash[digest.lower()] = name
            if "max_examples" in entry:
                bound = entry["max_examples"]
                if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                    raise FedstackError(f"{where}: max_examples must be a positive integer, got {bound!r}")
                bounds[name] = bound
        return cls(by_hash, bounds)

    def identify(self, token: str | None) -> str | None:
        """The name of the client holding `token`, or None for a missing or unknown token."""
        if token is None or not token.strip():
            return None
        presented = hash_token(token)
        found = None
        for digest, name in self.by_hash.items():  # every entry, so the time taken does not depend on the token
            if hmac.compare_digest(digest, presented):
                found = name
        return found

    @property
    def names(self) -> list[str]:
        """Client names in registry order."""
        return list(self.by_hash.values())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(host: str) -> x509.GeneralName:
    """An IPAddress for an IP literal, a DNSName otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject: x509.Name, public_key, issuer: x509.Name, signing_key, days: int,
                 extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """A certificate for `public_key`, signed by `signing_key`, valid from a minute ago for `days` days."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def _leaf(common_name: str, key, ca: x509.Certificate, ca_key, days: int, usage, *more) -> x509.Certificate:
    """An end-entity certificate signed by the CA, for one extended key usage."""
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return _certificate(_name(common_name), key.public_key(), ca.subject, ca_key, days, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([usage]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False),
        *((extension, False) for extension in more),
    ])


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Create `path` (never replacing a file) with mode 0600 if private, else 0644."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
