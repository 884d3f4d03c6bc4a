"""Write a container image as a docker archive, the format `ctr images import` reads, with no
registry and no image tool: a layer tar per layer, a config whose rootfs.diff_ids are the
layers' sha256, and a manifest.json naming the image's tag.

    python3 image/archive.py OUT.tar TAG --entrypoint /coredns --file /coredns=BUILD/coredns
    python3 image/archive.py OUT.tar TAG --base ROOT.tar --file /usr/local/bin/kube-proxy=...

Layers are written with fixed times and owners, so the same inputs give the same digests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_layer(out: Path, files: dict[str, Path]) -> None:
    """A layer holding each file at its path (mode 0755), its parent folders, and /tmp."""
    with tarfile.open(out, "w") as tar:
        folders = {"tmp"} | {str(p) for f in files for p in Path(f.lstrip("/")).parents}
        for folder in sorted(folders - {"."}):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        for target, source in sorted(files.items()):
            info = tarfile.TarInfo(target.lstrip("/"))
            info.size, info.mode = source.stat().st_size, 0o755
            with source.open("rb") as f:
                tar.addfile(info, f)


def write_archive(
    out: Path,
    tag: str,
    files: dict[str, Path],
    *,
    base: Path | None = None,
    entrypoint: list[str] | None = None,
) -> str:
    """Write the archive; returns the image's config digest (its image ID)."""
    with tempfile.TemporaryDirectory() as tmp:
        layers = [base] if base else []
        layers.append(Path(tmp) / "files.tar")
        files_layer(layers[-1], files)
        diff_ids = [sha256(layer) for layer in layers]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [f"PATH={PATH}"], "Entrypoint": entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        image_id = hashlib.sha256(config_bytes).hexdigest()
        manifest = [
            {
                "Config": f"{image_id}.json",
                "RepoTags": [tag],
                "Layers": [f"{d}/layer.tar" for d in diff_ids],
            }
        ]
        with tarfile.open(out, "w") as tar:
            add_bytes(tar, f"{image_id}.json", config_bytes)
            for digest, layer in zip(diff_ids, layers, strict=True):
                tar.add(layer, arcname=f"{digest}/layer.tar", recursive=False)
            add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        return image_id


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("tag")
    parser.add_argument("--base", type=Path, help="a root file system tar as the first layer")
    parser.add_argument("--entrypoint", help="the image's entrypoint (a path in the image)")
    parser.add_argument(
        "--file", action="append", default=[], help="IMAGE_PATH=HOST_PATH", metavar="MAPPING"
    )
    args = parser.parse_args()
    files = {}
    for mapping in args.file:
        target, _, source = mapping.partition("=")
        files[target] = Path(source)
    entrypoint = [args.entrypoint] if args.entrypoint else None
    image_id = write_archive(args.out, args.tag, files, base=args.base, entrypoint=entrypoint)
    print(f"{args.tag} sha256:{image_id}")


if __name__ == "__main__":
    main()
