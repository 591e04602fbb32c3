"""blender_fast.cluster.ray_job on a local Ray instance started by this module: the Ray job writes exactly what the
single-process job does (jobs.rank_prompts), survives a killed actor without losing or duplicating a row,
and names FILE:LINE for a malformed input line."""
from __future__ import annotations

import json
import re
import os
import sys
from pathlib import Path

import pytest

from conftest import require, shared_data_file

# Every test here starts Ray actors (the module's Ray instance alone takes 15-20 s to come up).
pytestmark = pytest.mark.slow

ray = require("ray")
require("ray.data")
pa = require("pyarrow")
pq = require("pyarrow.parquet")

from blender_fast.cli import main  # noqa: E402
from blender_fast.cluster.jobs import RankOptions, rank_prompts  # noqa: E402
from blender_fast.cluster.records import parse_prompt  # noqa: E402
from blender_fast.ranker import Ranker  # noqa: E402
from blender_fast.cluster.ray_job import RankerActor, rank_dataset, rank_files, read_prompt_lines, write_prompt_lines  # noqa: E402

N_PROMPTS = 24


@pytest.fixture(scope="module")
def ray_instance():
    # Workers inherit this process's environment (BLENDER_FAST_CACHE: the test's export cache).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Test-defined actor classes travel by value: workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def records(shared_records):
    """24 shared prompts, ragged (2..5 candidates), every third one with plain-string candidates, so
    the rows cannot share one Arrow schema: the JSONL path must carry them as they are."""
    out = []
    for i, rec in enumerate(shared_records[:N_PROMPTS]):
        cands = rec["candidates"][: 2 + i % 4]
        if i % 3 == 0:
            cands = [c["text"] for c in cands]
        out.append({**rec, "candidates": cands})
    return out


@pytest.fixture(scope="module")
def jsonl_inputs(records, tmp_path_factory):
    d = tmp_path_factory.mktemp("ray_in")
    for name, part in (("a.jsonl", records[:10]), ("b.jsonl", records[10:])):
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


def single_process(ranker, records, options) -> dict:
    """id -> the record the single-process job writes."""
    prompts = [parse_prompt(r, f"record {i}") for i, r in enumerate(records)]
    results = rank_prompts(ranker, prompts, options)
    return {r["id"]: json.loads(json.dumps({**r, "blender_fast": res}, ensure_ascii=False))
            for r, res in zip(records, results)}


def read_jsonl_dir(d: Path) -> list[dict]:
    rows = []
    for p in sorted(d.glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    return rows


@pytest.mark.parametrize("strategy,top_k", [("full", 2), ("tournament", 1)])
def test_jsonl_job_matches_single_process(ray_instance, tiny_checkpoint, ranker, records, jsonl_inputs, tmp_path,
                                          strategy, top_k):
    out = tmp_path / "out"
    n = rank_files(str(jsonl_inputs / "*.jsonl"), out, tiny_checkpoint, strategy=strategy, top_k=top_k,
                   num_actors=2, threads=1, batch_size=5)
    rows = read_jsonl_dir(out)
    assert n == len(rows) == N_PROMPTS
    expected = single_process(ranker, records, RankOptions(strategy=strategy, top_k=top_k))
    got = {r["id"]: r for r in rows}
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        assert got[key] == want, key
    assert not list(tmp_path.glob(".out.partial-*")), "the partial directory was renamed into place"


def test_parquet_job_matches_single_process(ray_instance, tiny_checkpoint, ranker, records, tmp_path):
    # Parquet needs one schema: dict candidates only (the shared file's {text, model, ...} objects).
    recs = [{**r, "candidates": [c if isinstance(c, dict) else {"text": c} for c in r["candidates"]]}
            for r in records]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(recs[:12]), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(recs[12:]), tmp_path / "in" / "b.parquet")
    n = rank_files(str(tmp_path / "in"), tmp_path / "out", tiny_checkpoint, strategy="full", top_k=1,
                   num_actors=1, threads=1, batch_size=7)
    table = pq.read_table(tmp_path / "out")
    assert n == table.num_rows == N_PROMPTS
    assert "path" not in table.column_names
    got = {r["id"]: r for r in table.to_pylist()}
    prompts = [parse_prompt(r, str(i)) for i, r in enumerate(recs)]
    want = rank_prompts(ranker, prompts, RankOptions(strategy="full"))
    for rec, res in zip(recs, want):
        row = got[rec["id"]]
        assert row["blender_fast"] == res
        assert [c["text"] for c in row["candidates"]] == [c["text"] for c in rec["candidates"]]
        assert row["instruction"] == rec["instruction"]


class CrashOnceActor(RankerActor):
    """Dies (the whole worker process) on its second batch, after its first batch's rows went out; once
    per marker file, so the replacement actor runs normally."""
    marker: str = ""
    calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os._exit(1)
        return super().__call__(batch)


def test_killed_actor_is_replaced_and_no_row_is_lost_or_duplicated(ray_instance, tiny_checkpoint, records,
                                                                   jsonl_inputs, tmp_path):
    marker = tmp_path / "crashed"
    actor = type("CrashOnce", (CrashOnceActor,), {"marker": str(marker)})
    ds = rank_dataset(read_prompt_lines(str(jsonl_inputs)), tiny_checkpoint, strategy="tournament",
                      num_actors=1, threads=1, batch_size=4, actor_cls=actor)
    write_prompt_lines(ds, tmp_path / "out")
    assert marker.exists(), "the actor never crashed: the test tests nothing"
    ids = [r["id"] for r in read_jsonl_dir(tmp_path / "out")]
    assert sorted(ids) == sorted(r["id"] for r in records)  # every row, exactly once


def test_malformed_line_names_file_and_line(ray_instance, tiny_checkpoint, records, tmp_path, capsys):
    bad = tmp_path / "in" / "bad.jsonl"
    bad.parent.mkdir()
    lines = [json.dumps(records[0]), "", json.dumps(records[1]), json.dumps({**records[2], "candidates": "oops"})]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = main(["rank", "--ray", "--quiet", "--input", str(tmp_path / "in" / "*.jsonl"), "--output",
               str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--num-actors", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"blender-fast: error: {bad}:4: 'candidates' must be a non-empty list" in err
    assert not (tmp_path / "out").exists(), "no output directory after a failed run"
    bad.write_text(json.dumps(records[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}:2: not valid JSON"):
        rank_files(str(bad), tmp_path / "out", tiny_checkpoint, num_actors=1, threads=1)
    # Valid lines, but one prompt has fewer candidates than top_k: found by the actor, still FILE:LINE.
    bad.write_text(json.dumps(records[3]) + "\n" + json.dumps({**records[1], "candidates": ["a", "b"]}) + "\n",
                   encoding="utf-8")
    with pytest.raises(ValueError, match=rf"top_k = 3 exceeds the 2 candidates of {re.escape(str(bad))}:2"):
        rank_files(str(bad), tmp_path / "out", tiny_checkpoint, strategy="bubble", top_k=3, num_actors=1, threads=1)


def test_cli_ray_rank_writes_shards(ray_instance, tiny_checkpoint, records, jsonl_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["rank", "--ray", "--quiet", "--input", str(jsonl_inputs / "*.jsonl"), "--output", str(out),
               "--model", str(tiny_checkpoint), "--strategy", "bubble", "--top-k", "2", "--num-actors", "1",
               "--threads", "1", "--limit", "7"])
    assert rc == 0, capsys.readouterr().err
    rows = read_jsonl_dir(out)
    assert len(rows) == 7
    assert all(r["blender_fast"]["strategy"] == "bubble" and len(r["blender_fast"]["top_k"]) == 2 for r in rows)
    # A second run never mixes its shards into a previous run's directory.
    assert main(["rank", "--ray", "--quiet", "--input", str(jsonl_inputs), "--output", str(out),
                 "--model", str(tiny_checkpoint), "--num-actors", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_bad_arguments_fail_before_any_work(tiny_checkpoint, jsonl_inputs, tmp_path):
    with pytest.raises(ValueError, match="strategy"):
        rank_files(str(jsonl_inputs), tmp_path / "o", tiny_checkpoint, strategy="quick")
    with pytest.raises(ValueError, match="num_actors"):
        rank_files(str(jsonl_inputs), tmp_path / "o", tiny_checkpoint, num_actors=0)
    with pytest.raises(FileNotFoundError, match="no input files"):
        rank_files(str(tmp_path / "nothing" / "*.jsonl"), tmp_path / "o", tiny_checkpoint)


def test_benchmark_section_runs_and_agrees(ray_instance, tiny_checkpoint):
    require("psutil")
    from benchmarks.common import load_prompts
    from benchmarks.ray_scaling import ray_md, run_ray_section

    prompts = load_prompts(shared_data_file(), limit=6, max_chars=300)
    res = run_ray_section(tiny_checkpoint, prompts, n_prompts=6, n_candidates=3, repeats=1, chunk=2)
    assert res["outputs_identical"], "single-process and Ray wrote different results"
    for v in ("ray 1 actor", "ray 2 actors"):
        (meter,) = res["variants"][v]["actors_meter"]
        # 3 small batches: a second actor may still be starting when the first has taken them all
        assert meter["batches"] == 3 and 1 <= meter["actors"] <= int(v.split()[1])
    assert "2 actors vs 1" in "\n".join(ray_md(res))


def test_cli_ray_takes_what_the_cli_takes(ray_instance, tiny_checkpoint, tmp_path, capsys):
    """An exported model directory and a demo: spec work with --ray as without it."""
    from blender_fast.cluster.records import example_prompts_path

    exported = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), "--out", str(exported)]) == 0
    for n, model in enumerate([str(exported), "demo:tiny"]):
        out = tmp_path / f"out{n}"
        rc = main(["rank", "--ray", "--quiet", "--input", str(example_prompts_path()), "--output", str(out),
                   "--model", model, "--strategy", "bubble", "--num-actors", "1", "--threads", "1", "--limit", "2"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert len(read_jsonl_dir(out)) == 2
        assert "random weights" in err  # the notice, as in the CLI: an export of a generated checkpoint, the demo


def test_ray_interrupted_leaves_no_partial_and_exits_130(ray_instance, tiny_checkpoint, tmp_path, capsys,
                                                         monkeypatch):
    """Ctrl-C during a Ray job: rc 130, one line, no '.partial-*' directory left behind."""
    from blender_fast.cluster import ray_job
    from blender_fast.cluster.records import example_prompts_path

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_job, "write_prompt_lines", interrupted)
    out = tmp_path / "out"
    rc = main(["rank", "--ray", "--quiet", "--input", str(example_prompts_path()), "--output", str(out),
               "--model", str(tiny_checkpoint), "--num-actors", "1", "--threads", "1", "--limit", "2"])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted (SIGINT)" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".partial" in p]


def test_ray_user_error_is_one_line_without_ray_error_logs(ray_instance, tiny_checkpoint, tmp_path, capsys, caplog):
    """A bad prompt found by an actor is the CLI's one line; Ray Data's own ERROR lines about the
    failed task (which would stand in front of it) are dropped."""
    import logging

    from blender_fast.cluster.records import example_prompts_path

    first = example_prompts_path().read_text(encoding="utf-8").splitlines(keepends=True)[0]
    bad = tmp_path / "in.jsonl"
    bad.write_text(first + json.dumps({**json.loads(first), "candidates": ["a", "b"]}) + "\n", encoding="utf-8")
    loggers = [logging.getLogger(n) for n in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")]
    saved = [lg.propagate for lg in loggers]
    try:
        for lg in loggers:
            lg.propagate = True  # let caplog see whatever they emit
        with caplog.at_level(logging.INFO):
            rc = main(["rank", "--ray", "--quiet", "--input", str(bad), "--output", str(tmp_path / "out"),
                       "--model", str(tiny_checkpoint), "--strategy", "bubble", "--top-k", "3", "--num-actors", "1",
                       "--threads", "1"])
    finally:
        for lg, value in zip(loggers, saved):
            lg.propagate = value
    assert rc == 2
    assert f"blender-fast: error: top_k = 3 exceeds the 2 candidates of {bad}:2" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("ray.data")]
