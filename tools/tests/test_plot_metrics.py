"""tools/plot_metrics.py: PNG output from synthetic JSONL metrics and its error cases."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import plot_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT = Path(__file__).resolve().parents[1] / "plot_metrics.py"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def training_log(scale=1.0):
    records = []
    for step in range(1, 21):
        tokens = step * 4096
        records.append({"kind": "train", "step": step, "tokens": tokens, "time": 1.5 * step,
                        "stage1_loss": scale * 4.0 / step, "stage2_loss": scale * 3.0 / step ** 0.5,
                        "tokens_per_s": 9000.0 + step})
        if step % 5 == 0:
            records.append({"kind": "eval", "step": step, "tokens": tokens, "elapsed_s": 3.0,
                            "student_ppl": 400.0 / step, "teacher_ppl": 20.0,
                            "ratio": 20.0 / step, "kl": 2.0 / step, "top1": 0.1 + step / 100,
                            "baseline_ppl": {"kn5": 123.4, "unigram": 700}})
    return records


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


def test_read_metrics_keys_and_baselines(tmp_path):
    log = write_jsonl(tmp_path / "run.jsonl", training_log())
    metrics = plot_metrics.read_metrics([log], "tokens")
    assert list(metrics.series) == [
        "stage1_loss", "stage2_loss", "tokens_per_s", "student_ppl", "teacher_ppl", "ratio", "kl", "top1"
    ]
    assert set(metrics.series["stage1_loss"]) == {("run", "train")}
    eval_ppl = metrics.series["student_ppl"][("run", "eval")]
    assert eval_ppl.xs == [5 * 4096.0, 10 * 4096.0, 15 * 4096.0, 20 * 4096.0]
    assert metrics.baselines == {"ppl": {("run", "kn5"): 123.4, ("run", "unigram"): 700.0}}


def test_time_like_keys_are_skipped():
    for key in ("time", "elapsed_s", "wall_s", "step_time", "timestamp", "eval_seconds"):
        assert plot_metrics.is_time_like(key), key
    for key in ("tokens_per_s", "stage1_loss", "student_ppl", "top1"):
        assert not plot_metrics.is_time_like(key), key


def test_log_scale_rule():
    assert plot_metrics.use_log_scale("student_ppl", [3.0, 40.0])
    assert plot_metrics.use_log_scale("ratio", [1.5])
    assert not plot_metrics.use_log_scale("kl", [1.0])
    assert not plot_metrics.use_log_scale("ratio", [0.0, 1.0])


def test_writes_png_from_two_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", training_log())
    b = write_jsonl(tmp_path / "b.jsonl", training_log(scale=1.3) + [{"kind": "train", "step": 21,
                                                                       "tokens": 21 * 4096,
                                                                       "stage1_loss": float("nan")}])
    out = tmp_path / "plots" / "curves.png"
    assert plot_metrics.main([str(a), str(b), "--out", str(out), "--x", "step"]) == 0
    assert_png(out)
    assert not list(out.parent.glob("*.tmp"))


def test_script_runs_from_the_repo_root(tmp_path):
    log = write_jsonl(tmp_path / "m.jsonl", training_log())
    out = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, str(SCRIPT), str(log), "--out", str(out)],
                          capture_output=True, text=True, cwd=SCRIPT.parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert_png(out)


def run_main(capsys, *argv):
    code = plot_metrics.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    out = tmp_path / "c.png"
    code, err = run_main(capsys, missing, "--out", out)
    assert code == 2 and err.startswith("error: ") and str(missing) in err and "not found" in err
    assert not out.exists()


def test_invalid_json_line_names_file_and_line(tmp_path, capsys):
    log = tmp_path / "bad.jsonl"
    log.write_text(json.dumps(training_log()[0]) + "\n\n{\"kind\": \"train\", \"step\": 2,\n")
    out = tmp_path / "c.png"
    code, err = run_main(capsys, log, "--out", out)
    assert code == 2 and f"{log}:3" in err and "invalid JSON" in err
    assert not out.exists()


def test_non_object_and_missing_x_are_errors(tmp_path, capsys):
    log = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    code, err = run_main(capsys, log, "--out", tmp_path / "c.png")
    assert code == 2 and f"{log}:1" in err
    log = write_jsonl(tmp_path / "nox.jsonl", [{"kind": "train", "step": 1, "stage1_loss": 2.0}])
    code, err = run_main(capsys, log, "--out", tmp_path / "c.png")
    assert code == 2 and f"{log}:1" in err and '"tokens"' in err
    assert plot_metrics.main([str(log), "--out", str(tmp_path / "c.png"), "--x", "step"]) == 0


@pytest.mark.parametrize("records", [
    [],
    [{"kind": "train", "step": 1, "tokens": 10, "time": 3.0, "note": "warmup", "flag": True}],
])
def test_no_plottable_data(tmp_path, capsys, records):
    log = write_jsonl(tmp_path / "empty.jsonl", records)
    out = tmp_path / "c.png"
    code, err = run_main(capsys, log, "--out", out)
    assert code == 2 and str(log) in err and "no plottable data" in err
    assert not out.exists()


def test_cli_script_error_exit_code(tmp_path):
    missing = tmp_path / "missing.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), str(missing), "--out", str(tmp_path / "c.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert str(missing) in done.stderr
