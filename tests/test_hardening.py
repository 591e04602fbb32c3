"""Hardening: bad input and bad environments get one clear line (docs/bad-input.md lists them)."""
from __future__ import annotations

import re

import pytest

from blender_fast.cli import build_parser


def _subcommand_help(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers only here
    return re.sub(r"\s+", " ", sub.choices[name].format_help())


@pytest.mark.parametrize("command", ["rank", "fuse", "serve", "export", "make-checkpoint"])
def test_help_shows_each_default_once(command):
    text = _subcommand_help(command)
    assert not re.search(r"\(default: [^)]*\) ?\(default:", text), text
    assert "(default: None)" not in text


def test_help_still_shows_plain_defaults():
    text = _subcommand_help("rank")
    assert "(default: 64)" in text  # --chunk: a default its help does not state
    assert "intra-op threads (default: the runtime's)" in text


# -- 1. output targets ----------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402

from blender_fast.cli import main  # noqa: E402
from blender_fast.cluster.records import example_prompts_path  # noqa: E402

N_EXAMPLES = sum(1 for line in example_prompts_path().read_text(encoding="utf-8").splitlines() if line.strip())


def _rank(model, *extra):
    return main(["rank", "--model", str(model), "--quiet", "--strategy", "bubble", *map(str, extra)])


def test_output_symlink_updates_its_target_and_keeps_the_link(tiny_checkpoint, tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text("OLD\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert _rank(tiny_checkpoint, "--output", link) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == N_EXAMPLES and all("blender_fast" in r for r in rows)
    assert not [p for p in os.listdir(tmp_path) if p.endswith((".tmp", ".partial"))]


def test_output_fifo_is_streamed_not_replaced(tiny_checkpoint, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    def read_fifo():
        with open(fifo, encoding="utf-8") as f:
            got.append(f.read())

    reader = threading.Thread(target=read_fifo, daemon=True)
    reader.start()
    assert _rank(tiny_checkpoint, "--output", fifo) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO
    assert len(got[0].splitlines()) == N_EXAMPLES


def test_output_dev_null_stays_a_device(tiny_checkpoint):
    assert _rank(tiny_checkpoint, "--output", "/dev/null") == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode),
                    reason="no /dev/full here")
def test_output_dev_full_is_one_line(tiny_checkpoint, capsys):
    """A device that refuses the writes (or a full disk) is one line naming the user's path, not an
    OSError traceback; the device stays a device."""
    assert _rank(tiny_checkpoint, "--output", "/dev/full") == 2
    err = capsys.readouterr().err
    assert "blender-fast: error: /dev/full: cannot write the output: No space left on device" in err
    assert "Traceback" not in err and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_output_file_on_a_full_disk_is_one_line_and_keeps_the_old_output(tiny_checkpoint, tmp_path, capsys,
                                                                         monkeypatch):
    import errno

    import blender_fast.jsonl.writers as writers

    out = tmp_path / "out.jsonl"
    out.write_text("OLD\n")

    def full_disk_open(path, *args, **kwargs):  # the CLI's output files: every write finds the disk full
        f = open(path, *args, **kwargs)

        def write(text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f

    monkeypatch.setattr(writers, "open", full_disk_open, raising=False)
    assert _rank(tiny_checkpoint, "--output", out) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write the output: No space left on device" in err
    assert out.read_text() == "OLD\n" and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_stdout_closed_by_its_reader_is_one_line(tiny_checkpoint):
    """`blender-fast rank | head -1`: the reader leaves; one line, no BrokenPipeError traceback."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "blender_fast.cli", "rank", "--model", str(tiny_checkpoint),
                             "--quiet", "--strategy", "bubble", "--output", "-"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first record
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == 2, err
    assert "blender-fast: error: stdout: cannot write the output: Broken pipe" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_resume_into_a_fifo_or_a_device_is_refused_before_any_model_work(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, "/dev/null"):  # not opened: a FIFO without a reader would block
        assert _rank(tmp_path / "no-model", "--resume", "--output", target) == 2
        err = capsys.readouterr().err
        assert "--resume needs an --output file (a regular file, not '-' or a device)" in err and "no-model" not in err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_directory_is_refused_before_any_model_work(tmp_path, capsys):
    # a model path that does not exist: had any model work started, the error would name it instead
    assert _rank(tmp_path / "no-model", "--output", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}: --output is a directory" in err


def test_output_in_missing_or_unwritable_directory_names_the_users_path(tmp_path, capsys):
    missing = tmp_path / "nope" / "out.jsonl"
    assert _rank(tmp_path / "no-model", "--output", missing) == 2
    assert f"{missing}: the directory of --output does not exist" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert _rank(tmp_path / "no-model", "--output", ro / "out.jsonl") == 2
        err = capsys.readouterr().err
        assert f"{ro / 'out.jsonl'}: cannot write in the directory of --output" in err and ".tmp" not in err


# -- 2. model integrity ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "model"
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_model_onnx_is_one_error_naming_the_file(exported_dir, tmp_path, capsys):
    bad = _copy(exported_dir, tmp_path / "bad")
    with open(bad / "model.onnx", "r+b") as f:  # 16 bytes overwritten, size unchanged
        f.seek(os.path.getsize(bad / "model.onnx") // 2)
        f.write(b"\xff" * 16)
    assert _rank(bad, "--output", tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{bad / 'model.onnx'} is corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_damage_in_the_middle_of_a_big_model_onnx_is_found(exported_dir, tmp_path, capsys, monkeypatch):
    """A real PairRM's model.onnx (1.7 GB) is past the cache's sampled check (size, first and last 64 KiB):
    16 bytes damaged in its middle gave rc 0 and shifted scores. A user's exported directory is hashed in
    full. Here the limit is lowered so that the tiny export counts as big."""
    from blender_fast.model import cache

    monkeypatch.setattr(cache, "FULL_HASH_LIMIT", 1 << 20)
    bad = _copy(exported_dir, tmp_path / "bad")
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(os.path.getsize(bad / "model.onnx") // 2)
        f.write(b"\x00" * 16)
    assert _rank(bad, "--output", tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{bad / 'model.onnx'} is corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_big_model_onnx_is_hashed_once_across_processes(exported_dir, tmp_path, monkeypatch):
    """The full check stays cheap: a big file's sha256 is remembered in the cache (keyed by path, size,
    mtime, inode, ctime), so a later process does not read 1.7 GB again; a changed file is hashed again."""
    from pathlib import Path

    from blender_fast.model import cache
    from blender_fast.ranker import read_export_meta, verify_exported_dir

    monkeypatch.setattr(cache, "FULL_HASH_LIMIT", 1 << 20)
    d = _copy(exported_dir, tmp_path / "big")
    hashed = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    for _ in range(2):
        monkeypatch.setattr(cache, "_VERIFIED", set())  # as in a new process
        verify_exported_dir(d, read_export_meta(d))
    assert hashed.count("model.onnx") == 1
    with open(d / "model.onnx", "r+b") as f:
        f.seek(os.path.getsize(d / "model.onnx") // 2)
        f.write(b"\x00" * 16)
    monkeypatch.setattr(cache, "_VERIFIED", set())
    with pytest.raises(ValueError, match="model.onnx is corrupt"):
        verify_exported_dir(d, read_export_meta(d))
    assert hashed.count("model.onnx") == 2


def test_foreign_model_onnx_is_refused(exported_dir, tmp_path):
    from blender_fast import Ranker

    bad = _copy(exported_dir, tmp_path / "foreign")
    (bad / "model.onnx").write_bytes(b"not an onnx model at all")
    with pytest.raises(ValueError, match="model.onnx"):
        Ranker.from_pretrained(bad)


def test_foreign_onnx_graph_with_a_matching_manifest_names_the_file(exported_dir, tmp_path):
    """Another model's valid ONNX graph whose sizes and sha256 the export.json records (a hand-made
    manifest) was refused only when run ("Required inputs (['x']) are missing from input feed")."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from blender_fast import Ranker
    from blender_fast.model.cache import record_files

    bad = _copy(exported_dir, tmp_path / "foreign-graph")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])),
              str(bad / "model.onnx"))
    meta = json.loads((bad / "export.json").read_text())
    meta["files"] = record_files(bad, exclude=("export.json",))
    (bad / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.onnx: not a PairRM export \(a foreign ONNX model: inputs x"):
        Ranker.from_pretrained(bad)


def test_export_json_without_its_file_list_is_refused(exported_dir, tmp_path):
    from blender_fast import Ranker

    old = _copy(exported_dir, tmp_path / "older")
    meta = json.loads((old / "export.json").read_text())
    del meta["files"]
    (old / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"export.json records no size and sha256 for model.onnx.*re-export"):
        Ranker.from_pretrained(old)



def test_exported_dir_without_its_export_json_says_so(exported_dir, tmp_path, capsys):
    # Before: loaded as a checkpoint, so "config.json: file not found" (a file it never had).
    from blender_fast import CheckpointError, Ranker

    bad = _copy(exported_dir, tmp_path / "no-meta")
    (bad / "export.json").unlink()
    assert _rank(bad, "--output", tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{bad}: looks like an exported model directory (it has model.onnx, no config.json) but export.json " \
           "is missing; re-export it" in err and "config.json: file not found" not in err and "Traceback" not in err
    (bad / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="but tokenizer.json, export.json are missing; re-export it"):
        Ranker.from_pretrained(bad)

def test_verification_is_remembered_until_a_file_changes(exported_dir, tmp_path, monkeypatch):
    from blender_fast import Ranker
    from blender_fast.model import cache

    d = _copy(exported_dir, tmp_path / "memo")
    calls = []
    real = cache.verify_files
    monkeypatch.setattr(cache, "verify_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    Ranker.from_pretrained(d)
    Ranker.from_pretrained(d)
    assert len(calls) == 1  # the second load did not re-hash
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").unlink()
    (d / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # replaced: new inode and content
    with pytest.raises(ValueError, match="model.onnx"):
        Ranker.from_pretrained(d)
    assert len(calls) == 2


def test_nan_from_the_model_blames_the_model_not_the_input(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import blender_fast.cli as cli

    real_load = cli._load_ranker

    def load_broken(args):  # a model that loads fine and then answers NaN (e.g. damaged weights)
        ranker = real_load(args)
        model = ranker.model
        ranker.model = lambda *a: model(*a) * float("nan")
        return ranker

    monkeypatch.setattr(cli, "_load_ranker", load_broken)
    src = tmp_path / "ok.jsonl"
    src.write_text(example_prompts_path().read_text(encoding="utf-8").splitlines(keepends=True)[0])
    assert _rank(tiny_checkpoint, "--input", src, "--output", tmp_path / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert "the model returned NaN on the prompt at" in err and f"{src}:1" in err
    assert "the model is at fault, not the input" in err



def test_nan_from_the_model_has_the_clis_wording_in_python_and_over_http(tiny_checkpoint):
    # The CLI's one line (above) and Python's exception say the same thing, with the prompt's index in
    # place of its file:line; the server answers it as ITS fault (500), not the request's (422).
    import pickle

    import numpy as np

    from blender_fast import Blender, Ranker
    from blender_fast.selection.steps import ModelOutputError
    from blender_fast.serve.client import Client, ServerError
    from blender_fast.serve.engine import BatchingEngine
    from conftest import live_server

    ranker = Ranker.from_pretrained(tiny_checkpoint, threads=1)
    ranker.model = lambda ids, mask, pos: np.full(len(ids), np.nan, dtype=np.float32)
    inputs, cands = ["q0", "q1"], [["a", "b"], ["c", "d"]]
    said = ("the model returned NaN on prompt 0: the model is at fault, not the input; its weights or ONNX "
            "export are damaged (re-export or re-download it)")
    for call in (lambda: ranker.rank(inputs, cands), lambda: ranker.select(inputs, cands),
                 lambda: ranker.compare(inputs, ["a", "c"], ["b", "d"]),
                 lambda: ranker.select(inputs, cands, strategy="full")):
        with pytest.raises(ModelOutputError) as info:
            call()
        assert str(info.value) == said and info.value.prompt == 0
    again = pickle.loads(pickle.dumps(info.value))  # crosses a process boundary whole
    assert type(again) is ModelOutputError and str(again) == said and again.prompt == 0
    blender = Blender()
    blender.ranker = ranker
    with pytest.raises(ModelOutputError, match=r"^the model returned NaN on prompt 0 \(comparing candidates\[0\]\[0\] "
                       r"with its reference\): the model is at fault"):
        blender.rank_with_ref(inputs, cands)
    with live_server(BatchingEngine(ranker)) as url:
        with pytest.raises(ServerError) as info:
            Client(url, timeout=30).rank(inputs, cands)
    assert info.value.status == 500 and said in str(info.value)

# -- 4. environment errors ------------------------------------------------------------------------------

def test_serve_on_a_port_in_use_is_one_line_before_loading(tmp_path, capsys):
    import socket

    pytest.importorskip("fastapi")  # serve's own dependency check comes first
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:  # a model path that does not exist: the port is refused before any model work
        rc = main(["serve", "--model", str(tmp_path / "no-model"), "--port", str(port)])
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "another process holds the port" in err


def test_export_out_on_an_existing_file_is_refused_before_loading(tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_text("keep me")
    assert main(["export", str(tmp_path / "no-model"), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{target}: export --out exists and is not a directory" in err
    assert target.read_text() == "keep me"


def test_client_on_a_dead_server_raises_a_typed_error_with_the_url():
    import socket

    from blender_fast.serve.client import Client, ClientConnectionError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    client = Client(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(ClientConnectionError) as info:
        client.rank(["q"], [["a", "b"]])
    assert info.value.url.startswith(f"http://127.0.0.1:{port}/v1/")
    assert f"127.0.0.1:{port}" in str(info.value) and "cannot reach" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert client.health() is False  # health() still answers False, as before



@pytest.mark.parametrize("url", ["not a url", "localhost:8000", "ftp://127.0.0.1:8000", "http://", "http://h:port",
                                 "/v1/rank"])
def test_client_with_a_bad_url_is_refused_when_made(url):
    # Before: accepted, then urllib's raw "unknown url type" ValueError on the first call.
    from blender_fast.serve.client import Client

    with pytest.raises(ValueError, match="^url must be an http:// or https:// URL with a host") as info:
        Client(url)
    assert repr(url) in str(info.value)
    with pytest.raises(TypeError, match="url must be a string"):
        Client(8000)
    assert Client("https://example.org/blender/").url == "https://example.org/blender"  # a path prefix is fine

# -- 7. the random-weights notice -----------------------------------------------------------------------

NOTE = "random weights, so the orderings are meaningless"


def test_notice_for_a_generated_checkpoint_given_by_path(tiny_checkpoint, tmp_path, capsys):
    assert _rank(tiny_checkpoint, "--output", tmp_path / "o.jsonl") == 0
    assert NOTE in capsys.readouterr().err


def test_notice_for_an_export_of_a_generated_checkpoint(exported_dir, tmp_path, capsys):
    assert _rank(exported_dir, "--output", tmp_path / "o.jsonl") == 0
    assert NOTE in capsys.readouterr().err


def test_no_notice_for_a_real_looking_checkpoint(tiny_checkpoint, tmp_path):
    import shutil

    from blender_fast.synthetic.demo import random_weights_notice

    real = tmp_path / "real"
    shutil.copytree(tiny_checkpoint, real)
    # A real checkpoint has no blender_fast.json (a damaged one is an error: test_a_damaged_generated_manifest...).
    (real / "blender_fast.json").unlink()
    assert random_weights_notice(real) is None
    assert random_weights_notice(tiny_checkpoint) is not None


def test_notice_for_a_generated_fuser_by_path(tmp_path, capsys):
    from blender_fast.synthetic.demo import announce_random_weights

    fuser = tmp_path / "fuser"
    fuser.mkdir()
    (fuser / "blender_fast.json").write_text('{"generator": "blender_fast.synthetic", "kind": "fuser"}')
    announce_random_weights(fuser, "fuser")
    assert "fusing with a GENERATED fuser" in capsys.readouterr().err


def test_report_writer_follows_the_same_rule(tmp_path):
    from blender_fast.cluster.outputs import OutputError, output_dir, write_text

    target = tmp_path / "real.md"
    link = tmp_path / "report.md"
    link.symlink_to(target)
    write_text(link, "hello\n")
    assert link.is_symlink() and target.read_text() == "hello\n"
    write_text("/dev/null", "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OutputError, match="is a directory"):
        write_text(tmp_path, "x")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="afile: --out exists and is not a directory"):
        output_dir(tmp_path / "afile", "--out", may_hold_files=True)


def test_benchmark_out_on_a_file_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    target = tmp_path / "results"
    target.write_text("keep")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(target), "--data",
                           str(tmp_path / "none.jsonl")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{target}: --out exists and is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "keep"


# -- 5. no run loses finished work (issue 25, item 2) -------------------------------------------------------

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from conftest import REPO  # noqa: E402

EXAMPLE_RECORDS = [json.loads(line) for line in example_prompts_path().read_text(encoding="utf-8").splitlines()
                   if line.strip()]


def _prompts_file(path, n: int):
    """n distinct prompt records (the examples, each with its own id), one per line; returns the lines."""
    lines = [json.dumps(dict(EXAMPLE_RECORDS[i % len(EXAMPLE_RECORDS)], id=f"p{i}")) + "\n" for i in range(n)]
    path.write_text("".join(lines), encoding="utf-8")
    return lines


def _cli(*argv, stdin=None, input_text=None, timeout=300, env=None):
    """The real `blender-fast` command, as a user runs it (this checkout's code on PYTHONPATH)."""
    exe = shutil.which("blender-fast")
    cmd = [exe] if exe else [sys.executable, "-m", "blender_fast.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*cmd, *map(str, argv)], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=stdin, input=input_text)


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
def test_in_place_limit_keeps_the_prompts_after_the_limit_as_they_were(tiny_checkpoint, tmp_path):
    data = tmp_path / "data.jsonl"
    lines = _prompts_file(data, 30)
    proc = _cli("rank", "--model", tiny_checkpoint, "--input", data, "--output", data, "--limit", 5, "--quiet",
                "--strategy", "bubble")
    assert proc.returncode == 0, proc.stderr
    now = data.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(now) == 30  # was 5: 25 prompts gone
    assert now[5:] == lines[5:]  # byte for byte as they were
    assert all("blender_fast" in json.loads(line) for line in now[:5])
    assert "25 lines after --limit copied as they were" in proc.stderr
    # Going on in place with --resume: the ranked ones are kept, the next ones ranked, the rest copied.
    proc = _cli("rank", "--model", tiny_checkpoint, "--input", data, "--output", data, "--limit", 8, "--resume",
                "--quiet", "--strategy", "bubble")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"p{i}" for i in range(30))  # each prompt once
    assert sum("blender_fast" in r for r in rows) == 8


def test_in_place_run_that_fails_leaves_the_file_as_it_was(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    lines = _prompts_file(data, 6)
    bad = json.dumps(dict(EXAMPLE_RECORDS[0], id="bad", candidates=["fine", "sneaky <|candidate|> marker"])) + "\n"
    data.write_text("".join(lines[:3] + [bad] + lines[3:]), encoding="utf-8")
    before = data.read_bytes()
    assert _rank(tiny_checkpoint, "--input", data, "--output", data, "--chunk", 1) == 2
    assert f"{data}:4: candidates[1] contains the reserved marker" in capsys.readouterr().err
    assert data.read_bytes() == before  # every prompt still there, as it was
    assert _ids(tmp_path / "data.jsonl.partial") == ["p0", "p1", "p2"]


def test_resume_with_a_limit_keeps_every_finished_record(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _prompts_file(src, 30)
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--input", src, "--output", out) == 0
    assert len(_ids(out)) == 30
    capsys.readouterr()
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--resume", "--limit", 5) == 0
    assert "--resume: 5 of 5 prompts already done; 30 finished records kept" in capsys.readouterr().err
    assert sorted(_ids(out)) == sorted(f"p{i}" for i in range(30))  # was 5 lines


def test_a_partial_made_with_other_options_is_never_deleted(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    _prompts_file(src, 12)
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--top-k", 1, "--limit", 7) == 0
    partial = tmp_path / "out.jsonl.partial"
    out.rename(partial)  # what an interrupted --top-k 1 run leaves
    before = partial.read_bytes()
    capsys.readouterr()
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--resume", "--top-k", 2, "--limit", 3) == 2
    err = capsys.readouterr().err
    assert f"--resume: {partial} holds 7 finished records made with other options (--strategy bubble --top-k 1; " \
           f"this run: --strategy bubble --top-k 2)" in err
    assert partial.read_bytes() == before and not out.exists()
    # A run without --resume would replace it at its end (or at its interruption): refused too.
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--top-k", 2, "--limit", 3) == 2
    assert f"{partial} holds finished records of an interrupted run: pass --resume" in capsys.readouterr().err
    assert partial.read_bytes() == before
    # With its own options, --resume takes it in, and the .partial goes only once its records are in the output.
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--resume", "--top-k", 1) == 0
    assert sorted(_ids(out)) == sorted(f"p{i}" for i in range(12)) and not partial.exists()


class _FullDiskFile:
    """A raw file that takes ``room`` bytes, then fails every write with ENOSPC, as a full disk does; a
    BufferedWriter over it hands it bytes whenever its buffer fills, so lines land on disk cut anywhere."""

    def __init__(self, path, room: int):
        import io

        class Raw(io.FileIO):
            def write(self, b):
                import errno

                nonlocal room
                if room <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = min(len(b), room)
                room -= n
                return super().write(bytes(b[:n]))

        self.raw = Raw(path, "w")


def test_counts_after_a_failure_are_the_counts_on_disk(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import io

    import blender_fast.jsonl.writers as writers

    src = tmp_path / "in.jsonl"
    _prompts_file(src, 40)
    out = tmp_path / "out.jsonl"

    def small_disk_open(path, mode="r", *args, **kwargs):
        if mode != "w" or not str(path).endswith(".tmp"):
            return open(path, mode, *args, **kwargs)
        raw = _FullDiskFile(path, room=9000).raw  # a few records' worth, then the disk is full
        return io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=4096), encoding="utf-8")

    monkeypatch.setattr(writers, "open", small_disk_open, raising=False)
    assert _rank(tiny_checkpoint, "--input", src, "--output", out, "--chunk", 1) == 2
    err = capsys.readouterr().err
    partial = tmp_path / "out.jsonl.partial"
    on_disk = partial.read_text(encoding="utf-8").splitlines()
    assert on_disk and all(json.loads(line)["id"] for line in on_disk)  # complete records only: the cut line went
    assert f"stopped: {len(on_disk)} prompts ({len(on_disk)} new) written to {partial}" in err
    assert f"{out}: cannot write the output: No space left on device" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.slow
def test_kill_9_then_resume_ranks_every_prompt_exactly_once(tiny_checkpoint, tmp_path):
    src = tmp_path / "in.jsonl"
    _prompts_file(src, 400)
    out = tmp_path / "out.jsonl"
    exe = shutil.which("blender-fast")
    cmd = [exe] if exe else [sys.executable, "-m", "blender_fast.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "rank", "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out),
                             "--chunk", "1", "--strategy", "bubble", "--quiet", "--threads", "1"],
                            env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    tmp = None
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if tmps and tmps[0].stat().st_size > 2000:  # a few records written
            tmp = tmps[0]
            break
        time.sleep(0.02)
    assert tmp is not None, "the job never wrote its first records"
    proc.send_signal(signal.SIGKILL)  # no handler runs: the temp file is all that is left
    proc.wait(timeout=60)
    done_before = sum(1 for line in tmp.read_text(encoding="utf-8").splitlines() if line.endswith("}"))
    assert 0 < done_before < 400 and not out.exists()
    run = _cli("rank", "--model", tiny_checkpoint, "--input", src, "--output", out, "--chunk", 50,
               "--strategy", "bubble", "--quiet", "--resume")
    assert run.returncode == 0, run.stderr
    assert f"--resume: {done_before} of 400 prompts already done" in run.stderr  # the killed run's work is kept
    ids = _ids(out)
    assert len(ids) == 400 and sorted(ids) == sorted(f"p{i}" for i in range(400))  # every prompt exactly once
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".partial"))]


# -- 6. input files: encodings, depth, streams (issue 25, item 4) -------------------------------------------

def test_input_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"instruction": "ok", "candidates": ["a", "b"]}\n'
                    b'{"instruction": "caf\xe9", "candidates": ["a", "b"]}\n')
    assert _rank(tmp_path / "no-model", "--input", bad) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not UTF-8 (byte 0xe9 at column 21); save the file as UTF-8" in err and "no-model" not in err


def test_input_nested_too_deep_names_file_and_line(tmp_path, capsys):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"instruction": "x", "candidates": ["a", "b"]}\n'
                    '{"instruction": "x", "candidates": ["a", "b"], "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert _rank(tmp_path / "no-model", "--input", deep) == 2
    err = capsys.readouterr().err
    assert f"{deep}:2: the JSON is nested too deep to read" in err and "recursion" not in err


def test_input_with_a_utf8_bom_is_read(tiny_checkpoint, tmp_path):
    src = tmp_path / "bom.jsonl"
    lines = _prompts_file(src, 3)
    src.write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode("utf-8"))
    out = tmp_path / "out.jsonl"
    assert _rank(tiny_checkpoint, "--input", src, "--output", out) == 0
    assert _ids(out) == ["p0", "p1", "p2"]


@pytest.mark.parametrize("how", ["-", "/dev/stdin", "fifo"])
def test_input_from_a_pipe_or_fifo_is_read_as_a_stream(tiny_checkpoint, tmp_path, how):
    src = tmp_path / "in.jsonl"
    lines = _prompts_file(src, 4)
    out = tmp_path / "out.jsonl"
    base = ("rank", "--model", tiny_checkpoint, "--output", out, "--quiet", "--strategy", "bubble")
    if how == "fifo":
        fifo = tmp_path / "prompts.fifo"
        os.mkfifo(fifo)

        def feed():
            with open(fifo, "w", encoding="utf-8") as f:
                f.write("".join(lines))

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        proc = _cli(*base, "--input", fifo)
        writer.join(timeout=10)
    else:  # a pipe: `cat in.jsonl | blender-fast rank --input -`
        proc = _cli(*base, "--input", how, input_text="".join(lines))
    assert proc.returncode == 0, proc.stderr
    assert _ids(out) == ["p0", "p1", "p2", "p3"]


def test_errors_in_a_piped_input_name_stdin_and_the_line(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    proc = _cli("rank", "--model", tmp_path / "no-model", "--input", "-", env={"TMPDIR": str(spool)},
                input_text='{"instruction": "x", "candidates": ["a"]}\n{"instruction": "x"}\n')
    assert proc.returncode == 2
    assert "<stdin>:2: 'candidates' must be a non-empty list" in proc.stderr
    assert not list(spool.iterdir())  # the stream's temporary copy is removed


# -- 7. a full disk and a read-only file system (issue 25, item 4) ------------------------------------------

_MOUNT_OK: list = []


def _on_tmpfs(mountpoint, size: str, *cmd, ro: bool = False, env=None, timeout=600):
    """Run cmd with a fresh tmpfs of ``size`` mounted at mountpoint (a private mount namespace: nothing
    outside this command sees it); None where this machine lets no one mount one (no root, no user
    namespaces): the callers then inject the same fault in-process instead."""
    if not shutil.which("unshare"):
        return None
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    opts = f"size={size}" + (",ro" if ro else "")
    # After the command, list any temporary file left on the tmpfs (it vanishes with the namespace).
    script = (f'mount -t tmpfs -o {opts} tmpfs "{mountpoint}" || exit 99; "$@"; rc=$?; '
              f'find "{mountpoint}" -name "*tmp*" -printf "LEFT BEHIND: %p\\n" >&2; exit $rc')
    if not _MOUNT_OK:
        probe = tempfile_mkdtemp()
        ok = subprocess.run(["unshare", "--mount", *userns, "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{probe}"'],
                            capture_output=True).returncode == 0
        _MOUNT_OK.append(ok)
    if not _MOUNT_OK[0]:
        return None
    exe = shutil.which("blender-fast")
    prefix = [exe] if exe else [sys.executable, "-m", "blender_fast.cli"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["unshare", "--mount", *userns, "sh", "-c", script, "sh", *prefix, *map(str, cmd)],
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def tempfile_mkdtemp():
    import tempfile

    return tempfile.mkdtemp(prefix="bf-mount-probe-")


@pytest.mark.slow
def test_cache_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    import errno

    from blender_fast.model.cache import CacheError, publish_dir

    # In-process: a build that fills the disk halfway through.
    def build(tmp):
        (tmp / "weights.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CacheError, match="no space left on the disk of the blender-fast cache .* Free some space, "
                                         "or point BLENDER_FAST_CACHE at another disk"):
        publish_dir(tmp_path / "cache" / "entry", build, lambda d: None)
    assert not list((tmp_path / "cache").iterdir())
    # For real, where a small tmpfs can be mounted: the demo checkpoint does not fit in 512 KB.
    cache = tmp_path / "full"
    cache.mkdir()
    proc = _on_tmpfs(cache, "512k", "rank", "--model", "demo:tiny", "--limit", 1, "--output", tmp_path / "o.jsonl",
                     env={"BLENDER_FAST_CACHE": str(cache)})
    if proc is not None:
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("blender-fast: error:")]
        assert len(lines) == 1 and "no space left on the disk of the blender-fast cache" in lines[0]
        assert "Traceback" not in proc.stderr and "LEFT BEHIND" not in proc.stderr  # no spm/*.tmp*, no .tmp- dirs


def test_output_on_a_read_only_file_system_is_named_as_such(tmp_path, capsys, monkeypatch):
    import blender_fast.jsonl.targets as targets

    ro = tmp_path / "ro"
    ro.mkdir()
    proc = _on_tmpfs(ro, "64k", "rank", "--model", tmp_path / "no-model", "--output", ro / "out.jsonl", ro=True)
    if proc is not None:
        assert proc.returncode == 2
        assert f"{ro / 'out.jsonl'}: cannot write in the directory of --output ({ro}): it is on a read-only " \
               f"file system" in proc.stderr and "permission denied" not in proc.stderr
    # In-process, anywhere: access() refuses and statvfs says read-only.
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.f_flag = st.f_flag | os.ST_RDONLY

    monkeypatch.setattr(targets.os, "access", lambda path, mode: False)
    monkeypatch.setattr(targets.os, "statvfs", lambda path: ReadOnly(real_statvfs(path)))
    assert _rank(tmp_path / "no-model", "--output", ro / "out.jsonl") == 2
    err = capsys.readouterr().err
    assert "it is on a read-only file system" in err and "permission denied" not in err
