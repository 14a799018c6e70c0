"""Turn the public Amazon review dumps (2014 or 2018 release) into RecBole atomic files.

This module owns the step from raw dumps to `<out>/<name>/<name>.inter` and `<name>.item`:

    python -m recbole_navigen.data.prepare_amazon --reviews R.json.gz --meta M.json.gz --out DIR --name NAME

Inputs hold one record per line, gzip-compressed when the name ends in `.gz`. Reviews are JSON lines with
`reviewerID`, `asin`, `unixReviewTime`. Metadata is JSON lines (2018) or Python dict literals (2014); the
release is told apart per record by its fields: 2014 has `categories` (a list of paths, the first is used)
and a string `description`, 2018 has `category` (one path) and `description` as a list of strings.

Rules, in this order:
1. A review whose item has no title in the metadata is dropped.
2. A repeated (user, item) pair keeps its earliest interaction (on equal times, the first in the file).
3. Iterative k-core filtering: users and items with fewer than `k_core` interactions are removed until
   every remaining user and item has at least `k_core`.
4. Each user's interactions are written in chronological order; equal times keep the file's order.

Every text field is cleaned: HTML entities unescaped, HTML tags removed, whitespace runs (tabs, newlines)
collapsed to one space, ends stripped. The brand becomes one token (spaces -> `_`), category levels are
joined by ` | `, and the description is cut to `max_description_chars`. Fields holding a double quote
are written CSV-quoted, which is how pandas, RecBole's reader, expects them.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import html
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from recbole_navigen.fileio import atomic_open

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = [
    "item_id:token", "title:token_seq", "brand:token", "categories:token_seq", "description:token_seq"
]
REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


class PrepareError(ValueError):
    """An input file holds a record that cannot be read; the message names the file and line."""


@dataclass
class PreparedStats:
    """What `prepare` wrote and what each rule dropped."""

    users: int
    items: int
    interactions: int
    dropped_no_title: int
    dropped_duplicate: int
    dropped_k_core: int

    def summary(self) -> str:
        """The counts on one line."""
        return ", ".join(f"{key}={value}" for key, value in asdict(self).items())


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield `(line number, record)` for each non-blank line: JSON first, else a Python dict literal."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(tqdm(lines, desc=path.name, unit=" lines"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    message = "neither JSON nor a Python dict literal"
                    raise PrepareError(f"{path}, line {number}: {message}") from None
            if not isinstance(record, dict):
                raise PrepareError(f"{path}, line {number}: expected an object, got {type(record).__name__}")
            yield number, record


def clean_text(text: object) -> str:
    """Unescape HTML entities, drop HTML tags, collapse whitespace to single spaces and strip."""
    if not isinstance(text, str):
        return ""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()


def parse_meta(record: dict, max_description_chars: int = 300) -> dict | None:
    """The cleaned item fields of one metadata record (2014 or 2018); None when it has no asin or title."""
    title = clean_text(record.get("title"))
    if not record.get("asin") or not title:
        return None
    paths = record.get("categories")  # 2014: a list of paths
    path = paths[0] if paths else record.get("category") or []  # 2018: one path
    description = record.get("description")
    if isinstance(description, list):
        description = " ".join(part for part in description if isinstance(part, str))
    return {
        "item_id": str(record["asin"]),
        "title": title,
        "brand": clean_text(record.get("brand")).replace(" ", "_"),
        "categories": " | ".join(level for level in map(clean_text, path) if level),
        "description": clean_text(description)[:max_description_chars].rstrip(),
    }


def filter_k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Remove users and items with fewer than `k` interactions, repeatedly, until none is left."""
    while True:
        keep = pd.Series(True, index=frame.index)
        for column in ("user_id", "item_id"):
            keep &= frame[column].map(frame[column].value_counts()) >= k
        if keep.all():
            return frame
        frame = frame[keep]


def write_atomic_file(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    """Write a tab-separated RecBole atomic file, atomically."""
    with atomic_open(path, newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def prepare(
    reviews: str | Path,
    meta: str | Path,
    out: str | Path,
    name: str,
    k_core: int = 5,
    max_description_chars: int = 300,
) -> PreparedStats:
    """Read both dumps, apply the module's rules and write `<out>/<name>/<name>.inter` and `.item`."""
    reviews, meta = Path(reviews), Path(meta)
    for path in (reviews, meta):
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
    items: dict[str, dict] = {}
    for _, record in read_records(meta):
        item = parse_meta(record, max_description_chars)
        if item is not None:
            items[item["item_id"]] = item

    rows: list[tuple[str, str, int]] = []
    dropped_no_title = 0
    for number, record in read_records(reviews):
        missing = [field for field in REVIEW_FIELDS if record.get(field) in (None, "")]
        if missing:
            raise PrepareError(f"{reviews}, line {number}: review lacks {', '.join(missing)}")
        try:
            timestamp = int(record["unixReviewTime"])
        except (TypeError, ValueError):
            raise PrepareError(f"{reviews}, line {number}: unixReviewTime is not an integer") from None
        if str(record["asin"]) in items:
            rows.append((str(record["reviewerID"]), str(record["asin"]), timestamp))
        else:
            dropped_no_title += 1

    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).rename_axis("order")
    frame = frame.sort_values(["timestamp", "order"]).drop_duplicates(["user_id", "item_id"])
    dropped_duplicate = len(rows) - len(frame)
    frame = filter_k_core(frame, k_core)
    if frame.empty:
        raise PrepareError(f"{reviews}: no interaction is left after {k_core}-core filtering")
    frame = frame.sort_values(["user_id", "timestamp", "order"])

    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic_file(folder / f"{name}.inter", INTER_HEADER, frame.astype(str).itertuples(index=False))
    kept = sorted(frame["item_id"].unique())
    write_atomic_file(folder / f"{name}.item", ITEM_HEADER, (list(items[item].values()) for item in kept))
    return PreparedStats(
        users=frame["user_id"].nunique(),
        items=len(kept),
        interactions=len(frame),
        dropped_no_title=dropped_no_title,
        dropped_duplicate=dropped_duplicate,
        dropped_k_core=len(rows) - dropped_duplicate - len(frame),
    )


def main(argv: list[str] | None = None) -> PreparedStats:
    """The command line: parse arguments, run `prepare`, print the one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_navigen.data.prepare_amazon", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--reviews", required=True, type=Path, help="reviews file (.json or .json.gz)")
    parser.add_argument("--meta", required=True, type=Path, help="metadata file (.json or .json.gz)")
    parser.add_argument("--out", required=True, type=Path, help="folder that receives <name>/")
    parser.add_argument("--name", required=True, help="dataset name: names the folder and the files")
    parser.add_argument("--k_core", type=int, default=5, help="minimum interactions per user and item")
    parser.add_argument("--max_description_chars", type=int, default=300)
    args = parser.parse_args(argv)
    try:
        stats = prepare(args.reviews, args.meta, args.out, args.name, args.k_core, args.max_description_chars)
    except (FileNotFoundError, PrepareError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"{args.name}: {stats.summary()}")
    return stats


if __name__ == "__main__":
    main()
