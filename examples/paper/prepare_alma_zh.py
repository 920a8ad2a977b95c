"""Write ALMA's zh-en pairs as a local JSON-lines file whose Chinese side is named ``zh_Hans``.

FLORES-200 names its Simplified Chinese file ``zho_Hans``, which mtforget reads as ``zh_Hans``;
ALMA-Human-Parallel names the same language ``zh``. mtforget keeps the script subtag of languages
written in several scripts, so the two codes are different languages to it and the study's
``zh_Hans-en`` directions would find no pairs in ALMA. This script renames the key once:

    python examples/paper/prepare_alma_zh.py            # writes data/alma/zh-en.jsonl (needs the hub)

The other four ALMA pairs (cs, de, is, ru) carry the same codes as FLORES and are read from the
hub directly by the study files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

DATASET = "haoranxu/ALMA-Human-Parallel"
RENAME = {"zh": "zh_Hans"}


def write_pairs(rows: Iterable[dict], out: Path) -> int:
    """Write rows that have a ``translation`` mapping to ``out``, Chinese renamed; returns the count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            pair = {RENAME.get(lang, lang): text for lang, text in row["translation"].items()}
            f.write(json.dumps({"id": f"alma-zh-en-{i}", "translation": pair}, ensure_ascii=False) + "\n")
            count += 1
    return count


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "data" / "alma" / "zh-en.jsonl")
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    import datasets

    rows = datasets.load_dataset(DATASET, "zh-en", split=args.split)
    print(f"{write_pairs(rows, args.out)} pairs written to {args.out}")


if __name__ == "__main__":
    main()
