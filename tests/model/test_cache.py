"""The cache never lies: atomic publication, damaged entries noticed and rebuilt, concurrent exporters,
debris of killed processes removed, in-place weight replacement noticed, unusable cache named."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require

from blender_fast.model import cache
from blender_fast.synthetic import demo
from blender_fast.model.cache import CacheError, publish_dir, weights_fingerprint


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("BLENDER_FAST_CACHE", str(root))
    return root


def _temps(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if cache._TEMP_MARK in p.name] if parent.exists() else []


# -- cache root --------------------------------------------------------------------------------------

def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BLENDER_FAST_CACHE", str(tmp_path / "a"))
    assert cache.cache_root() == tmp_path / "a"
    monkeypatch.delenv("BLENDER_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "blender_fast"


# -- publish_dir -------------------------------------------------------------------------------------

def _writer(calls, text="ok"):
    def build(tmp: Path):
        calls.append(tmp)
        (tmp / "data.txt").write_text(text)
        (tmp / "manifest.json").write_text(json.dumps({"files": cache.record_files(tmp, exclude=("manifest.json",))}))
    return build


def _check(d: Path):
    meta, problem = cache.read_manifest(d / "manifest.json")
    return problem or cache.verify_files(d, meta.get("files"))


def test_publish_builds_once_then_reuses(tmp_path):
    calls = []
    final = tmp_path / "entries" / "one"
    assert publish_dir(final, _writer(calls), _check) == (final, False)
    assert publish_dir(final, _writer(calls), _check) == (final, True)
    assert len(calls) == 1 and (final / "data.txt").read_text() == "ok"
    assert _temps(final.parent) == []


def test_damaged_entry_is_rebuilt(tmp_path):
    calls = []
    final = tmp_path / "one"
    publish_dir(final, _writer(calls), _check)
    (final / "data.txt").write_text("ko")  # same size, different content
    assert "data.txt is corrupt" in _check(final)
    assert publish_dir(final, _writer(calls), _check) == (final, False)
    assert len(calls) == 2 and (final / "data.txt").read_text() == "ok"
    (final / "data.txt").write_text("o")  # truncated
    assert "has 1 bytes, 2 were written" in _check(final)
    (final / "manifest.json").write_text("{")
    assert "not valid JSON" in _check(final)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_interrupted_build_leaves_no_temp_dir(tmp_path, interrupt):
    final = tmp_path / "one"

    def build(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 1000)
        raise interrupt("stop")

    with pytest.raises(interrupt):
        publish_dir(final, build, _check)
    assert not final.exists() and _temps(tmp_path) == []


def test_temp_dirs_of_killed_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "one"
    debris = tmp_path / f"{cache.temp_prefix(final)}{dead.pid}-abc123"
    (debris / "sub").mkdir(parents=True)
    (debris / "sub" / "model.onnx").write_bytes(b"half")
    other = tmp_path / f"{cache.temp_prefix(tmp_path / 'another-entry')}{dead.pid}-xyz789"  # any entry's debris
    other.mkdir()
    alive = tmp_path / f"{cache.temp_prefix(final)}{os.getppid()}-def456"  # a live process: left alone
    alive.mkdir()
    publish_dir(final, _writer([]), _check)
    assert not debris.exists() and not other.exists() and alive.exists()
    old = os.path.getmtime(alive) - cache.STALE_TEMP_SECONDS - 10
    os.utime(alive, (old, old))  # ... unless it is a day old (a pid from another machine)
    assert cache.remove_stale_temps(final) == [alive]


def test_losing_a_race_uses_the_winners_entry(tmp_path):
    final = tmp_path / "one"

    def build(tmp):  # another process publishes while we build
        publish_dir(final, _writer([], "theirs"), _check)
        _writer([], "mine")(tmp)

    assert publish_dir(final, build, _check) == (final, True)
    assert (final / "data.txt").read_text() == "theirs" and _temps(tmp_path) == []


def test_unusable_cache_directory_gets_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError) as err:
        publish_dir(blocker / "sub" / "one", _writer([]), _check)
    message = str(err.value)
    assert str(blocker / "sub") in message and "BLENDER_FAST_CACHE" in message and "writable directory" in message


# -- fingerprints ------------------------------------------------------------------------------------

def test_fingerprint_notices_a_file_replaced_in_place(tmp_path, own_cache):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"A" * 300_000)
    first = weights_fingerprint(weights)
    assert weights_fingerprint(weights) == first  # remembered
    stat = weights.stat()
    replacement = tmp_path / "other.safetensors"
    replacement.write_bytes(b"B" * 300_000)  # same size
    os.replace(replacement, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert weights_fingerprint(weights) != first
    # rewritten in place (same inode), middle bytes only, same size and mtime: ctime still moves
    data = bytearray(weights.read_bytes())
    data[150_000] ^= 1
    before = weights_fingerprint(weights)
    time.sleep(0.05)  # file timestamps tick every few ms: a rewrite within the same tick keeps its ctime
    with open(weights, "r+b") as f:
        f.write(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_fingerprint(weights) != before


# -- the ranker's ONNX export cache -------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_once(tiny_checkpoint, tmp_path_factory, one_torch_thread):
    require("torch")
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export

    ckpt = load_checkpoint(tiny_checkpoint)
    out_dir, _ = cached_export(ckpt, "fp32", cache_dir=tmp_path_factory.mktemp("onnx"))
    return ckpt, out_dir


@pytest.fixture
def exported(export_once, own_cache):
    """A fresh copy of the tiny checkpoint's export in this test's own cache (exported once per module)."""
    from blender_fast.model.export import cached_export

    ckpt, src = export_once
    shutil.copytree(src, own_cache / "onnx" / src.name)
    out_dir, report = cached_export(ckpt, "fp32")
    assert report.cached and out_dir == own_cache / "onnx" / src.name
    return ckpt, out_dir, report


def test_export_json_records_the_final_path(export_once):
    from blender_fast.model.export import cached_export

    ckpt, out_dir = export_once
    meta = json.loads((out_dir / "export.json").read_text())
    assert meta["export"]["path"] == str(out_dir / "model.onnx") == cached_export(ckpt, "fp32", out_dir.parent)[1].path
    assert set(meta["files"]) >= {"model.onnx", "tokenizer.json", "pair_tokenizer.json"}
    assert _temps(out_dir.parent) == []


@pytest.mark.parametrize("damage", ["truncate model.onnx", "corrupt pair_tokenizer.json", "corrupt export.json",
                                    "delete tokenizer.json"])
def test_damaged_export_is_detected_and_redone(exported, damage):
    from blender_fast.model.export import cached_export, check_export
    from blender_fast.ranker import Ranker

    ckpt, out_dir, _ = exported
    action, name = damage.split()
    path = out_dir / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif action == "delete":
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[:-2] + b"x}")  # same size
    assert name in check_export(out_dir)
    again, report = cached_export(ckpt, "fp32")
    assert again == out_dir and not report.cached and check_export(out_dir) is None
    ranker = Ranker.from_pretrained(ckpt.path, cache_dir=out_dir.parent)
    assert ranker.rank(["Say hi."], [["hi", "hello there", "no"]]).shape == (1, 3)


def test_damaged_built_entry_is_rebuilt_without_torch(exported, monkeypatch):
    """The graph builder needs no torch: a damaged built entry is simply built again."""
    from blender_fast.model import export

    ckpt, out_dir, _ = exported
    assert export.graph_maker(ckpt) == "builder"
    (out_dir / "model.onnx").write_bytes(b"")

    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(export, "_require_torch", no_torch)
    again, report = export.cached_export(ckpt, "fp32")
    assert again == out_dir and not report.cached and export.check_export(out_dir) is None


def test_damaged_torch_export_without_torch_names_what_to_delete(tiny_checkpoint, own_cache, monkeypatch, one_torch_thread):
    require("torch")
    from blender_fast.model import export

    from blender_fast.model.checkpoint import load_checkpoint

    monkeypatch.setenv(export.EXPORT_ENV, "torch")
    ckpt = load_checkpoint(tiny_checkpoint)
    out_dir, _ = export.cached_export(ckpt, "fp32")
    assert export.graph_maker(ckpt) == "torch"
    (out_dir / "model.onnx").write_bytes(b"")

    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(export, "_require_torch", no_torch)
    with pytest.raises(CacheError) as err:
        export.cached_export(ckpt, "fp32")
    assert f"rm -r '{out_dir}'" in str(err.value) and "model.onnx" in str(err.value)


def test_cli_export_prints_the_real_path_when_cached(tiny_checkpoint, own_cache, capsys, one_torch_thread):
    require("torch")
    from blender_fast.cli import main

    assert main(["export", str(tiny_checkpoint)]) == 0
    first = capsys.readouterr().out
    assert main(["export", str(tiny_checkpoint)]) == 0
    second = capsys.readouterr().out
    assert "cached" in second
    path = Path(second.split(" (")[0])
    assert path.is_file() and path.name == "model.onnx" and cache._TEMP_MARK not in str(path)
    assert first.split(" (")[0] == str(path)


def test_cli_export_into_an_unusable_cache(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    require("torch")
    from blender_fast.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setenv("BLENDER_FAST_CACHE", str(blocker / "sub"))
    assert main(["export", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "not usable" in err and "BLENDER_FAST_CACHE" in err


@pytest.mark.slow
def test_two_processes_export_the_same_model(tiny_checkpoint, own_cache):
    require("torch")
    code = ("import torch; torch.set_num_threads(1); from blender_fast.cli import main; "
            f"raise SystemExit(main(['export', {str(tiny_checkpoint)!r}]))")
    env = dict(os.environ, BLENDER_FAST_CACHE=str(own_cache), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    paths = {o[0].split(" (")[0] for o in outs}
    assert len(paths) == 1
    entries = list((own_cache / "onnx").iterdir())
    assert [e.name for e in entries] == [Path(paths.pop()).parent.name]
    from blender_fast.model.export import check_export

    assert check_export(entries[0]) is None


# -- the demo checkpoint -------------------------------------------------------------------------------

def test_demo_checkpoint_is_made_once_and_lean(own_cache, one_torch_thread):
    require("torch")
    announced = []
    path = demo.demo_checkpoint("tiny", announce=announced.append)
    assert path == own_cache / "checkpoints" / "demo-tiny-seed0" and len(announced) == 1
    assert (path / "backbone" / "config.json").is_file()
    assert not list((path / "backbone").glob("*.safetensors"))  # one copy of the weights, not two
    assert demo.demo_checkpoint("tiny", announce=announced.append) == path and len(announced) == 1
    (path / "model.safetensors").write_bytes(b"broken")
    assert demo.demo_checkpoint("tiny", announce=announced.append) == path and len(announced) == 2
    from blender_fast.model.checkpoint import load_checkpoint

    assert load_checkpoint(path).weights_path.stat().st_size > 1000
    assert _temps(path.parent) == []
