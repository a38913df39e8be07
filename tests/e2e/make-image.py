#!/usr/bin/env python3
"""Builds a small test image as an OCI layout, for the end-to-end test.

Usage: make-image.py DIR TAG [RANDOM_MIB] [PLATFORMS] [EXTRA_LAYERS]

PLATFORMS is a comma-separated list of architectures (default: amd64).
With more than one, the image is a multi-platform image: an OCI image index
naming one image manifest per platform. EXTRA_LAYERS (default 0) adds that
many small gzip tar layers, each with a file of its own, for an image with
many layers.

The image has a real gzip tar layer with a few text files, and a second
gzip tar layer holding RANDOM_MIB (default 6) MiB of random bytes, so the
pull moves several megabytes that gzip cannot shrink. Everything is built
with the standard library; the output is a valid image-layout that skopeo
can push with `oci:DIR:TAG`.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def tar_gz(files):
    """Returns (compressed bytes, sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
        f.write(tar_bytes)
    return gz.getvalue(), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def put_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def image(layout, arch, random_mib, extra_layers=0):
    """Writes one platform's config, layers and manifest; returns the
    manifest's descriptor."""
    small, small_diff = tar_gz([
        ("etc/motd", f"ferry end-to-end test image ({arch})\n".encode()),
        ("app/hello.txt", b"hello from a real gzip tar layer\n" * 100),
    ])
    big, big_diff = tar_gz([("data/random.bin", os.urandom(random_mib << 20))])

    extra = [
        tar_gz([(f"layers/{n:03}.txt", f"layer {n} ({arch}) {os.urandom(8).hex()}\n".encode())])
        for n in range(extra_layers)
    ]
    diff_ids = [small_diff, big_diff] + [d for _, d in extra]
    layers = []
    for data in [small, big] + [g for g, _ in extra]:
        d = put_blob(layout, data)
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        layers.append(d)

    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    cfg = put_blob(layout, config)
    cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": layers,
    }).encode()
    m = put_blob(layout, manifest)
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    m["platform"] = {"architecture": arch, "os": "linux"}
    print(f"  {arch}: manifest {m['digest']}, layers {[l['size'] for l in layers]} bytes")
    return m


def main():
    layout, tag = sys.argv[1], sys.argv[2]
    random_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    platforms = sys.argv[4].split(",") if len(sys.argv) > 4 else ["amd64"]
    extra_layers = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"image {tag}:")
    manifests = [image(layout, arch, random_mib, extra_layers) for arch in platforms]
    if len(manifests) == 1:
        top = manifests[0]
        del top["platform"]
    else:
        index = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }).encode()
        top = put_blob(layout, index)
        top["mediaType"] = "application/vnd.oci.image.index.v1+json"
        print(f"  index {top['digest']}")
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)


if __name__ == "__main__":
    main()
