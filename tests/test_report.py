"""The HTML run report: a sweep folder and a main job's folders, escaping of model and data text, and (when
Chromium is installed) the page as a browser draws it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import run_recbole_navigen
from recbole_navigen.evaluation.report import write_report
from recbole_navigen.quick_start import RunResult
from recbole_navigen.rl.log import write_rl_log
from recbole_navigen.sweep import write_summary

RUN = "NaviGen-tiny-0123456789"
SCRIPT_TITLE = "<script>alert(1)</script>"
IMG_TITLE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


def _result(model: str, seed: int, scale: float, stage: str | None = None) -> RunResult:
    test = {f"{metric}@{k}": round(scale * k / (20 + index), 4)
            for index, metric in enumerate(("recall", "ndcg", "mrr")) for k in (5, 10, 20)}
    config = {"stages": [1, 2, "rl"], "stage": stage, "results_dir": "results", "eval_user_sample": None}
    return RunResult(model, "tiny", seed, test["ndcg@10"], test, test, 12.5, 40, 40, 8.0, 1234, "f00d",
                     None, config)


@pytest.fixture()
def main_job(tmp_path) -> tuple[Path, Path]:
    """(saved/<run>, results/tiny/<run>) of a main job: three stages, an RL log, two users' lines, one picture."""
    saved, results = tmp_path / "saved" / RUN, tmp_path / "results" / "tiny" / RUN
    for scale, stage in ((0.5, 1), (1.0, 2), (1.2, "rl")):
        folder = saved / (f"stage{stage}" if isinstance(stage, int) else stage)
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(_result("NaviGen", 2020, scale, stage).to_json())
    write_rl_log([{"step": step, "reward_mean": 0.1 * step, "reward_std": 0.05, "kl": 0.01 * step,
                   "valid_format_rate": 0.5, "completion_length": 40.0} for step in (1, 2, 3)], saved / "rl")
    (saved / "summary.md").write_text(f"# {RUN}\n\n| step | status | detail |\n|---|---|---|\n"
                                      "| stage 1 | ran | test ndcg@10 0.1 |\n| stage rl | ran | <b>bold?</b> |\n")
    results.mkdir(parents=True)
    rows = [_line("u1", [("10", SCRIPT_TITLE), ("11", "Heat")], ("12", IMG_TITLE), "a neon alley at night, rain"),
            _line('u"2<x>', [("11", "Heat")], ("10", "Casablanca"), None)]
    (results / "instructions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (results / "images").mkdir()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(results / "images" / "u1.png")
    (results / "images" / "index.json").write_text(json.dumps({"u1": {"image": "u1.png", "seed": 7}}))
    return saved, results


def _line(user: str, history: list[tuple[str, str]], target: tuple[str, str], instruction: str | None) -> dict:
    def item(item_id: str, title: str) -> dict:
        return {"item": item_id, "title": f"movie_title: {title}", "text": f"movie_title: {title}; class: Drama"}

    return {"user": user, "history": [item(*entry) for entry in history],
            "target": {**item(*target), "tid": ["neon", "<rain>"]},
            "predicted": [{"item": target[0], "cid": "<|cid_begin|><a_1><|cid_end|>", "score": -1.5},
                          {"item": "11", "cid": "<|cid_begin|><a_2><|cid_end|>", "score": -2.0}],
            "top_item_tid": ["neon"], "supervision": "heuristic", "predicted_tid": ["neon"] if instruction else None,
            "instruction": instruction, "reasoning": "I keep coming back to </p><script>x()</script> noir.",
            "parse_status": "ok" if instruction else "failed", "parse_error": None if instruction else "no JSON"}


def test_main_job_report_from_either_folder(main_job):
    saved, results = main_job
    run_recbole_navigen.main(["report", f"--run={saved}"])  # written into the results folder
    html = (results / "report.html").read_text()
    assert write_report(results) == results / "report.html"
    assert _undated((results / "report.html").read_text()) == _undated(html)

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html  # every text escaped
    assert "&lt;img src=x onerror=" in html and "<img src=x" not in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "u&#34;2&lt;x&gt;" in html
    stages = re.findall(r"<tr><td>(stage1|stage2|rl)</td>", html)
    assert stages == ["stage1", "stage2", "rl"]
    assert 'src="metrics_vs_k.png"' in html and Image.open(results / "metrics_vs_k.png").size[0] > 600
    assert 'src="rl-rl_log.png"' in html and (results / "rl-rl_log.png").read_bytes() == (
        saved / "rl" / "rl_log.png").read_bytes()
    assert html.count('class="user-card"') == 2 and 'src="images/u1.png"' in html
    assert "a neon alley at night, rain" in html and "Heat" in html and "movie_title:" not in html


def _undated(html: str) -> str:
    return re.sub(r"written [\d-]+ [\d:]+", "", html)


def test_sweep_report(tmp_path):
    run_dir = tmp_path / "results" / "tiny" / "20250101-000000"
    run_dir.mkdir(parents=True)
    results = []
    for number, (model, scale) in enumerate((("SASRec", 1.0), ("<b>Evil</b>", 0.5))):
        for seed in (1, 2):
            result = _result(model, seed, scale * (1 + seed / 10))
            (run_dir / f"model{number}-seed{seed}.json").write_text(result.to_json())
            results.append(json.loads(result.to_json()))
    write_summary(run_dir, results)
    html = write_report(run_dir).read_text()
    assert "<tr><td>SASRec</td><td>2</td>" in html and "&lt;b&gt;Evil&lt;/b&gt;" in html and "<b>" not in html
    assert " ± " in html and "all 40 users" in html
    assert (run_dir / "metrics_vs_k.png").is_file() and 'id="gallery"' not in html


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder at .*missing"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty is not a run folder"):
        run_recbole_navigen.main(["report", f"--run={tmp_path / 'empty'}"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_in_a_browser(main_job, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH (.ci/run installs the Debian package)")
    report = write_report(main_job[0])
    flags = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("Chromium did not finish loading the report: did a script in it run (an alert blocks)?")
    assert 'id="results"' in dom and dom.count('class="user-card"') == 2 and 'id="gallery"' in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script" not in dom  # shown as text, not run
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # the onerror handler never ran
    screenshot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=60, check=True)
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1200, 2000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50  # text, tables and plots, not a blank page
