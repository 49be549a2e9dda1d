"""Example queries for one-click demos, read from the JSON file the demo writes.

Accepted shapes: `[{...}, ...]` or `{"examples": [{...}, ...]}`, each item
`{"image_id": 12, "instruction": "...", "title": "optional label"}`. A missing file means no
examples; a malformed one is reported (never guessed at).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1024 * 1024
MAX_EXAMPLES = 60


class ExamplesError(ValueError):
    pass


def load_examples(path: Path, max_instruction_chars: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ExamplesError(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExamplesError(f"{path.name} is not valid JSON ({exc})") from None
    items = data.get("examples") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ExamplesError(f"{path.name}: want a list of examples")
    out = []
    for i, item in enumerate(items[:MAX_EXAMPLES]):
        if not isinstance(item, dict):
            raise ExamplesError(f"{path.name}: example {i} is not an object")
        image_id, instruction = item.get("image_id"), item.get("instruction", "")
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id <= 0:
            raise ExamplesError(f"{path.name}: example {i} has no positive integer image_id")
        if not isinstance(instruction, str) or len(instruction) > max_instruction_chars:
            raise ExamplesError(f"{path.name}: example {i} has a bad instruction")
        title = item.get("title") or item.get("label") or instruction
        out.append({"image_id": image_id, "instruction": instruction,
                    "title": str(title)[:200]})
    return out
