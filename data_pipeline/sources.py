"""Input listing: ImageFolder directories, uncompressed tar shards, local or s3://.

Every input becomes an `ImageRef` (stable id, label, where its bytes are). The listing is sorted,
then dealt (`deal`): permuted with a seeded permutation of the whole listing, so the plan (which
image lands in which shard) is a pure function of the input tree and the order seed, and the shards
are class-mixed although every layout below lists images class by class.

Layouts understood:
  * ImageFolder: `<root>/<class>/<...>/<file>.<img ext>`; if `<root>/train` exists it is used
    (the VAR convention; pass the split folder itself to override).
  * Tar shards: `<root>/*.tar`; a member `<class>/<file>` takes its class from its folder, a flat
    member takes it from the tar's stem (ImageNet's per-class `n01440764.tar`). Members are read by
    byte range, so tars must be uncompressed (the webdataset convention).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mvar_dist.data.shards import ORDER_SCHEME, deal_permutation
from mvar_dist.fsio import is_local, open_fs as _open_fs

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class ImageRef:
    image_id: str       # path relative to the input root (tar members: "<tar name>/<member>")
    label: int          # index of the class in the sorted class names
    uri: str            # file to read (full URI for remote filesystems)
    offset: int = 0     # byte offset of the image inside `uri` (tar members)
    size: int = -1      # byte count to read; -1 = whole file


@dataclass
class Listing:
    refs: List[ImageRef]
    class_names: List[str]
    source: str                 # the input location as given (never carries credentials)
    skipped: int = 0            # files ignored because they are not images by extension
    order: Dict[str, object] = field(default_factory=dict)  # how refs were dealt (Manifest.order); {} = sorted


def deal(listing: Listing, seed: int) -> Listing:
    """The listing in ORDER_SCHEME order (seeded permutation of every image); records the order."""
    perm = deal_permutation(len(listing.refs), seed)
    refs = [listing.refs[i] for i in perm]
    digest = hashlib.sha256("\n".join(r.image_id for r in refs).encode()).hexdigest()
    order = {"scheme": ORDER_SCHEME, "seed": int(seed), "order_sha256": digest}
    return Listing(refs, listing.class_names, listing.source, listing.skipped, order)


def open_fs(uri: str, s3_endpoint: Optional[str] = None):
    """(filesystem, path); the endpoint is `s3_endpoint`, else left to botocore (AWS_ENDPOINT_URL / AWS config)."""
    return _open_fs(uri, endpoint_url=s3_endpoint, env_endpoint=False)


def full_uri(fs, path: str) -> str:
    return fs.unstrip_protocol(path) if not is_local(fs) else path


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_inputs(root: str, s3_endpoint: Optional[str] = None) -> Listing:
    """List every image under `root` (ImageFolder or tar shards); raises ValueError when empty/missing."""
    fs, base = open_fs(root, s3_endpoint)
    if not fs.isdir(base):
        raise ValueError(f"input {root!r} is not a directory or prefix (or is not readable)")
    if fs.isdir(posixpath.join(base, "train")):
        base = posixpath.join(base, "train")
    entries = sorted(fs.ls(base, detail=True), key=lambda e: e["name"])
    tars = [e["name"] for e in entries if e["type"] == "file" and e["name"].endswith(".tar")]
    if tars:
        listing = _list_tars(fs, base, tars)
    else:
        listing = _list_folder(fs, base, [e["name"] for e in entries if e["type"] == "directory"])
    listing.source = root
    if not listing.refs:
        raise ValueError(f"input {root!r} holds no images (expected <class>/<image> folders or .tar shards)")
    return listing


def _list_folder(fs, base: str, class_dirs: List[str]) -> Listing:
    refs, skipped = [], 0
    class_names = [posixpath.basename(d.rstrip("/")) for d in class_dirs]
    for label, d in enumerate(class_dirs):
        for path, info in sorted(_find_files(fs, d).items()):
            rel = posixpath.relpath(path, base)
            if not _is_image(path) or any(part.startswith(".") for part in rel.split("/")) or info["type"] != "file":
                # hidden files (a writer's temps), non-images like ImageFolder, and non-regular files: a FIFO
                # or device named *.png would block the reader forever
                skipped += 1
                continue
            refs.append(ImageRef(rel, label, full_uri(fs, path)))
    return Listing(refs, class_names, "", skipped)


def _find_files(fs, folder: str) -> Dict[str, dict]:
    """{path: info} of everything below folder that is not a directory. Locally a folder that cannot be
    read is an error (fsspec's walk would skip it, silently dropping a whole class)."""
    if is_local(fs):
        def fail(err: OSError) -> None:
            raise ValueError(f"input folder {err.filename} cannot be read ({err.strerror}): its images would be "
                             f"silently missing; fix its permissions or move it out of the input") from err

        for _ in os.walk(folder, onerror=fail):
            pass
    return {p: info for p, info in fs.find(folder, detail=True).items() if info["type"] != "directory"}


def _tar_members(fs, tar_path: str) -> List[Tuple[str, int, int]]:
    """(member name, data offset, size) of the regular files in an uncompressed tar."""
    with fs.open(tar_path, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                return [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]
        except tarfile.ReadError as e:
            raise ValueError(f"{tar_path}: not an uncompressed tar ({e}); compressed tars cannot be read by range") from e


def _list_tars(fs, base: str, tars: List[str]) -> Listing:
    per_tar = [(t, _tar_members(fs, t)) for t in tars]

    def class_of(tar: str, member: str) -> str:
        parent = posixpath.dirname(member)
        return posixpath.basename(parent) if parent else posixpath.splitext(posixpath.basename(tar))[0]

    names = sorted({class_of(t, m) for t, ms in per_tar for m, _, _ in ms if _is_image(m)})
    index = {n: i for i, n in enumerate(names)}
    refs, skipped = [], 0
    for t, members in per_tar:
        uri = full_uri(fs, t)
        for name, offset, size in sorted(members):
            if not _is_image(name):
                skipped += 1
                continue
            image_id = f"{posixpath.basename(t)}/{name}"
            refs.append(ImageRef(image_id, index[class_of(t, name)], uri, offset, size))
    return Listing(refs, names, "", skipped)


def read_bytes(ref: ImageRef, fs_cache: Dict[str, object], s3_endpoint: Optional[str] = None) -> bytes:
    """The encoded bytes of one image (whole file, or the tar member's byte range)."""
    scheme = ref.uri.split("://", 1)[0] if "://" in ref.uri else "file"
    if scheme not in fs_cache:
        fs_cache[scheme] = open_fs(ref.uri, s3_endpoint)[0]
    fs = fs_cache[scheme]
    if ref.size < 0:
        return fs.cat_file(ref.uri)
    return fs.cat_file(ref.uri, start=ref.offset, end=ref.offset + ref.size)
