"""SSH keys the lab owns: the user's key pair and one pinned host key per node.

Host keys are generated here and handed to each VM by cloud-init, so every SSH connection (Pulumi's
remote.Command and `lab`) checks the node's real key from the first connection on. All of it lives
in the git-ignored state folder with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, mode 0600 from its first byte, in a 0700 folder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two workers' joins may fetch at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _ensure_pair(private: Path, comment: str) -> None:
    if private.is_file():
        return
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private.with_name(private.name + ".pub").write_bytes(key.export_public_key())
    write_private(private, key.export_private_key())


def ensure_user_key(private: Path) -> str:
    """The SSH user's key pair (generated once when missing); returns the public key line."""
    _ensure_pair(private, "k8s-libvirt-lab")
    pub = private.with_name(private.name + ".pub")
    if not pub.is_file():
        pub.write_bytes(asyncssh.read_private_key(private).export_public_key())
    return pub.read_text().strip()


def host_key_path(state_dir: Path, node: str) -> Path:
    return state_dir / "hosts" / node


def ensure_host_key(state_dir: Path, node: str) -> tuple[str, str]:
    """The node's host key pair (generated once): (private key PEM, public key line)."""
    private = host_key_path(state_dir, node)
    _ensure_pair(private, node)
    return private.read_text(), private.with_name(node + ".pub").read_text().strip()


def pinned_host_key(state_dir: Path, node: str) -> str:
    """The public host key `lab` expects from `node`; a clear error when it was never made."""
    pub = host_key_path(state_dir, node).with_name(node + ".pub")
    if not pub.is_file():
        raise FileNotFoundError(
            f"no pinned host key for {node} at {pub}; run `pulumi up` (or `make up`) first"
        )
    return pub.read_text().strip()
