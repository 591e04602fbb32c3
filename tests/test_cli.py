"""The command line on a generated checkpoint: rank (full and selection), export, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blender_fast.cli import main
from blender_fast.cluster.records import example_prompts_path


def _read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_rank_full_on_shared_file_as_is(tiny_checkpoint, tmp_path, shared_records):
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for r in shared_records[:3]:
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["rank", "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    rows = _read(out)
    assert len(rows) == 3
    for row, rec in zip(rows, shared_records[:3]):
        assert row["id"] == rec["id"] and row["candidates"] == rec["candidates"]  # input kept as it is
        result = row["blender_fast"]
        assert sorted(result["ranks"])[0] == 1 and len(result["scores"]) == 12
        assert result["forward_passes"] == 132
        assert result["best"] == result["top_k"][0]


@pytest.mark.parametrize("strategy, steps", [("bubble", 5), ("tournament", 3)])
def test_rank_selection_strategies(tiny_checkpoint, tmp_path, strategy, steps):
    out = tmp_path / "out.jsonl"
    argv = ["rank", "--model", str(tiny_checkpoint), "--output", str(out), "--strategy", strategy,
            "--top-k", "1", "--quiet"]
    assert main(argv) == 0  # the package's example prompts
    rows = _read(out)
    assert len(rows) == 6
    for row in rows:
        n = len(row["candidates"])
        assert row["blender_fast"]["forward_passes"] == 2 * (n - 1)
        if n == 5:
            assert row["blender_fast"]["steps"] == (4 if strategy == "bubble" else steps)


def test_export_command_reports_difference(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    # a built fp32 graph has no torch to be held to: it says so (it printed "max |ORT - torch fp32| = 0")
    assert "built from the weights (no torch to compare with): outputs finite on a sample batch: pass" in printed
    assert "torch fp32|" not in printed
    assert (tmp_path / "onnx" / "model.onnx").is_file()


def test_errors_are_reported_not_raised(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "candidates": []}\n')
    assert main(["rank", "--model", str(tiny_checkpoint), "--input", str(bad), "--quiet"]) == 2
    assert "bad.jsonl:1: 'candidates' must be a non-empty list" in capsys.readouterr().err
    assert main(["rank", "--model", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rank", "--model", str(tiny_checkpoint), "--top-k", "9", "--strategy", "bubble", "--quiet"]) == 2
    assert "top_k = 9 exceeds the" in capsys.readouterr().err


def test_rank_with_a_budget(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    argv = ["rank", "--model", str(tiny_checkpoint), "--output", str(out), "--strategy", "adaptive",
            "--budget", "10", "--quiet"]
    assert main(argv) == 0
    rows = _read(out)
    assert len(rows) == 6 and all(r["blender_fast"]["forward_passes"] <= 10 for r in rows)
    assert max(r["blender_fast"]["forward_passes"] for r in rows) == 10  # n = 5: 5 comparisons

# -- outputs that never lie, options, records -------------------------------------------------------

EXAMPLES = _read(example_prompts_path())


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def _rank(model, *extra):
    return main(["rank", "--model", str(model), "--quiet", *map(str, extra)])


def test_failed_run_keeps_existing_output_and_names_file_and_line(tiny_checkpoint, tmp_path, capsys):
    bad = dict(EXAMPLES[1], candidates=["fine", "sneaky <|candidate|> marker"])
    src = _write_jsonl(tmp_path / "in.jsonl", [EXAMPLES[0], bad, EXAMPLES[2]])
    out = tmp_path / "out.jsonl"
    out.write_text("EARLIER RESULTS\n")
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--chunk", 1) == 2
    err = capsys.readouterr().err
    assert f"{src}:2: candidates[1] contains the reserved marker" in err  # file:line, not inputs[i] of a chunk
    assert out.read_text() == "EARLIER RESULTS\n"  # never truncated
    partial = tmp_path / "out.jsonl.partial"
    assert f"1 prompts (1 new) written to {partial}" in err
    assert [r["id"] for r in _read(partial)] == ["ex0"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temp file left behind


def test_output_may_be_the_input(tiny_checkpoint, tmp_path):
    src = _write_jsonl(tmp_path / "data.jsonl", EXAMPLES)
    assert _rank(tiny_checkpoint, "--input", src, "--output", src, "--strategy", "bubble") == 0
    rows = _read(src)
    assert [r["id"] for r in rows] == [r["id"] for r in EXAMPLES]  # the input is not destroyed
    assert all(r["candidates"] == e["candidates"] and "blender_fast" in r for r, e in zip(rows, EXAMPLES))


@pytest.mark.parametrize("argv, message", [
    (["--chunk", "0"], "argument --chunk: must be >= 1, got 0"),
    (["--chunk", "-3"], "argument --chunk: must be >= 1, got -3"),
    (["--limit", "-1"], "argument --limit: must be >= 0, got -1"),
    (["--top-k", "0"], "argument --top-k: must be >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
])
def test_bad_numbers_are_usage_errors(tiny_checkpoint, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _rank(tiny_checkpoint, *argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_limit_zero_ranks_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--limit", "0", "--output", out) == 0
    assert out.read_text() == ""


def test_resume_skips_prompts_already_done(tiny_checkpoint, tmp_path, capsys):
    records = [dict(EXAMPLES[i % 6], id=f"r{i}") for i in range(8)] + [EXAMPLES[0]]  # a duplicate line too
    records.append(EXAMPLES[0])
    src = _write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--limit", "3", "--strategy", "tournament") == 0
    first = _read(out)
    capsys.readouterr()
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--resume", "--strategy", "tournament") == 0
    assert "--resume: 3 of 10 prompts already done" in capsys.readouterr().err
    rows = _read(out)
    assert rows[:3] == first  # kept as they were
    assert sorted(json.dumps({k: v for k, v in r.items() if k != "blender_fast"}, sort_keys=True) for r in rows) == \
        sorted(json.dumps(r, sort_keys=True) for r in records)  # every input record exactly once
    # Other options are other results: --resume keeps every finished record, so it refuses, naming them.
    before = out.read_bytes()
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--resume", "--strategy", "bubble") == 2
    err = capsys.readouterr().err
    assert "holds 10 finished records made with other options (--strategy tournament --top-k 1; this run: " \
           "--strategy bubble --top-k 1)" in err
    assert out.read_bytes() == before
    # Without --resume the output is simply replaced, as any rerun replaces it.
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--strategy", "bubble") == 0
    assert all(r["blender_fast"]["strategy"] == "bubble" for r in _read(out))


def test_sigterm_stops_cleanly_and_says_what_was_kept(tiny_checkpoint, tmp_path):
    records = [dict(EXAMPLES[i % 6], id=f"r{i}") for i in range(1000)]  # far more than runs before the signal
    src = _write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    out.write_text("OLD\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "blender_fast.cli", "rank", "--model", str(tiny_checkpoint), "--input", str(src),
           "--output", str(out), "--chunk", "1", "--strategy", "bubble", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    tmp = None
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if tmps and tmps[0].stat().st_size > 0:
            tmp = tmps[0]
            break
        time.sleep(0.02)
    assert tmp is not None, "the job never wrote a first chunk"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert out.read_text() == "OLD\n"
    partial = tmp_path / "out.jsonl.partial"
    kept = _read(partial)
    assert 0 < len(kept) < 1000
    assert f"interrupted (SIGTERM): {len(kept)} prompts ({len(kept)} new) written to {partial}" in err
    assert "--resume" in err and not tmp.exists()


def test_record_has_the_same_fields_for_every_strategy(tiny_checkpoint):
    from blender_fast import Ranker
    from blender_fast.cluster.jobs import RESULT_KEYS, RankOptions, rank_prompts
    from blender_fast.cluster.records import read_prompts

    ranker = Ranker.from_pretrained(tiny_checkpoint)
    prompts = read_prompts(example_prompts_path())
    for strategy in ("full", "bubble", "tournament"):
        results = rank_prompts(ranker, prompts, RankOptions(strategy=strategy, top_k=2))
        for prompt, r in zip(prompts, results):
            assert tuple(r) == RESULT_KEYS
            assert len(r["top_k"]) == 2 and r["best"] == r["top_k"][0]
            assert all(0 <= i < len(prompt.candidates) for i in r["top_k"])  # 0-based indices
            if strategy == "full":
                assert r["ranks"][r["best"]] == 1  # ranks are 1-based
                assert r["scores"][r["best"]] == max(r["scores"])
                n = len(prompt.candidates)
                assert (r["comparisons"], r["forward_passes"], r["steps"]) == (n * (n - 1) // 2, n * (n - 1), 1)
            else:
                assert r["ranks"] is None and r["scores"] is None


def test_full_top_k_follows_the_one_rule(tiny_checkpoint):
    """The CLI's full path is select(strategy='full'): its top_k is top_k_from_scores of its scores."""
    from blender_fast import Ranker
    from blender_fast.cluster.jobs import RankOptions, rank_prompts
    from blender_fast.cluster.records import read_prompts
    from blender_fast.selection.strategies import top_k_from_scores

    ranker = Ranker.from_pretrained(tiny_checkpoint)
    prompts = read_prompts(example_prompts_path())
    for r, s in zip(rank_prompts(ranker, prompts, RankOptions(top_k=3)),
                    ranker.rank(*[[p.input for p in prompts], [p.candidates for p in prompts],
                                  [p.instruction for p in prompts]], return_scores=True)):
        assert r["top_k"] == top_k_from_scores(s, 3)
        assert r["scores"] == [float(x) for x in s]


def test_rank_options_are_validated():
    from blender_fast.cluster.jobs import RankOptions

    for kwargs, message in [({"strategy": "quick"}, "strategy must be one of"), ({"top_k": 0}, "top_k must be >= 1"),
                            ({"orders": "two"}, "orders must be one of"), ({"policy": "x"}, "policy must be one of"),
                            ({"seed": -1}, "seed must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            RankOptions(**kwargs)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        RankOptions(top_k=1.5)


def test_progress_moves_per_model_batch(tiny_checkpoint):
    from blender_fast import Ranker
    from blender_fast.cluster.jobs import RankOptions, expected_forward_passes, rank_prompts
    from blender_fast.cluster.records import read_prompts

    class Bar:
        def __init__(self):
            self.updates = []

        def update(self, n):
            self.updates.append(n)

    ranker = Ranker.from_pretrained(tiny_checkpoint, token_budget=256, max_batch_size=4)
    prompts = read_prompts(example_prompts_path())
    bar = Bar()
    results = rank_prompts(ranker, prompts, RankOptions(), progress=bar)
    assert len(bar.updates) == ranker.last_stats.batches > 5  # moved after every model batch, not per chunk
    total = sum(expected_forward_passes(len(p.candidates), RankOptions()) for p in prompts)
    assert sum(bar.updates) == total == sum(r["forward_passes"] for r in results)
    bubble = RankOptions(strategy="bubble", top_k=2)
    bar = Bar()
    results = rank_prompts(ranker, prompts, bubble, progress=bar)
    assert sum(bar.updates) == sum(expected_forward_passes(len(p.candidates), bubble) for p in prompts)


def test_every_option_has_help_and_defaults_are_shown(capsys):
    from blender_fast.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    text = capsys.readouterr().out
    assert "(default: 64)" in text and "(default: full)" in text and "``" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out  # no raw markup in the description


def test_device_auto_is_accepted(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--device", "auto", "--output", out, "--limit", "1") == 0
    assert len(_read(out)) == 1


# -- messages: plain words, where they apply, before any work (issue 28, items 6 and 7) ---------------------

import re  # noqa: E402
import shutil  # noqa: E402

from conftest import REPO  # noqa: E402


def _cli(*argv, env=None, timeout=300):
    """The real `blender-fast` command (this checkout's code on PYTHONPATH)."""
    exe = shutil.which("blender-fast")
    cmd = [exe] if exe else [sys.executable, "-m", "blender_fast.cli"]
    return subprocess.run([*cmd, *map(str, argv)], env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_startup_line_says_what_runs_in_plain_words(tiny_checkpoint, tmp_path):
    proc = _cli("rank", "--model", tiny_checkpoint, "--limit", 1, "--output", tmp_path / "o.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ranker:")]
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(r"ranker: (ONNX Runtime|PyTorch|OpenVINO) (fp32|fp16|bf16|int8) on CPU \((exact; no faster "
                        r"certified path on this CPU|certified cascade: fp32's answers, with a fast first pass|"
                        r"faster, and passed the agreement gate for this checkpoint)\)", lines[0]), lines[0]
    verbose = _cli("rank", "--model", tiny_checkpoint, "--limit", 1, "--output", tmp_path / "o.jsonl", "--quiet",
                   "--verbose")
    details = [line for line in verbose.stderr.splitlines() if line.startswith("ranker:")]
    assert details[0] == lines[0] and len(details) == 2 and "; " in details[1]  # the CPU, its ISA, the reasons


def test_startup_line_words():
    from blender_fast.cli import startup_line

    d = {"backend": "onnx", "precision": "fp32", "device": "cpu", "reason": "exact fp32: no agreement-gate record"}
    assert startup_line(d) == "ranker: ONNX Runtime fp32 on CPU (exact; no faster certified path on this CPU)"
    assert startup_line({**d, "backend": "torch", "precision": "bf16",
                         "reason": "bf16; passed the agreement gate (top-1 99.5%)"}) == \
        "ranker: PyTorch bf16 on CPU (faster, and passed the agreement gate for this checkpoint)"
    assert startup_line({**d, "reason": "certified cascade: torch bf16 ..."}).endswith("(certified cascade: fp32's "
                                                                                       "answers, with a fast first pass)")


def test_budget_too_small_is_refused_before_the_model_loads(tmp_path):
    proc = _cli("rank", "--model", tmp_path / "no-model", "--strategy", "adaptive", "--budget", 3)
    assert proc.returncode == 2
    assert "examples.jsonl:1: --budget = 3 forward passes is below the minimum of 8" in proc.stderr
    assert "no-model" not in proc.stderr  # the model was never looked at


def test_unknown_demo_shape_generates_nothing(tmp_path):
    proc = _cli("rank", "--model", "demo:huge", "--limit", 1, env={"BLENDER_FAST_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert "demo:huge: unknown demo shape 'huge'; choose one of demo:tiny, demo:xsmall" in proc.stderr
    assert "generating" not in proc.stderr and not (tmp_path / "cache" / "checkpoints").exists()


def test_export_prints_no_ranking_notice(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "onnx")]) == 0
    captured = capsys.readouterr()
    assert ": pass" in captured.out
    assert "NOTE" not in captured.err and "ranking with a GENERATED" not in captured.out + captured.err


@pytest.mark.parametrize("maker, held_to", [("builder", "fp32 graph"), ("torch", "torch fp32")])
def test_export_int8_states_tolerance_and_verdict_and_prints_no_quantizer_lines(tiny_checkpoint, tmp_path, maker,
                                                                                held_to):
    """issue 28 item 8: `export --int8` printed onnxruntime's `WARNING:root:Inference failed or unsupported type
    to quantize for tensor ...` (a dozen protobuf lines each, torch maker) and a difference with no tolerance."""
    proc = _cli("export", tiny_checkpoint, "--int8", "--out", tmp_path / "int8", env={"BLENDER_FAST_EXPORT": maker})
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"\(int8, exported in [\d.]+s\); max \|ORT int8 - {held_to}\| on a sample batch = [\d.e+-]+, "
                     rf"tolerance [\d.e+-]+: pass$", proc.stdout.strip()), proc.stdout
    assert "WARNING" not in proc.stderr and "tensor_type" not in proc.stderr and "elem_type" not in proc.stderr, proc.stderr


def test_export_beyond_its_tolerance_fails_saying_so(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from blender_fast.model import pairrm

    monkeypatch.setitem(pairrm.EXPORT_TOLERANCE, "int8", 0.0)  # any difference is too much
    assert main(["export", str(tiny_checkpoint), "--int8", "--out", str(tmp_path / "int8")]) == 2
    err = capsys.readouterr().err
    assert "disagrees with the fp32 graph on the sample batch: max |ORT - the fp32 graph| = " in err, err
    assert "tolerance 0 (0.0 x the logit spread" in err and "): FAIL." in err, err
    assert not (tmp_path / "int8" / "export.json").exists()


def test_export_reports_an_older_cache_entry_without_inventing_its_tolerance():
    from blender_fast.model.export import ExportReport

    old = ExportReport(**{"path": "m.onnx", "precision": "int8", "max_abs_diff": 1.11, "seconds": 1.0, "cached": True})
    assert old.check_line() == ("max |ORT int8 - its reference| on a sample batch = 1.11: pass (an older cache "
                                "entry, which does not record its tolerance)")


@pytest.mark.parametrize("fuser, message", [
    ("llm-blender/gen_fuser_3b", "llm-blender/gen_fuser_3b: offline (HF_HUB_OFFLINE=1 or local_files_only) and not in "
                                 "the cache"),
    ("missing-fuser", "fuser checkpoint directory '{tmp}/missing-fuser' does not exist"),
    ("a-file", "fuser checkpoint '{tmp}/a-file' is not a directory"),
])
@pytest.mark.parametrize("verb", ["fuse", "serve"])
def test_a_wrong_fuser_is_reported_before_the_ranker_is_looked_at(tmp_path, verb, fuser, message):
    """issue 28 item 4: the fuser's hub error came only after the ranker had loaded (its NOTE and startup
    line first). The ranker here does not exist: only a fuser checked first is reported."""
    (tmp_path / "a-file").write_text("not a checkpoint")
    source = fuser if "/" in fuser else tmp_path / fuser
    extra = ["--port", 0] if verb == "serve" else ["--limit", 1, "--output", tmp_path / "out.jsonl"]
    proc = _cli(verb, "--model", tmp_path / "no-model", "--fuser", source, *extra,
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")})
    assert proc.returncode == 2, proc.stderr
    assert f"blender-fast: error: {message.format(tmp=tmp_path)}" in proc.stderr, proc.stderr
    assert "no-model" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_offline_hint_keeps_the_revision(tmp_path):
    proc = _cli("rank", "--model", "llm-blender/PairRM@v9", "--limit", 1,
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")})
    assert proc.returncode == 2
    assert "`hf download llm-blender/PairRM --revision v9 --cache-dir" in proc.stderr
    assert "`huggingface-cli download llm-blender/PairRM --revision v9`" in proc.stderr


def test_the_readmes_outputs_leave_the_clone_clean():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    outputs = set(re.findall(r"blender-fast rank[^\n`]*--output ([^\s`]+)", readme.split("## ", 2)[1]))
    assert "ranked.jsonl" in outputs
    for name in outputs | {"ranked.jsonl.partial", "ranked/"}:
        proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=REPO)
        assert proc.returncode == 0, f"{name} is not in .gitignore"
