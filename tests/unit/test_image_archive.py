"""image/archive.py: a docker archive as `ctr images import` reads it, the same bytes each time."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from image.archive import write_archive


def test_archive_has_the_tag_the_layers_and_their_digests(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    base = tmp_path / "root.tar"
    with tarfile.open(base, "w") as tar:
        tar.addfile(tarfile.TarInfo("etc"))
    out = tmp_path / "pause.tar"
    image_id = write_archive(
        out, "registry.k8s.io/pause:3.10.1", {"/pause": binary}, base=base, entrypoint=["/pause"]
    )

    with tarfile.open(out) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        assert manifest["RepoTags"] == ["registry.k8s.io/pause:3.10.1"]
        config_bytes = tar.extractfile(manifest["Config"]).read()
        assert hashlib.sha256(config_bytes).hexdigest() == image_id
        config = json.loads(config_bytes)
        layers = [tar.extractfile(name).read() for name in manifest["Layers"]]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"]["diff_ids"] == [
        f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers
    ]
    assert layers[0] == base.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(layers[1])) as files:
        pause = files.getmember("pause")
        assert pause.mode == 0o755 and files.extractfile(pause).read() == binary.read_bytes()
        assert files.getmember("tmp").mode == 0o1777

    again = tmp_path / "again.tar"
    write_archive(again, "registry.k8s.io/pause:3.10.1", {"/pause": binary}, base=base)
    with tarfile.open(again) as a, tarfile.open(out) as b:
        assert a.getnames()[1:-1] == b.getnames()[1:-1]  # same layer digests for the same input
