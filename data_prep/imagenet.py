"""Full ImageNet (ILSVRC2012) from the archives as distributed, into class folders.

    python -m data_prep.imagenet --source DIR --dest DIR [--resize SHORT_SIDE] [--workers N]

``--source`` holds one of these (train and val are found independently):

* the official archives: ``ILSVRC2012_img_train.tar`` (a tar of 1000 per-class tars
  ``<wnid>.tar``), ``ILSVRC2012_img_val.tar`` (50,000 flat ``ILSVRC2012_val_XXXXXXXX.JPEG``) and
  ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` maps ILSVRC2012_ID → wnid,
  ``data/ILSVRC2012_validation_ground_truth.txt`` holds one ILSVRC2012_ID per val image);
* Kaggle's layout: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/}`` and ``LOC_val_solution.csv``;
* an extracted train folder ``train/`` (or ``ILSVRC2012_img_train/``) holding ``<wnid>/`` folders
  or the per-class ``<wnid>.tar`` files, and a ``val/`` folder, flat (labelled by the devkit, which
  may also be extracted as ``ILSVRC2012_devkit_t12/``) or already in class folders.

``--dest`` receives ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, ``manifest.json`` (layout,
settings, images and a checksum per class, converted files, the count check) and
``checksums.sha256`` (``sha256sum -c`` format). Every output file is a JPEG that decodes to RGB:
RGB JPEGs are copied byte for byte; the set's quirks (a PNG named .JPEG, CMYK JPEGs, greyscale
images) are converted with PIL and re-encoded (``--quality``). ``--resize S`` writes a copy whose
shorter side is at most S (larger images are shrunk, smaller ones kept).

Work is done per class on all cores; a finished class leaves a marker
``dest/.progress/<split>/<wnid>.json`` (written atomically, after its images), so an interrupted
run, started again, skips the finished classes and redoes only the rest. The source is only read.
At the end the counts are checked against the full set (1,281,167 train, 50,000 val, 1,000
classes): a mismatch exits with status 3 unless ``--allow-partial`` is given.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from workbench.files import DamagedFileError, read_json

from .files import (EXPECTED, PrepError, count_problems, remove_stale_temporaries, report_counts,
                    write_atomic)

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12"
KAGGLE = Path("ILSVRC", "Data", "CLS-LOC")
KAGGLE_VAL_CSV = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
PROGRESS = ".progress"
SETTINGS = "settings.json"


@dataclass(frozen=True)
class Job:
    """All images of one class of one split, and where to read them.

    ``kind``: ``"class_tar"`` (a per-class tar: ``path`` itself, or, when ``members`` holds its
    TarInfo, a member of the outer tar ``path``), ``"tar_members"`` (``members`` are TarInfos of
    images inside the tar ``path``) or ``"files"`` (``members`` are image paths).
    """
    split: str
    wnid: str
    kind: str
    path: str
    members: tuple = ()


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    words: dict[str, str] = field(default_factory=dict)
    known: dict[str, int] = field(default_factory=dict)

    def add(self, split: str, layout: str, inputs: list[Path], jobs: list[Job]) -> None:
        self.layouts[split] = layout
        self.inputs += inputs
        self.jobs += jobs
        self.known[f"{split} classes"] = len(jobs)
        if all(j.kind != "class_tar" for j in jobs):
            self.known[f"{split} images"] = sum(len(j.members) for j in jobs)


# ---------------------------------------------------------------------------------------------
# finding the source
# ---------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


def _folder_jobs(split: str, folder: Path) -> list[Job]:
    """One job per ``<wnid>/`` folder or ``<wnid>.tar`` in ``folder``."""
    jobs, loose = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            files = sorted(os.path.join(entry.path, f.name) for f in os.scandir(entry.path)
                           if f.is_file() and _is_image(f.name))
            jobs.append(Job(split, entry.name, "files", "", tuple(files)))
        elif entry.name.endswith(".tar"):
            jobs.append(Job(split, entry.name[:-4], "class_tar", entry.path))
        elif _is_image(entry.name):
            loose.append(entry.name)
    if loose:
        raise PrepError(f"{folder} holds {len(loose)} images outside class folders (e.g. "
                        f"{loose[0]}); expected <wnid>/ folders or <wnid>.tar files")
    if not jobs:
        raise PrepError(f"{folder} holds no <wnid>/ class folders or <wnid>.tar files")
    return jobs


def _tar_files(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:") as t:
        return [m for m in t.getmembers() if m.isfile()]


def _stem(name: str) -> str:
    return Path(name).name.split(".")[0]


def _find_train(src: Path, plan: Plan) -> bool:
    tar = src / TRAIN_TAR
    if tar.is_file():
        members = _tar_files(tar)
        odd = [m.name for m in members if not m.name.endswith(".tar")]
        if odd or not members:
            raise PrepError(f"{tar} should hold one <wnid>.tar per class; found "
                            f"{odd[:3] or 'nothing'}")
        plan.add("train", f"official archive {tar}", [tar],
                 [Job("train", _stem(m.name), "class_tar", str(tar), (m,)) for m in members])
        return True
    for folder in (src / KAGGLE / "train", src / "train", src / "ILSVRC2012_img_train"):
        if folder.is_dir():
            plan.add("train", f"folder {folder}", [folder], _folder_jobs("train", folder))
            return True
    return False


def read_devkit(path: Path) -> tuple[dict[int, str], dict[str, str], list[int]]:
    """Parse the devkit (``.tar.gz`` or extracted folder).

    Returns ``(id_to_wnid, wnid_to_words, ground_truth)``: the 1000 leaf synsets of
    ``data/meta.mat`` (``num_children == 0``) and the ILSVRC2012_ID of each val image, in order.
    """
    import scipy.io

    names = ("data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt")
    if path.is_dir():
        raw = [(path / n).read_bytes() for n in names]
    else:
        with tarfile.open(path, "r:gz") as t:
            found = {n: m for m in t.getmembers() for n in names if m.name.endswith(n)}
            missing = [n for n in names if n not in found]
            if missing:
                raise PrepError(f"{path} lacks {missing}")
            raw = [t.extractfile(found[n]).read() for n in names]
    synsets = scipy.io.loadmat(io.BytesIO(raw[0]), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    words = {str(s["WNID"]): str(s["words"]) for s in leaves}
    truth = [int(line) for line in raw[1].decode().split()]
    return id_to_wnid, words, truth


def _val_labels(src: Path, plan: Plan) -> dict[str, str]:
    """Image stem (``ILSVRC2012_val_00000001``) → wnid, from the devkit or Kaggle's CSV."""
    for devkit in (src / f"{DEVKIT}.tar.gz", src / DEVKIT):
        if devkit.exists():
            id_to_wnid, words, truth = read_devkit(devkit)
            plan.words.update(words)
            unknown = sorted(set(truth) - set(id_to_wnid))
            if unknown:
                raise PrepError(f"{devkit}: ground truth uses ILSVRC2012_IDs {unknown[:5]} that "
                                f"meta.mat does not define")
            return {f"ILSVRC2012_val_{i:08d}": id_to_wnid[t] for i, t in enumerate(truth, 1)}
    solution = src / KAGGLE_VAL_CSV
    if solution.is_file():
        synsets = src / KAGGLE_SYNSETS
        if synsets.is_file():
            for line in synsets.read_text().splitlines():
                wnid, _, words = line.partition(" ")
                plan.words[wnid] = words
        with open(solution, newline="") as f:
            return {row["ImageId"]: row["PredictionString"].split()[0]
                    for row in csv.DictReader(f)}
    raise PrepError(f"the val images in {src} need labels: put {DEVKIT}.tar.gz (or the extracted "
                    f"{DEVKIT}/ folder, or Kaggle's {KAGGLE_VAL_CSV}) into {src}")


def _labelled_jobs(items: list, key, labels: dict[str, str], kind: str, path: str,
                   where: Path) -> list[Job]:
    groups = defaultdict(list)
    for item in items:
        wnid = labels.get(_stem(key(item)))
        if wnid is None:
            raise PrepError(f"{where}: no label for {key(item)} in the ground truth")
        groups[wnid].append(item)
    return [Job("val", w, kind, path, tuple(groups[w])) for w in sorted(groups)]


def _find_val(src: Path, plan: Plan) -> bool:
    tar = src / VAL_TAR
    if tar.is_file():
        labels = _val_labels(src, plan)
        members = [m for m in _tar_files(tar) if _is_image(m.name)]
        plan.add("val", f"official archive {tar}", [tar],
                 _labelled_jobs(members, lambda m: m.name, labels, "tar_members", str(tar), tar))
        return True
    for folder in (src / KAGGLE / "val", src / "val", src / "ILSVRC2012_img_val"):
        if not folder.is_dir():
            continue
        if any(e.is_dir() for e in os.scandir(folder)):
            jobs = _folder_jobs("val", folder)
        else:
            files = sorted(e.path for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
            jobs = _labelled_jobs(files, str, _val_labels(src, plan), "files", "", folder)
        plan.add("val", f"folder {folder}", [folder], jobs)
        return True
    return False


def discover(source: Path, splits=SPLITS) -> Plan:
    """Find the requested splits in ``source``; raise :class:`PrepError` naming what it looked
    for when one is missing."""
    source = Path(source)
    if not source.is_dir():
        raise PrepError(f"--source {source} is not a folder")
    plan = Plan()
    finders = {"train": _find_train, "val": _find_val}
    wanted = {"train": f"{TRAIN_TAR}, {KAGGLE}/train/, train/ or ILSVRC2012_img_train/",
              "val": f"{VAL_TAR} (+ {DEVKIT}.tar.gz), {KAGGLE}/val/ (+ {KAGGLE_VAL_CSV}) or val/"}
    for split in splits:
        if not finders[split](source, plan):
            raise PrepError(f"no ImageNet {split} split in {source}: looked for {wanted[split]}")
    return plan


# ---------------------------------------------------------------------------------------------
# one image, one class
# ---------------------------------------------------------------------------------------------
def to_rgb_jpeg(data: bytes, resize: int | None = None, quality: int = 95
                ) -> tuple[bytes, str | None]:
    """Return ``(jpeg_bytes, quirk)``: the image as a JPEG that decodes to RGB.

    An RGB JPEG that needs no resizing is returned unchanged (``quirk`` None). Anything else (a
    PNG, a CMYK or greyscale JPEG) is converted to RGB and re-encoded; ``quirk`` names what it
    was, e.g. ``"PNG RGB"`` or ``"JPEG CMYK"``. ``resize`` shrinks the shorter side to at most
    ``resize`` pixels. The image is fully decoded either way, so a corrupt file raises here.
    """
    im = Image.open(io.BytesIO(data))
    quirk = None if (im.format == "JPEG" and im.mode == "RGB") else f"{im.format} {im.mode}"
    w, h = im.size
    target = None
    if resize and min(w, h) > resize:
        target = (resize, round(h * resize / w)) if w <= h else (round(w * resize / h), resize)
        im.draft(None, target)
    im.load()
    if quirk is None and target is None:
        return data, None
    im = im.convert("RGB")
    if target is not None:
        im = im.resize(target, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue(), quirk


def _images(job: Job):
    """Yield ``(file name, bytes)`` for every image of ``job``."""
    if job.kind == "files":
        for p in job.members:
            yield os.path.basename(p), Path(p).read_bytes()
        return
    with tarfile.open(job.path, "r:") as outer:
        if job.kind == "tar_members":
            for m in job.members:
                yield os.path.basename(m.name), outer.extractfile(m).read()
            return
        inner = tarfile.open(fileobj=outer.extractfile(job.members[0]), mode="r:") \
            if job.members else outer
        for m in inner:
            if m.isfile() and _is_image(m.name):
                yield os.path.basename(m.name), inner.extractfile(m).read()


def marker_path(dest: Path, split: str, wnid: str) -> Path:
    return Path(dest) / PROGRESS / split / f"{wnid}.json"


def process(job: Job, dest: Path, resize: int | None, quality: int) -> dict:
    """Write one class's images into ``dest/<split>/<wnid>/``, then its marker; return the
    marker's content ``{"files": {name: sha256}, "converted": {name: quirk}}``."""
    out = Path(dest) / job.split / job.wnid
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    files, converted = {}, {}
    images = _images(job)
    while True:
        try:
            name, data = next(images)
        except StopIteration:
            break
        except (tarfile.TarError, OSError) as e:
            raise PrepError(f"{job.split}/{job.wnid}: cannot read the class's source "
                            f"({type(e).__name__}: {e})") from e
        name = name if name.endswith(".JPEG") else _stem(name) + ".JPEG"
        if name in files:
            raise PrepError(f"{job.split}/{job.wnid}: two source images are written as {name}")
        try:
            jpeg, quirk = to_rgb_jpeg(data, resize, quality)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise PrepError(f"{job.split}/{job.wnid}/{name} is not a readable image: "
                            f"{type(e).__name__}: {e}") from e
        write_atomic(out / name, jpeg)
        files[name] = hashlib.sha256(jpeg).hexdigest()
        if quirk:
            converted[name] = quirk
    record = {"files": files, "converted": converted}
    marker = marker_path(dest, job.split, job.wnid)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(record).encode())
    return record


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
def _check_dest(dest: Path, plan: Plan, settings: dict) -> None:
    outs = [(dest / s).resolve() for s in SPLITS]
    for p in plan.inputs:
        p = p.resolve()
        for o in outs:
            if p == o or p.is_relative_to(o) or o.is_relative_to(p):
                raise PrepError(f"--dest {dest} would write {o}, which overlaps the source {p}; "
                                f"choose a --dest outside the source")
    stored = dest / PROGRESS / SETTINGS
    if stored.is_file():
        old = read_json(stored, "the settings of an earlier preparation",
                        f"Delete {dest / PROGRESS} to prepare {dest} again from the start")
        if old != settings:
            raise PrepError(f"{dest} was prepared with {old}, not {settings}: use the same "
                            f"settings to resume, or another --dest")
    else:
        stored.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stored, json.dumps(settings).encode())


def _run_jobs(jobs: list[Job], dest: Path, settings: dict, workers: int) -> None:
    work = partial(process, dest=dest, **settings)
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    results = pool.imap_unordered(work, jobs) if pool else map(work, jobs)
    bar = tqdm(total=len(jobs), unit="class", desc="classes", mininterval=1.0, file=sys.stderr)
    images = 0
    try:
        for record in results:
            images += len(record["files"])
            bar.set_postfix(images=images, refresh=False)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def is_done(dest: Path, job: Job) -> bool:
    """Whether ``job``'s class was finished: its marker exists and every file it lists is
    still in the class folder (a class whose files were deleted since is done again)."""
    marker = marker_path(dest, job.split, job.wnid)
    if not marker.is_file():
        return False
    folder = Path(dest) / job.split / job.wnid
    present = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    return set(read_json(marker, "a class's record", "Delete it to prepare that class "
                         "again")["files"]) <= present


def _write_manifest(dest: Path, plan: Plan, settings: dict) -> dict[str, int]:
    """Gather every finished class's marker into ``manifest.json`` and ``checksums.sha256``;
    return the counts found."""
    splits, converted, lines, found = {}, {}, [], {}
    for split in SPLITS:
        classes = {}
        for marker in sorted((dest / PROGRESS / split).glob("*.json")):
            wnid, record = marker.stem, read_json(marker, "a class's record",
                                                  "Delete it to prepare that class again")
            listing = [f"{sha}  {split}/{wnid}/{name}"
                       for name, sha in sorted(record["files"].items())]
            lines += listing
            classes[wnid] = {"images": len(listing),
                             "sha256": hashlib.sha256("\n".join(listing).encode()).hexdigest()}
            converted.update({f"{split}/{wnid}/{n}": q for n, q in record["converted"].items()})
        if classes:
            found[f"{split} classes"] = len(classes)
            found[f"{split} images"] = sum(c["images"] for c in classes.values())
            splits[split] = {"images": found[f"{split} images"], "classes": classes}
    manifest = {"format": "workbench-imagenet-1", "source": plan.layouts, **settings,
                "counts": found, "expected": EXPECTED,
                "complete": not count_problems(found, EXPECTED), "splits": splits,
                "converted": converted, "words": plan.words}
    write_atomic(dest / "manifest.json", json.dumps(manifest, indent=1).encode())
    write_atomic(dest / "checksums.sha256", ("\n".join(lines) + "\n").encode())
    return found


def prepare(source, dest, *, resize: int | None = None, quality: int = 95,
            workers: int | None = None, splits=SPLITS, allow_partial: bool = False) -> int:
    """Prepare ImageNet from ``source`` into ``dest`` (see the module docstring).

    Returns the exit status: 0, or 3 when the counts do not match the full set and
    ``allow_partial`` is False. Raises :class:`PrepError` on unusable input.
    """
    source, dest = Path(source), Path(dest)
    if resize is not None and resize < 1:
        raise PrepError(f"--resize must be a positive number of pixels, got {resize}")
    if not 1 <= quality <= 100:
        raise PrepError(f"--quality must lie in 1..100, got {quality}")
    workers = workers or os.cpu_count() or 1
    plan = discover(source, splits)
    expected = {k: v for k, v in EXPECTED.items() if k.split()[0] in splits}
    for split in splits:
        print(f"{split}: {plan.layouts[split]}")
    early = count_problems(plan.known, {k: expected[k] for k in plan.known})
    if early and not allow_partial:
        return report_counts(early, allow_partial, f"ImageNet in {source}")
    settings = {"resize": resize, "quality": quality}
    dest.mkdir(parents=True, exist_ok=True)
    _check_dest(dest, plan, settings)
    todo = [j for j in plan.jobs if not is_done(dest, j)]
    print(f"{len(plan.jobs) - len(todo)} of {len(plan.jobs)} classes already done; "
          f"{len(todo)} to do on {workers} worker(s)")
    _run_jobs(todo, dest, settings, workers)
    found = _write_manifest(dest, plan, settings)
    print(", ".join(f"{v:,} {k}" for k, v in found.items()) + f" in {dest}")
    return report_counts(count_problems(found, expected), allow_partial, f"ImageNet in {dest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.imagenet",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="folder holding the archives or folders")
    p.add_argument("--dest", required=True, help="output folder (train/, val/, manifest.json)")
    p.add_argument("--resize", type=int, default=None, metavar="SHORT_SIDE",
                   help="shrink images so the shorter side is at most this (e.g. 256 or 160)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoded images")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--splits", default="train,val", help="comma-separated subset of train,val")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a set whose counts differ from the full ILSVRC2012")
    args = p.parse_args(argv)
    splits = tuple(s for s in args.splits.split(",") if s)
    try:
        if not splits or set(splits) - set(SPLITS):
            raise PrepError(f"--splits takes a comma-separated subset of train,val, "
                            f"got {args.splits!r}")
        if args.workers is not None and args.workers < 1:
            raise PrepError(f"--workers must be at least 1, got {args.workers}")
        return prepare(args.source, args.dest, resize=args.resize, quality=args.quality,
                       workers=args.workers, splits=splits, allow_partial=args.allow_partial)
    except (PrepError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:            # WriteError (a full disk: the file named) or the OS's own
        print(f"error: {e}; what was written is complete: run the same command again to "
              f"continue once the cause is fixed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
