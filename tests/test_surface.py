"""One surface: every entry point of a verb takes the same parameters and refuses the same bad values
with the same exception type (or HTTP status / exit status) and a message naming the parameter.

Entry points: Ranker, Blender / PairRMJudge, BatchingEngine (sync and async), the HTTP app on loopback,
Client, the CLI's parser and the Ray job's option check. The checks themselves live in options.py.
"""
from __future__ import annotations

import asyncio
import copy
import inspect
import json
import math
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import live_server

from blender_fast import Ranker
from blender_fast.blender import Blender
from blender_fast.cli import build_parser
from blender_fast.cluster.ray_job import check_ray_job
from blender_fast.judges import PairRMJudge
from blender_fast.options import OptionTypeError, check_count
from blender_fast.selection.steps import ModelOutputError, PromptError
from blender_fast.serve.client import Client
from blender_fast.serve.engine import BatchingEngine

INPUTS = ["What is 2 + 2?", "Name a colour."]
CANDS = [["4", "four", "22"], ["red", "blue", "the sky"]]
PAIRS = [["4", "five"], ["red", "happy"]]

# The canonical parameters of each verb, in order (the texts first, then the options).
# The ranker's per-call truncation lengths come last, keyword-only, everywhere (HTTP fields included).
TRUNCATION = ["source_maxlength", "candidate_maxlength"]
CANON = {
    "rank": ["inputs", "candidates", "instructions", "return_scores", "policy"] + TRUNCATION,
    "select": ["inputs", "candidates", "top_k", "strategy", "orders", "seed", "instructions", "initial_orders",
               "policy", "worst", "budget"] + TRUNCATION,
    "compare": ["inputs", "candidates_a", "candidates_b", "instructions", "mode"] + TRUNCATION,
    "judge": ["prompts", "completions", "shuffle_order", "return_scores", "temperature", "seed"],
}
# What an entry point adds (progress bars, deadlines) or cannot take over HTTP.
EXTRA = {"Ranker": {"progress"}, "BatchingEngine": {"timeout"}, "Client": set()}
MISSING = {("Client", "select"): {"initial_orders"}}  # a Python array of arrangements has no JSON field
# Defaults that differ on purpose: the server's select and fuse default to the tournament (log2 n steps
# per request suits continuous batching); the library keeps llm-blender's bubble.
DEFAULT_DIFFERS = {("Client", "select", "strategy")}


def _params(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("verb", sorted(CANON))
def test_verbs_take_the_same_parameters_everywhere(verb):
    methods = {"Ranker": getattr(Ranker, verb),
               "BatchingEngine": getattr(BatchingEngine, f"{verb}_sync"),
               "Client": getattr(Client, verb)}
    reference = {p.name: p.default for p in _params(Ranker.__dict__[verb])}
    for where, fn in methods.items():
        names = [p.name for p in _params(fn) if p.name not in EXTRA[where]]
        want = [n for n in CANON[verb] if n not in MISSING.get((where, verb), set())]
        assert names == want, (where, verb)
        for p in _params(fn):
            if p.name in reference and (where, verb, p.name) not in DEFAULT_DIFFERS:
                assert p.default == reference[p.name], (where, verb, p.name)
    # The async verbs take the sync verbs' arguments (keyword adapters), checked by running them below.
    assert inspect.iscoroutinefunction(getattr(BatchingEngine, verb))


def test_http_fields_are_the_python_parameters():
    from blender_fast.serve.app import FIELDS

    singular = {"inputs": "input", "candidates": "candidates", "instructions": "instruction"}
    for verb in ("rank", "select"):
        want = {singular.get(n, n) for n in CANON[verb]} - {"initial_orders"}
        assert set(FIELDS[verb]) == want, verb
    assert set(FIELDS["judge"]) == {"prompt", "completions", "shuffle_order", "return_scores", "temperature", "seed"}
    assert {"top_k", "strategy", "seed", "budget"} <= set(FIELDS["fuse"])


# -- bad values ----------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# (parameter, value, the exception every Python entry point raises). TypeError: not an integer at all
# (bool and every float refused, 2.0 included); ValueError: an integer out of its range.
SELECT_BAD = [
    ("top_k", 0, ValueError), ("top_k", 1.5, TypeError), ("top_k", 2.0, TypeError), ("top_k", True, TypeError),
    ("top_k", 10**30, ValueError), ("top_k", NAN, TypeError),
    ("seed", -1, ValueError), ("seed", True, TypeError), ("seed", 10**30, ValueError),
    ("budget", NAN, TypeError), ("budget", INF, TypeError), ("budget", 10**20, ValueError),
    ("budget", 0, ValueError), ("budget", True, TypeError),
]
JUDGE_BAD = [("temperature", 0, ValueError), ("temperature", NAN, ValueError), ("temperature", INF, ValueError),
             ("temperature", -1.0, ValueError), ("temperature", True, TypeError), ("temperature", "1", TypeError),
             ("seed", -1, ValueError), ("seed", True, TypeError)]


def _raises(call, name, error):
    with pytest.raises(error) as info:
        call()
    assert name in str(info.value), (name, str(info.value))
    if error is ValueError:  # a bad value, not a bad type
        assert not isinstance(info.value, TypeError), str(info.value)
    return info.value


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


@pytest.fixture(scope="module")
def engine(ranker):
    with BatchingEngine(ranker) as e:
        yield e


@pytest.mark.parametrize("name, value, error", SELECT_BAD)
def test_select_refuses_the_same_values_in_python(ranker, engine, name, value, error):
    kw = {"strategy": "swiss", name: value}
    blender = Blender()
    blender.ranker = ranker
    calls = [lambda: ranker.select(INPUTS, CANDS, **kw),
             lambda: engine.select_sync(INPUTS, CANDS, **kw),
             lambda: asyncio.run(engine.select(INPUTS, CANDS, **kw)),
             lambda: Client("http://127.0.0.1:9").select(INPUTS, CANDS, **kw),  # checked before any request
             lambda: check_ray_job(**kw)]
    if name == "top_k":
        calls.append(lambda: blender.rank_and_fuse(INPUTS, CANDS, top_k=value))
    else:
        calls.append(lambda: blender.get_best_of_n(INPUTS, CANDS, pairrm_cmp_type="swiss", **{name: value}))
    for call in calls:
        _raises(call, name, error)


@pytest.mark.parametrize("name, value, error", JUDGE_BAD)
def test_judge_refuses_the_same_values_in_python(ranker, engine, name, value, error):
    kw = {name: value}
    calls = [lambda: ranker.judge(INPUTS, PAIRS, **kw),
             lambda: engine.judge_sync(INPUTS, PAIRS, **kw),
             lambda: asyncio.run(engine.judge(INPUTS, PAIRS, **kw)),
             lambda: Client("http://127.0.0.1:9").judge(INPUTS, PAIRS, **kw)]
    if name == "seed":
        calls.append(lambda: PairRMJudge(ranker, seed=value))
    else:
        calls.append(lambda: PairRMJudge(ranker, seed=0).judge(INPUTS, PAIRS, **kw))
    for call in calls:
        _raises(call, name, error)


# Choices, the budget rule and the truncation lengths, verb by verb: (verb, parameter, value, exception).
# budget=4 is given with strategy="bubble": a budget belongs to the budgeted strategies only.
OTHER_BAD = [
    ("select", "strategy", "nope", ValueError), ("select", "orders", "x", ValueError),
    ("select", "policy", "x", ValueError), ("select", "budget", 4, ValueError),
    ("rank", "policy", "x", ValueError), ("compare", "mode", "x", ValueError),
    *[(verb, "source_maxlength", 0, ValueError) for verb in ("rank", "select", "compare")],
    *[(verb, "candidate_maxlength", 1.5, TypeError) for verb in ("rank", "select", "compare")],
    ("select", "source_maxlength", True, TypeError),
]
TEXTS = {"rank": (INPUTS, CANDS), "select": (INPUTS, CANDS), "compare": (INPUTS, ["a", "b"], ["c", "d"])}


def _other_kw(name, value) -> dict:
    return {name: value, **({"strategy": "bubble"} if name == "budget" else {})}


@pytest.mark.parametrize("verb, name, value, error", OTHER_BAD)
def test_choices_and_lengths_are_refused_the_same_way_in_python(ranker, engine, verb, name, value, error):
    kw, texts = _other_kw(name, value), TEXTS[verb]
    blender = Blender()
    blender.ranker = ranker
    calls = [lambda: getattr(ranker, verb)(*texts, **kw),
             lambda: getattr(engine, f"{verb}_sync")(*texts, **kw),
             lambda: asyncio.run(getattr(engine, verb)(*texts, **kw)),
             lambda: getattr(Client("http://127.0.0.1:9"), verb)(*texts, **kw)]  # checked before any request
    if verb == "select" and name in ("strategy", "orders", "policy", "budget"):
        calls.append(lambda: check_ray_job(**kw))
    if (verb, name) in (("select", "strategy"), ("select", "budget")):  # the facade's select verbs
        calls.append(lambda: blender.rank_and_fuse(INPUTS, CANDS, top_k=1, **kw))
        calls.append(lambda: Client("http://127.0.0.1:9").fuse(INPUTS, CANDS, top_k=1, **kw))
    if (verb, name) in (("rank", "policy"), ("compare", "mode")):
        calls.append(lambda: getattr(blender, verb)(*texts, **kw))
    for call in calls:
        _raises(call, name, error)


@pytest.mark.parametrize("verb, texts, kw", [
    ("select", ("q", [["a"]]), {"top_k": 0}), ("select", ("q", [["a"]]), {"strategy": "nope"}),
    ("rank", ("q", [["a"]]), {"policy": "x"}), ("compare", ("q", ["a"], ["b"]), {"mode": "x"}),
    ("judge", ("q", [["a", "b"]]), {"temperature": 0}),
])
def test_bad_texts_and_a_bad_option_give_the_same_first_error(ranker, engine, verb, texts, kw):
    """With two things wrong, the Ranker and the engine name the same one first (the texts, then the
    options): one order of checks, not only one set."""
    errors = []
    for call in (lambda: getattr(ranker, verb)(*texts, **kw), lambda: getattr(engine, f"{verb}_sync")(*texts, **kw)):
        with pytest.raises(Exception) as info:
            call()
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] and "must be a list" in errors[0][1], errors


def test_one_number_rule():
    assert check_count("n", np.int64(3)) == 3 and type(check_count("n", np.int64(3))) is int
    for bad in (2.0, True, None, "2", NAN):
        with pytest.raises(OptionTypeError, match="n must be an integer"):
            check_count("n", bad)
    assert issubclass(OptionTypeError, TypeError) and issubclass(OptionTypeError, ValueError)
    with pytest.raises(ValueError, match=r"n must be <= 5, got 6"):
        check_count("n", 6, maximum=5)


# -- the HTTP app on loopback ------------------------------------------------------------------------------

def _post(url, route, item) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"{url}/v1/{route}", data=json.dumps(item).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["detail"]


def test_http_refuses_the_same_values_with_422(engine):
    with live_server(engine, close_engine=False) as url:
        for name, value, _ in SELECT_BAD:
            item = {"input": INPUTS[0], "candidates": CANDS[0], "strategy": "swiss", name: value}
            status, detail = _post(url, "select", item)
            assert status == 422 and name in detail, (name, value, status, detail)
        for name, value, _ in JUDGE_BAD:
            status, detail = _post(url, "judge", {"prompt": INPUTS[0], "completions": PAIRS[0], name: value})
            assert status == 422 and name in detail, (name, value, status, detail)
        for verb, name, value, _ in OTHER_BAD:
            item = {"input": INPUTS[0], **({"candidate_a": "a", "candidate_b": "b"} if verb == "compare" else
                                           {"candidates": CANDS[0]}), **_other_kw(name, value)}
            status, detail = _post(url, verb, item)
            assert status == 422 and name in detail, (verb, name, value, status, detail)
        # Good values still answer.
        assert _post(url, "select", {"input": INPUTS[0], "candidates": CANDS[0], "strategy": "swiss",
                                     "budget": 10**9})[0] == 200


@pytest.mark.parametrize("name, value, error", SELECT_BAD)
def test_fuse_refuses_the_same_values(ranker, engine, name, value, error):
    kw = {"strategy": "swiss", name: value}
    blender = Blender()
    blender.ranker = ranker  # no fuser loaded: the numbers are refused before that matters
    for call in (lambda: blender.rank_and_fuse(INPUTS, CANDS, **kw),
                 lambda: Client("http://127.0.0.1:9").fuse(INPUTS, CANDS, **kw)):
        _raises(call, name, error)


def test_http_fuse_refuses_the_same_values_with_422(engine):
    class NoFuser:  # the checks come first; a request that passed them would reach this
        def fuse(self, *args, **kwargs):
            raise AssertionError("a bad request reached the fuser")

    with live_server(engine, close_engine=False, fuser=NoFuser()) as url:
        for name, value, _ in SELECT_BAD:
            item = {"input": INPUTS[0], "candidates": CANDS[0], "strategy": "swiss", "top_k": 1, name: value}
            status, detail = _post(url, "fuse", item)
            assert status == 422 and name in detail, (name, value, status, detail)


# -- the command line ------------------------------------------------------------------------------------

CLI_BAD = [("--top-k", "0"), ("--top-k", "1.5"), ("--top-k", "True"), ("--top-k", str(10**30)), ("--top-k", "nan"),
           ("--seed", "-1"), ("--seed", "True"), ("--budget", "nan"), ("--budget", "inf"),
           ("--budget", str(10**20)), ("--budget", "99999999999999999999"), ("--budget", "0"),
           ("--strategy", "nope"), ("--orders", "x"), ("--policy", "x")]


@pytest.mark.parametrize("flag, text", CLI_BAD)
def test_cli_refuses_the_same_values_with_usage_errors(flag, text, capsys):
    for verb in (["rank"], ["fuse", "--fuser", "f"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*verb, "--strategy", "swiss", flag, text])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"argument {flag}:" in err[-1] and "Traceback" not in "\n".join(err)


def test_precision_auto_is_accepted_by_cli_serve_and_ray():
    parser = build_parser()
    assert parser.parse_args(["rank", "--precision", "auto"]).precision == "auto"
    assert parser.parse_args(["serve", "--model", "m", "--precision", "auto"]).precision == "auto"
    assert check_ray_job(precision="auto")[1] == "cpu"
    for argv in (["rank", "--precision", "fp8"], ["serve", "--model", "m", "--precision", "fp8"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2
    with pytest.raises(ValueError, match="precision must be one of"):
        check_ray_job(precision="fp8")


# -- the drifts that are not about numbers ----------------------------------------------------------------

def _nan_ranker(ranker):
    bad = copy.copy(ranker)
    bad.model = lambda ids, mask, pos: np.full(len(ids), np.nan, dtype=np.float32)
    return bad


def test_nan_from_the_model_is_the_same_prompt_error_everywhere(ranker):
    bad = _nan_ranker(ranker)
    message = r"^the model returned NaN on prompt 0: the model is at fault, not the input"
    with BatchingEngine(bad) as eng:
        for call in (lambda: bad.select(INPUTS, CANDS, strategy="tournament"),
                     lambda: bad.select(INPUTS, CANDS, strategy="full"),
                     lambda: bad.rank(INPUTS, CANDS),
                     lambda: bad.compare(INPUTS, ["a", "b"], ["c", "d"]),
                     lambda: eng.select_sync(INPUTS, CANDS, strategy="tournament"),
                     lambda: eng.select_sync(INPUTS, CANDS, strategy="full"),
                     lambda: eng.rank_sync(INPUTS, CANDS),
                     lambda: eng.compare_sync(INPUTS, ["a", "b"], ["c", "d"]),
                     lambda: eng.judge_sync(INPUTS, PAIRS)):
            with pytest.raises(ModelOutputError, match=message) as info:
                call()
            assert info.value.prompt == 0 and isinstance(info.value, PromptError)


def test_unknown_model_name_is_a_clear_error(ranker):
    from blender_fast.selection.steps import Step

    with pytest.raises(ValueError, match=r"no model named 'exact'; it holds \('default',\)"):
        ranker.model_for("exact")

    def wants_exact():
        yield Step(np.array([[0, 0, 1]], dtype=np.int64), model="exact")

    with pytest.raises(ValueError, match="no model named 'exact'"):
        ranker.run(INPUTS[:1], [PAIRS[0]], wants_exact())


def test_select_sync_takes_a_budget_like_the_ranker(ranker, engine):
    want = ranker.select(INPUTS, CANDS, strategy="swiss", budget=4)
    got = engine.select_sync(INPUTS, CANDS, strategy="swiss", budget=4)
    assert [s.top_k for s in got] == [s.top_k for s in want]
    assert [s.forward_passes for s in got] == [s.forward_passes for s in want] and all(
        s.forward_passes <= 4 for s in got)


def test_judge_flips_the_same_pairs_in_process_and_in_the_engine(ranker, engine, monkeypatch):
    # Both drivers plan through the ranker (Ranker.plan): spy on the plans, the pairs as shown. Spy on the
    # class, not the instance: undoing an instance patch leaves a bound method of this ranker in its
    # __dict__, which a later copy.copy(ranker) would carry (and run on the original).
    prompts = [f"q{i}" for i in range(16)]
    pairs = [[f"a{i}", f"b{i}"] for i in range(16)]
    shown = []
    real_plan = Ranker.plan

    def spy(self, verb, *args, **kwargs):
        plan = real_plan(self, verb, *args, **kwargs)
        shown.append(plan.candidates)
        return plan

    monkeypatch.setattr(Ranker, "plan", spy)
    engine.judge_sync(prompts, pairs, seed=11)
    PairRMJudge(ranker, seed=11).judge(prompts, pairs)
    assert len(shown) == 2  # one plan per driver
    assert shown[0] == shown[1]
    assert 0 < sum(s != p for s, p in zip(shown[0], pairs)) < len(pairs)  # some flipped, some not
    assert math.isfinite(sum(PairRMJudge(ranker, seed=11).judge(prompts, pairs, return_scores=True)))


def test_engine_runs_each_step_on_the_model_it_names(ranker):
    """A wrapper generator (as a cascade would) asks for some rows on a second model; the engine (with
    several such requests in flight) and the Ranker both run each step on the model it names."""
    import concurrent.futures

    from blender_fast.inputs import check_prompts
    from blender_fast.selection.steps import Step

    calls = []

    def shifted(ids, mask, pos):  # the "exact" model: the default one + 100, recognisably
        calls.append(("exact", len(ids)))
        return ranker.model(ids, mask, pos) + 100.0

    def default(ids, mask, pos):
        calls.append(("default", len(ids)))
        return ranker.model(ids, mask, pos)

    two = copy.copy(ranker)
    two.model, two.extra_models = default, {"exact": shifted}
    sources, cands = check_prompts(INPUTS, CANDS)
    rows = np.array([[0, 0, 1], [0, 1, 0], [1, 2, 0], [1, 0, 2]], dtype=np.int64)

    def both_models():
        fast = yield Step(rows, group=2)
        exact = yield Step(rows[1:3], model="exact")
        return fast, exact

    offline = two.run(sources, cands, both_models())
    with BatchingEngine(two) as eng:
        calls.clear()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            jobs = [pool.submit(eng.run_sync, sources, cands, both_models()) for _ in range(3)]
            served = [j.result(timeout=60) for j in jobs]
    for fast, exact in [offline] + served:
        np.testing.assert_allclose(exact, fast[1:3] + 100.0, atol=1e-3)
        np.testing.assert_allclose(fast, offline[0], atol=1e-4)
    assert {name for name, _ in calls} == {"default", "exact"}


@pytest.mark.parametrize("argv", [["serve", "--model", "m", "--max-wait-ms", "nan"],
                                  ["serve", "--model", "m", "--max-wait-ms", "-1"],
                                  ["serve", "--model", "m", "--port", "65536"],
                                  ["rank", "--ray", "--gpus-per-actor", "inf"],
                                  ["rank", "--ray", "--num-actors", "0"]])
def test_other_numbers_on_the_command_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and f"argument {argv[-2]}:" in capsys.readouterr().err


def test_other_numbers_in_python(ranker):
    with pytest.raises(ValueError, match="max_wait_ms must be a finite number >= 0, got nan"):
        BatchingEngine(ranker, max_wait_ms=NAN)
    with pytest.raises(TypeError, match="max_batch_tokens must be an integer"):
        BatchingEngine(ranker, max_batch_tokens=1.5)
    with pytest.raises(ValueError, match="gpus_per_actor must be a finite number >= 0"):
        check_ray_job(gpus_per_actor=INF)
    with pytest.raises(ValueError, match="num_actors must be >= 1"):
        check_ray_job(num_actors=0)


def test_counts_of_the_fuser_and_the_records_follow_the_number_rule(tmp_path):
    from blender_fast.cluster.records import read_prompts

    with pytest.raises(OptionTypeError, match="limit must be an integer, got 1.5"):
        read_prompts(tmp_path / "in.jsonl", limit=1.5)
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        read_prompts(tmp_path / "in.jsonl", limit=-1)
    pytest.importorskip("torch")
    from blender_fast.fusion.generation import n_generate

    for kw, message in (({"n": 2.0}, "n must be an integer, got 2.0"), ({"n": 0}, "n must be >= 1, got 0"),
                        ({"batch_size": True}, "batch_size must be an integer, got True")):
        with pytest.raises(ValueError, match=message):  # OptionTypeError is a ValueError too
            n_generate(None, None, ["q"], **kw)


def test_auto_is_the_default_everywhere(tiny_checkpoint, tmp_path):
    """precision="auto" / backend="auto" are the defaults of every entry point (docs/exact-at-speed.md §4);
    an explicit precision with the default backend runs as requested on the backend that has it."""
    from blender_fast.cluster.ray_job import prepare_model, rank_dataset

    for argv in (["rank", "--model", "m"], ["serve", "--model", "m"]):
        args = build_parser().parse_args(argv)
        assert (args.backend, args.precision) == ("auto", "auto"), argv
    for fn in (Ranker.from_pretrained, check_ray_job, prepare_model, rank_dataset):
        params = inspect.signature(fn).parameters
        assert params["backend"].default == "auto", fn
        assert params["precision"].default in ("auto", None), fn  # None: from_pretrained's "auto"
    auto = Ranker.from_pretrained(tiny_checkpoint, precision="auto", backend="auto", threads=1, cache_dir=tmp_path)
    blender = Blender()
    blender.loadranker(str(tiny_checkpoint), device="cpu", threads=1, onnx_cache_dir=str(tmp_path))
    assert blender.ranker.describe()["reason"] == auto.describe()["reason"] != "as requested"
    fp16 = Ranker.from_pretrained(tiny_checkpoint, precision="fp16", threads=1, cache_dir=tmp_path).describe()
    assert (fp16["backend"], fp16["precision"], fp16["reason"]) == ("onnx", "fp16", "as requested")


# -- the public API and the benchmarks -------------------------------------------------------------------

def _documented_lower_level_names() -> dict[str, set[str]]:
    """docs/python-api.md's "Lower-level modules" table: module -> its public names."""
    from conftest import REPO

    text = (REPO / "docs" / "python-api.md").read_text().split("## Lower-level modules", 1)[1]
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) > 3 and cells[1].strip().startswith("`blender_fast"):
            names[cells[1].strip().strip("`")] = {n.strip().strip("`") for n in cells[2].split(",")}
    return names


def test_benchmarks_import_only_the_public_api():
    """benchmarks/ is a tool built on the engine: it imports the top level, options, and the lower-level
    names docs/python-api.md makes public, and every one of those exists."""
    import ast
    import importlib

    import blender_fast
    from conftest import REPO

    documented = _documented_lower_level_names()
    for module, names in documented.items():
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) for n in names), (module, sorted(n for n in names if not hasattr(mod, n)))
    outside = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                outside += [(path.name, a.name, "") for a in node.names
                            if a.name.startswith("blender_fast.") and a.name != "blender_fast.options"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("blender_fast"):
                for alias in node.names:
                    public = (alias.name in blender_fast.__all__ if node.module == "blender_fast" else
                              node.module == "blender_fast.options" or alias.name in documented.get(node.module, ()))
                    if not public:
                        outside.append((path.name, node.module, alias.name))
    assert not outside, outside
