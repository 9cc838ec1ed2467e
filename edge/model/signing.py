"""Ed25519 signatures of model files, so a device runs only models its owner released.

``linewatch keygen`` makes a key pair, ``linewatch sign`` writes ``MODEL.sig`` (the 64 raw
signature bytes over the whole file), and a device with ``ota.public_key`` configured refuses
an over-the-air model whose signature does not verify. Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), as ``openssl genpkey -algorithm ed25519`` makes them too.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linewatch.edge.errors import ModelError, UsageError
from linewatch.edge.files import write_atomic


def generate(private_path: Path, public_path: Path) -> None:
    """A new key pair; the private key is written readable by its owner only, the public one by all."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(private_path, private, mode=0o600)
    write_atomic(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not an unencrypted PEM private key: make one with 'linewatch keygen'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key: make one with 'linewatch keygen'")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except ValueError:
        raise UsageError(f"{path} is not a PEM public key: use the .pub that 'linewatch keygen' wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key")
    return key


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(data)


def verify(data: bytes, signature: bytes | None, key: Ed25519PublicKey) -> None:
    """``ModelError`` unless ``signature`` is the key owner's over ``data``."""
    if not signature:
        raise ModelError("the model is not signed, and this device accepts signed models only: "
                         "sign it with 'linewatch sign'")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise ModelError("the model's signature does not verify with this device's public key: "
                         "sign it with the matching private key") from None
