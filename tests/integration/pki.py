"""A test PKI laid out like kubeadm's /etc/kubernetes/pki, made with `cryptography`.

Two CAs as in kubeadm: the cluster CA (pki/ca.crt, whose public key hash is the join's
caCertHashes) and the etcd CA (pki/etcd/ca.crt). Per node: etcd server and peer certificates with
the node's address as SAN (both usable as client certs, like kubeadm's peer cert) and the API
server's etcd client certificate (pki/apiserver-etcd-client.*), the one `lab` fetches from cp1.
ECDSA P-256 keeps generation fast; etcd accepts it as it accepts kubeadm's RSA keys.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    cn: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


@dataclass(frozen=True)
class CA:
    name: x509.Name
    key: Key
    cert_pem: bytes

    @classmethod
    def create(cls, cn: str) -> CA:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        cert = (
            _builder(cn, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, sans: list[str], *, server: bool, client: bool) -> Issued:
        key = _key()
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        alt: list[x509.GeneralName] = []
        for san in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt.append(x509.DNSName(san))
        builder = _builder(cn, self.name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage(usages), critical=False
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass(frozen=True)
class ClusterPKI:
    kubernetes: CA
    etcd: CA

    @classmethod
    def create(cls) -> ClusterPKI:
        return cls(CA.create("kubernetes"), CA.create("etcd-ca"))

    def install(self, pki_dir: Path, node: str, address: str) -> None:
        """Write kubeadm's layout for `node` under pki_dir (= the node's /etc/kubernetes/pki)."""
        sans = [node, "localhost", address, "127.0.0.1"]
        files: dict[str, bytes] = {
            "ca.crt": self.kubernetes.cert_pem,
            "ca.key": _pem_key(self.kubernetes.key),
            "etcd/ca.crt": self.etcd.cert_pem,
            "etcd/ca.key": _pem_key(self.etcd.key),
        }
        for stem, issued in (
            ("etcd/server", self.etcd.issue(node, sans, server=True, client=True)),
            ("etcd/peer", self.etcd.issue(node, sans, server=True, client=True)),
            (
                "etcd/healthcheck-client",
                self.etcd.issue("kube-etcd-healthcheck-client", [], server=False, client=True),
            ),
            (
                "apiserver-etcd-client",
                self.etcd.issue("kube-apiserver-etcd-client", [], server=False, client=True),
            ),
        ):
            files[f"{stem}.crt"], files[f"{stem}.key"] = issued.cert, issued.key
        for rel, data in files.items():
            path = pki_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o600 if rel.endswith(".key") else 0o644)
