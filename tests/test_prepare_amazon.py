"""`recbole_navigen.data.prepare_amazon`: raw Amazon dumps (2014 and 2018 formats) to atomic files."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from recbole_navigen.data.prepare_amazon import PrepareError, main, prepare

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq"
LONG = "word " * 100


def _write_lines(path: Path, lines: list[str]) -> Path:
    data = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _reviews_2018() -> list[tuple[str, str, int]]:
    """(user, item, time) with k=3 in mind.

    u1..u5 review A-D; u6 reviews A, B, C (B and C at the same time) and E; u7 reviews E, A, B; u8 reviews
    E, A. u8 is too short, which leaves E with 2 reviews, which leaves u7 with 2: only iterative filtering
    removes E and u7. F has 2 reviews; G has no title; u1 reviews A twice (the earlier one must stay).
    """
    reviews = [(f"u{u}", item, 1000 * u + 10 * i) for u in range(1, 6) for i, item in enumerate("DCBA")]
    reviews += [("u6", "A", 100), ("u6", "B", 200), ("u6", "C", 200), ("u6", "E", 300)]
    reviews += [("u7", "E", 1), ("u7", "A", 2), ("u7", "B", 3), ("u8", "E", 1), ("u8", "A", 2)]
    reviews += [("u1", "F", 7), ("u2", "F", 8)] + [(f"u{u}", "G", 9) for u in (3, 4, 5)]
    random.Random(0).shuffle(reviews)
    b, c = reviews.index(("u6", "B", 200)), reviews.index(("u6", "C", 200))
    reviews[min(b, c)], reviews[max(b, c)] = ("u6", "C", 200), ("u6", "B", 200)  # tie: C before B in the file
    reviews.append(("u1", "A", 5))  # u1's repeat of A: last in the file, yet the earliest
    return reviews


def _meta_2018() -> list[dict]:
    return [
        {"asin": "A", "title": "Guitar &amp; Strap <b>Deluxe</b>", "brand": "Fender Musical",
         "category": ["Musical Instruments", "Guitars &amp; Basses"],
         "description": ["<p>Great\tstrap.</p>", "Second\n\npart."]},
        {"asin": "B", "title": "&quot;Pro&quot; 12\" Cable", "brand": "", "category": [], "description": []},
        {"asin": "C", "title": "Picks", "category": ["Musical Instruments"], "description": [LONG]},
        {"asin": "D", "title": "Tuner", "brand": "Snark", "category": [], "description": []},
        {"asin": "E", "title": "Capo"},
        {"asin": "F", "title": "Strings"},
        {"asin": "G", "title": " <br> ", "brand": "Nobody"},
    ]


@pytest.fixture()
def raw_2018(tmp_path) -> tuple[Path, Path, list[tuple[str, str, int]]]:
    reviews = _reviews_2018()
    fields = ("reviewerID", "asin", "unixReviewTime")
    lines = [json.dumps({**dict(zip(fields, review)), "vote": "2"}) for review in reviews]
    reviews_path = _write_lines(tmp_path / "reviews.json.gz", lines)  # gzip-compressed
    meta_path = _write_lines(tmp_path / "meta.json", [json.dumps(record) for record in _meta_2018()])
    return reviews_path, meta_path, reviews


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_2018_dump_becomes_atomic_files(tmp_path, raw_2018):
    reviews_path, meta_path, reviews = raw_2018
    stats = prepare(reviews_path, meta_path, tmp_path / "out", "toy", k_core=3)

    folder = tmp_path / "out" / "toy"
    assert sorted(path.name for path in folder.iterdir()) == ["toy.inter", "toy.item"]  # no .partial left
    assert (folder / "toy.inter").read_text().splitlines()[0] == INTER_HEADER
    assert (folder / "toy.item").read_text().splitlines()[0] == ITEM_HEADER
    inter, item = _read(folder / "toy.inter"), _read(folder / "toy.item")

    assert sorted(inter["user_id:token"].unique()) == [f"u{u}" for u in range(1, 7)]  # u7, u8 gone
    assert sorted(item["item_id:token"]) == ["A", "B", "C", "D"]  # E (iteratively), F (k-core), G (no title)
    assert (stats.users, stats.items, stats.interactions) == (6, 4, 23)
    assert (stats.dropped_no_title, stats.dropped_duplicate, stats.dropped_k_core) == (3, 1, 8)

    pair = inter[(inter["user_id:token"] == "u1") & (inter["item_id:token"] == "A")]
    assert pair["timestamp:float"].tolist() == ["5"]  # the earliest of the repeated pair

    kept = set(zip(inter["user_id:token"], inter["item_id:token"]))
    expected: dict[str, list[tuple[str, str]]] = {}
    for user, item_id, time in sorted(reviews, key=lambda r: r[2]):  # stable: ties keep the raw file's order
        if (user, item_id) in kept and item_id not in dict(expected.get(user, [])):
            expected.setdefault(user, []).append((item_id, str(time)))
    for user, rows in inter.groupby("user_id:token"):
        assert list(zip(rows["item_id:token"], rows["timestamp:float"])) == expected[user]
    assert expected["u6"] == [("A", "100"), ("C", "200"), ("B", "200")]  # the tie against the id order
    assert inter["user_id:token"].is_monotonic_increasing  # each user's rows are contiguous

    by_id = item.set_index("item_id:token")
    assert by_id.loc["A"].tolist() == [
        "Guitar & Strap Deluxe",
        "Fender_Musical",
        "Musical Instruments | Guitars & Basses",
        "Great strap. Second part.",
    ]
    assert by_id.loc["B", "title:token_seq"] == '"Pro" 12" Cable'  # quotes survive pandas, RecBole's reader
    assert by_id.loc["C", "description:token_seq"] == LONG[:300].strip()


def test_2014_dump_with_python_literal_meta(tmp_path):
    reviews = [("x", "P1", 3), ("y", "P1", 1), ("x", "P2", 2), ("y", "P2", 4), ("z", "P1", 5)]
    extra = {"reviewText": "ok", "overall": 4.0, "helpful": [0, 0]}
    lines = [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, **extra}) for u, i, t in reviews]
    meta = [
        {"asin": "P1", "title": "Drum &amp; Bass Kit", "brand": "Pearl Drums",
         "categories": [["Musical Instruments", "Drums &amp; Percussion"], ["Other"]],
         "description": "A <i>loud</i>\ndrum kit.", "price": 9.5},
        {"asin": "P2", "title": "Sticks", "categories": [["Musical Instruments"]], "description": "Oak."},
    ]
    meta_path = _write_lines(tmp_path / "meta.json.gz", [repr(record) for record in meta])  # not JSON
    with gzip.open(meta_path, "rt") as stream:
        assert stream.readline().startswith("{'asin': 'P1'")
    stats = prepare(_write_lines(tmp_path / "r.json", lines), meta_path, tmp_path, "old", k_core=2,
                    max_description_chars=6)

    inter, item = _read(tmp_path / "old" / "old.inter"), _read(tmp_path / "old" / "old.item")
    pairs = list(zip(inter["user_id:token"], inter["item_id:token"]))
    assert pairs == [("x", "P2"), ("x", "P1"), ("y", "P1"), ("y", "P2")]  # z (one review) is gone
    assert item.set_index("item_id:token").loc["P1"].tolist() == [
        "Drum & Bass Kit", "Pearl_Drums", "Musical Instruments | Drums & Percussion", "A loud"
    ]
    assert (stats.users, stats.items, stats.interactions, stats.dropped_k_core) == (2, 2, 4, 1)


def test_bad_input_names_file_and_line(tmp_path):
    meta = _write_lines(tmp_path / "meta.json", [json.dumps({"asin": "A", "title": "T"})])
    good = json.dumps({"reviewerID": "u", "asin": "A", "unixReviewTime": 1})
    garbled = _write_lines(tmp_path / "garbled.json", [good, "", "{not json, nor a dict"])
    with pytest.raises(PrepareError, match=r"garbled\.json, line 3: neither JSON nor"):
        prepare(garbled, meta, tmp_path, "bad")
    no_time = json.dumps({"reviewerID": "u", "asin": "A"})
    incomplete = _write_lines(tmp_path / "incomplete.json", [good, no_time])
    with pytest.raises(PrepareError, match=r"incomplete\.json, line 2: review lacks unixReviewTime"):
        prepare(incomplete, meta, tmp_path, "bad")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        prepare(tmp_path / "nowhere.json", meta, tmp_path, "bad")
    with pytest.raises(PrepareError, match="no interaction is left after 2-core"):
        prepare(_write_lines(tmp_path / "one.json", [good]), meta, tmp_path, "bad", k_core=2)
    assert not (tmp_path / "bad").exists()


def test_command_line(tmp_path, raw_2018, capsys):
    reviews_path, meta_path, _ = raw_2018
    args = ["--reviews", str(reviews_path), "--meta", str(meta_path), "--out", str(tmp_path), "--name", "cli"]
    main([*args, "--k_core", "3"])
    assert "cli: users=6, items=4, interactions=23, dropped_no_title=3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--reviews", str(tmp_path / "missing.json.gz"), *args[2:]])
    assert exit_info.value.code == 1
    assert "missing.json.gz" in capsys.readouterr().err


def test_recbole_loads_the_output(tmp_path, raw_2018, monkeypatch):
    import recbole_navigen  # noqa: F401  (compatibility shims before RecBole's Config)
    from recbole.data import create_dataset

    from recbole_navigen.config import Config

    reviews_path, meta_path, _ = raw_2018
    out_dir = tmp_path / "data"
    prepare(reviews_path, meta_path, out_dir, "toy-amazon", k_core=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAVIGEN_DATA_PATH", raising=False)
    config = Config("SASRec", "toy-amazon", config_dict={
        "data_path": str(out_dir), "k_core": None, "show_progress": False, "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                     "item": ["item_id", "title", "brand", "categories", "description"]},
    }, cmd_args=[])
    dataset = create_dataset(config)
    assert (dataset.inter_num, dataset.user_num, dataset.item_num) == (23, 7, 5)  # ids plus padding
    title = dataset.item_feat["title"][dataset.token2id("item_id", "B")]
    assert [dataset.id2token("title", t) for t in title.tolist() if t] == ['"Pro"', '12"', "Cable"]
