"""Annotation loaders for CIRCO, CIRR and FashionIQ (images are the user's to download).

Each returns `EvalQuery` records with the instruction built as the released MagicLens eval
does: CIRCO "find {shared_concept} but {relative_caption}", FashionIQ the two captions joined
with " and ", CIRR its caption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ANNOTATION_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class EvalQuery:
    qid: str
    reference: str  # image id
    instruction: str
    targets: tuple[str, ...] = ()  # ground truth ids (empty for test splits)
    subset: tuple[str, ...] = ()  # CIRR image set members
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _load_json(path: str | Path) -> Any:
    path = Path(path)
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise ValueError(f"{path} is larger than {MAX_ANNOTATION_BYTES} bytes")
    return json.loads(path.read_text())


def _str(rec: dict, key: str, path: Path) -> str:
    v = rec.get(key)
    if not isinstance(v, str | int) or isinstance(v, bool):
        raise ValueError(f"{path}: field {key!r} missing or not a string/int in {rec!r:.200}")
    return str(v)


def load_circo(annotation_file: str | Path) -> list[EvalQuery]:
    """CIRCO `annotations/{val,test}.json`: ids are COCO image ids (as strings)."""
    path = Path(annotation_file)
    out = []
    for rec in _load_json(path):
        gts = tuple(str(g) for g in rec.get("gt_img_ids", []) or [])
        out.append(EvalQuery(
            qid=_str(rec, "id", path), reference=_str(rec, "reference_img_id", path),
            instruction=f"find {_str(rec, 'shared_concept', path)} but "
                        f"{_str(rec, 'relative_caption', path)}",
            targets=gts))
    return out


def circo_image_file(image_id: str) -> str:
    """COCO unlabeled2017 file name of an id."""
    return f"{int(image_id):012d}.jpg"


def load_cirr(caption_file: str | Path) -> list[EvalQuery]:
    """CIRR `captions/cap.rc2.{val,test1}.json` (test1 has no targets)."""
    path = Path(caption_file)
    out = []
    for rec in _load_json(path):
        target = rec.get("target_hard")
        members = tuple(str(m) for m in (rec.get("img_set") or {}).get("members", []))
        out.append(EvalQuery(
            qid=_str(rec, "pairid", path), reference=_str(rec, "reference", path),
            instruction=_str(rec, "caption", path),
            targets=(str(target),) if isinstance(target, str) else (), subset=members))
    return out


def load_cirr_split(split_file: str | Path) -> dict[str, str]:
    """CIRR `image_splits/split.rc2.SPLIT.json`: image id -> relative path."""
    data = _load_json(split_file)
    if not isinstance(data, dict):
        raise ValueError(f"{split_file}: expected an object of id -> path")
    return {str(k): str(v) for k, v in data.items()}


def load_fashioniq(caption_file: str | Path) -> list[EvalQuery]:
    """FashionIQ `captions/cap.{dress,shirt,toptee}.val.json`."""
    path = Path(caption_file)
    out = []
    for i, rec in enumerate(_load_json(path)):
        caps = rec.get("captions")
        if not (isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps)):
            raise ValueError(f"{path}: entry {i} needs a list of caption strings")
        target = rec.get("target")
        out.append(EvalQuery(
            qid=str(i), reference=_str(rec, "candidate", path), instruction=" and ".join(caps),
            targets=(str(target),) if isinstance(target, str) else ()))
    return out


def load_fashioniq_split(split_file: str | Path) -> list[str]:
    """FashionIQ `image_splits/split.{category}.val.json`: the gallery's image ids."""
    data = _load_json(split_file)
    if not isinstance(data, list):
        raise ValueError(f"{split_file}: expected a list of image ids")
    return [str(x) for x in data]
