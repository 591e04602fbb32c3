"""Every fenced ```bash / ```python block of README.md and docs/*.md runs as a test of its own, its id the
file and the fence's line (``docs/cluster.md:10``).

How a block runs (so that it runs as written, on a CI machine, touching nothing outside a temporary dir):
- In a fresh temporary directory (the block's working directory); an ``--input X`` it names that does not
  exist there is written as a small prompts file (a glob ``'shards/*.jsonl'`` gets two shards).
- Hub ids (``llm-blender/PairRM``, ``llm-blender/gen_fuser_3b``, ``OpenAssistant/reward-model-...``) go to
  the loopback hub stand-in (tests/model/hub_server.py) serving generated tiny checkpoints under those ids;
  ``HF_HOME`` is a temporary directory, ``demo:`` checkpoints go to this run's ``BLENDER_FAST_CACHE``.
- A ``blender-fast serve`` line is started by the test on a port it picks (``--port`` is replaced, and
  ``127.0.0.1:8000`` / ``localhost:8000`` in the block point there), waited for (its "ready" line, bounded)
  and stopped at the end (SIGTERM); a block that talks to ``:8000`` without a serve line of its own uses
  the last serve line above it in the same file. One server runs at a time.
- bash runs with ``set -euo pipefail`` and curl with ``--fail-with-body``: every command must succeed. A
  comment holding JSON right after a command (``# {"ranks": [1, 3, 2]}``) is that command's expected
  output: the answer must have the same keys, list lengths and value types (the values themselves come
  from random weights here).
- README.md's blocks must leave only git-ignored files behind (they are run from a clone's root).

A block that cannot run on a CI machine carries a marker in the doc source on the line above its fence:
  <!-- doc-test: parse-only: REASON -->        only checked to parse (bash -n, compile())
  <!-- doc-test: without-install: REASON -->   its pip lines are checked to parse, then left out (the
                                               environment under test is already installed)
  <!-- doc-test: continues: REASON -->         python: runs after the python block above it (its names)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, STRICT, require

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGS = ("bash", "python")
MARKER = re.compile(r"^<!--\s*doc-test:\s*([a-z-]+)\s*:\s*(.*?)\s*-->\s*$")
MARKER_KINDS = ("parse-only", "without-install", "continues")
PAIRRM, BACKBONE = "llm-blender/PairRM", "microsoft/deberta-v3-large"
FUSER, REWARD_MODEL = "llm-blender/gen_fuser_3b", "OpenAssistant/reward-model-deberta-v3-large-v2"
PROMPTS = [{"instruction": "", "input": "What is the capital of France?",
            "candidates": ["Paris.", "Lyon.", "The capital of France is Paris."]},
           {"instruction": "Answer briefly.", "input": "Name a prime number.",
            "candidates": ["Seven.", "Nine.", "Two is the smallest prime."]}]
READY_S = 240.0  # a server's start (hub download, export) on a busy 2-core machine
BLOCK_S = 480.0  # one block, end to end


@dataclass(frozen=True)
class Block:
    file: str     # relative to the repository root
    line: int     # the opening fence, 1-based
    lang: str
    text: str
    marker: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = path.relative_to(REPO).as_posix()
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang = lines[i][3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if lang in LANGS:
            above = i - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            m = MARKER.match(lines[above].strip()) if above >= 0 else None
            blocks.append(Block(rel, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                                m.group(1) if m else None, m.group(2) if m else ""))
        i = end + 1
    return blocks


BLOCKS = [b for path in DOC_FILES for b in doc_blocks(path)]


def test_blocks_found():
    assert len(BLOCKS) >= 25 and len({b.id for b in BLOCKS}) == len(BLOCKS)
    assert any(b.file == "README.md" for b in BLOCKS) and any(b.file == "docs/cluster.md" for b in BLOCKS)


def test_markers_are_known_and_attached():
    """A marker names a known kind and a reason, and sits right above a fence (else it marks nothing)."""
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if "doc-test:" not in line:
                continue
            where = f"{path.relative_to(REPO)}:{n + 1}"
            m = MARKER.match(line.strip())
            assert m and m.group(1) in MARKER_KINDS and len(m.group(2)) > 10, f"{where}: bad marker {line!r}"
            nxt = next((x for x in lines[n + 1:] if x.strip()), "")
            assert re.match(r"```(bash|python)\s*$", nxt), f"{where}: a marker not right above a bash/python fence"
            if m.group(1) == "continues":
                assert nxt.startswith("```python"), f"{where}: only python blocks continue"


def code_lines(text: str) -> list[str]:
    """The lines of python code, without comments and indentation (an excerpt may shorten the comments)."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def test_excerpts_match_their_source():
    """A parse-only block marked 'an excerpt of PATH' holds only code lines that PATH has (it said
    `model: str = "default"` where steps.py has `model: str = DEFAULT_MODEL`)."""
    excerpts = [b for b in BLOCKS if b.marker == "parse-only" and b.reason.startswith("an excerpt of ")]
    assert excerpts
    for block in excerpts:
        source = REPO / block.reason[len("an excerpt of "):].split(",")[0].split()[0]
        assert source.is_file(), f"{block.id}: the excerpt's source {source} does not exist"
        have = set(code_lines(source.read_text(encoding="utf-8")))
        missing = [line for line in code_lines(block.text) if line not in have]
        assert not missing, f"{block.id}: not in {source.relative_to(REPO)}: {missing}"


# -- parsing --------------------------------------------------------------------------------------------

def python_source(block: Block) -> str:
    """The block's code; a doctest-style block (>>> / ...) gives its input lines."""
    if not block.text.lstrip().startswith(">>>"):
        return block.text
    return "".join(line[4:] + "\n" for line in block.text.splitlines() if line.startswith((">>> ", "... ")))


def check_parses(block: Block) -> None:
    if block.lang == "python":
        compile(python_source(block), block.id, "exec")
    else:
        r = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{block.id} does not parse: {r.stderr}"


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.endswith("\\"):
            cur += line[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


PIP = re.compile(r"^\s*(python3? -m )?pip3? (install|download)\b")
SERVE = re.compile(r"^\s*blender-fast serve\b")
PORT_REF = re.compile(r"\b(127\.0\.0\.1|localhost):8000\b")


def expected_json(line: str):
    """The JSON a '# {...}' / '# [...]' comment shows as a command's answer, else None."""
    m = re.match(r"^\s*#\s*([\[{].*)$", line)
    if not m:
        return None
    try:
        return json.JSONDecoder().raw_decode(m.group(1))[0]
    except ValueError:
        return None


def same_shape(expected, actual, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{where}: {actual!r} vs {expected!r}"
        for k in expected:
            same_shape(expected[k], actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r} vs {expected!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            same_shape(e, a, f"{where}[{i}]")
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert type(actual) is type(expected), f"{where}: {actual!r} vs {expected!r}"
    else:  # a number: ints stay ints (ranks, indices, counts); a float may print as an int
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r}"
        if isinstance(expected, int):
            assert isinstance(actual, int), f"{where}: {actual!r} is not an int like {expected!r}"


# -- the environment the blocks run in ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `blender-fast serve` command line started on a port of ours; its stderr is collected."""

    def __init__(self, command: str, env: dict, cwd: Path):
        self.command, self.port = command, free_port()
        line = re.sub(r"\s--port\s+\S+", "", command)
        line = SERVE.sub(lambda m: f"{m.group(0)} --port {self.port}", line, count=1)
        self.proc = subprocess.Popen(["bash", "-c", "exec " + line.strip()], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log: list[str] = []
        self.ready, self.seen_ready = threading.Event(), False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ready.wait(READY_S)
        if not (self.seen_ready and self._accepts(30.0)):
            self.stop()
            pytest.fail(f"`{command}` did not get ready in {READY_S:.0f}s:\n" + "".join(self.log[-40:]))

    def _accepts(self, wait_s: float) -> bool:
        # The "ready" line can come before uvicorn listens on the bound socket (the warm-up runs beside
        # uvicorn's start): a quick client is refused. Wait for a connection to be accepted, bounded.
        end = time.monotonic() + wait_s
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if "ready after" in line:
                self.seen_ready = True
                self.ready.set()
        self.ready.set()  # it exited (or closed stderr): the waiter stops waiting

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def hub_repos(tiny_checkpoint, tiny_reward_model, tmp_path_factory):
    """PairRM (naming its backbone by hub id, as the real one does), its backbone, the fuser (.bin only,
    as the real one) and OpenAssistant's reward model, all generated tiny checkpoints."""
    require("torch")
    from tests.model.hub_server import repo_from_dir

    work = tmp_path_factory.mktemp("dochub")
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model_name"] = BACKBONE
    (work / "config.json").write_text(json.dumps(config, indent=2))
    repos = {PAIRRM: repo_from_dir(tiny_checkpoint, exclude=("blender_fast.json",),
                                   extra={"config.json": work / "config.json",
                                          "ranker_config.json": work / "config.json"}),
             BACKBONE: repo_from_dir(tiny_checkpoint / "backbone"),
             REWARD_MODEL: repo_from_dir(tiny_reward_model, exclude=("blender_fast.json",))}
    if os.environ.get("BLENDER_FAST_EXPECT_TRANSFORMERS") != "5":  # the fuser generator needs transformers 4
        import torch
        from safetensors.torch import load_file

        from blender_fast.synthetic import make_fuser_checkpoint

        fuser = make_fuser_checkpoint(work / "fuser", shape="tiny", seed=0)
        torch.save(load_file(str(fuser / "model.safetensors")), work / "pytorch_model.bin")
        repos[FUSER] = repo_from_dir(fuser, exclude=("blender_fast.json", "model.safetensors"),
                                     extra={"pytorch_model.bin": work / "pytorch_model.bin"})
    return repos


@pytest.fixture(scope="module")
def doc_env(hub_repos, tmp_path_factory):
    """The environment every block runs in, with the hub stand-in up; the one server of the moment is
    kept in ``servers`` and stopped when another is needed and at the end."""
    from tests.model.hub_server import HubServer

    with HubServer(hub_repos) as hub:
        home = tmp_path_factory.mktemp("hf_home")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
               "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "10",
               "HF_HUB_DOWNLOAD_TIMEOUT": "10", "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        for name in ("HF_HUB_CACHE", "HF_TOKEN", "TRANSFORMERS_CACHE"):
            env.pop(name, None)
        state = {"env": env, "server": None, "serve_cwd": tmp_path_factory.mktemp("serve")}
        try:
            yield state
        finally:
            if state["server"] is not None:
                state["server"].stop()


def server_for(state: dict, command: str) -> Server:
    current = state["server"]
    if current is not None and current.command == command and current.proc.poll() is None:
        return current
    if current is not None:
        current.stop()
    state["server"] = None
    state["server"] = Server(command, state["env"], state["serve_cwd"])
    return state["server"]


def serve_command(block: Block) -> str | None:
    """The block's own serve line, else (when it talks to :8000) the last one above it in its file."""
    own = [line for line in logical_lines(block.text) if SERVE.match(line)]
    if own:
        return own[0]
    if not PORT_REF.search(block.text):
        return None
    above = [line for b in BLOCKS if b.file == block.file and b.line < block.line and b.lang == "bash"
             for line in logical_lines(b.text) if SERVE.match(line)]
    assert above, f"{block.id} talks to 127.0.0.1:8000 but no serve line precedes it in {block.file}"
    return above[-1]


def write_inputs(text: str, cwd: Path) -> None:
    for m in re.finditer(r"--input\s+(?:'([^']+)'|\"([^\"]+)\"|(\S+))", text):
        name = next(g for g in m.groups() if g)
        if name.startswith(("/", "$", "-")) or (cwd / name).exists():
            continue
        targets = [name.replace("*", f"part-{k}") for k in range(2)] if "*" in name else [name]
        for k, target in enumerate(targets):
            (cwd / target).parent.mkdir(parents=True, exist_ok=True)
            (cwd / target).write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[k::len(targets)]))


def previous_python(block: Block) -> Block:
    above = [b for b in BLOCKS if b.file == block.file and b.lang == "python" and b.line < block.line]
    assert above, f"{block.id} continues, but no python block precedes it"
    return above[-1]


def python_chain(block: Block) -> str:
    code = python_source(block)
    if block.marker == "continues":
        code = python_chain(previous_python(block)) + "\n" + code
    return code


def run_block(block: Block, state: dict, cwd: Path) -> str:
    serve = serve_command(block)
    port = server_for(state, serve).port if serve else None
    point = (lambda s: PORT_REF.sub(f"127.0.0.1:{port}", s)) if port else (lambda s: s)
    if block.lang == "python":
        script = cwd.parent / "block.py"
        script.write_text(point(python_chain(block)))
        cmd = [sys.executable, str(script)]
        expectations: list = []
    else:
        lines, expectations = [], []
        for line in logical_lines(block.text):
            if SERVE.match(line) or (block.marker == "without-install" and PIP.match(line)):
                continue
            expected = expected_json(line)
            if expected is not None:
                expectations.append(expected)
                line = f"printf '\\n@@EXPECT {len(expectations) - 1}@@\\n'"
            lines.append(point(line))
        assert not any(PIP.match(line) for line in lines), f"{block.id} installs packages: mark it"
        script = cwd.parent / "block.sh"
        script.write_text("set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 300 \"$@\"; }\n"
                          + "\n".join(lines) + "\n")
        cmd = ["bash", str(script)]
    try:
        r = subprocess.run(cmd, cwd=cwd, env=state["env"], capture_output=True, text=True, timeout=BLOCK_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.id} ran past {BLOCK_S:.0f}s: {e}")
    server_log = (f"(exit code {state['server'].proc.poll()})\n" + "".join(state["server"].log[-30:])) if serve else ""
    assert r.returncode == 0, (f"{block.id} failed (rc {r.returncode}):\n--- script\n{script.read_text()}\n--- stdout\n{r.stdout[-3000:]}\n"
                               f"--- stderr\n{r.stderr[-5000:]}\n--- server\n{server_log}")
    chunks = re.split(r"\n?@@EXPECT \d+@@\n", r.stdout)
    for n, expected in enumerate(expectations):
        answer = chunks[n].strip().splitlines()[-1] if chunks[n].strip() else ""
        try:
            actual = json.loads(answer)
        except ValueError:
            pytest.fail(f"{block.id}: expected JSON like {expected!r} from the command before it, got {answer!r}")
        same_shape(expected, actual, f"{block.id} answer {n}")
    return r.stdout


def git_ignored(name: str) -> bool:
    r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", "--", name],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def block_param(block: Block):
    marks = [] if block.marker == "parse-only" else [pytest.mark.slow]
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [block_param(b) for b in BLOCKS])
def test_doc_block(block: Block, request, tmp_path):
    check_parses(block)
    if block.marker == "parse-only":
        return
    if shutil.which("curl") is None and "curl " in block.text:
        (pytest.fail if STRICT else pytest.skip)("curl is not installed")
    if "cohere" in block.text:
        require("cohere")
    if "--ray" in block.text or "import ray" in block.text:
        require("ray")
    state = request.getfixturevalue("doc_env")
    code = python_chain(block) if block.lang == "python" else block.text
    if FUSER in code and FUSER not in request.getfixturevalue("hub_repos"):
        pytest.skip("no generated fuser under transformers 5 (its generator needs transformers 4)")
    cwd = tmp_path / "work"
    cwd.mkdir()
    write_inputs(block.text, cwd)
    before = {p.name for p in cwd.iterdir()}
    run_block(block, state, cwd)
    if block == BLOCKS[0]:  # the README's first commands, run in a clone's root: what they write is git-ignored
        left = [p.name + ("/" if p.is_dir() else "") for p in cwd.iterdir() if p.name not in before]
        assert not [name for name in left if not git_ignored(name)], f"{block.id} leaves untracked files: {left}"


# -- prose and --help that must read the same ----------------------------------------------------------------

def cli_help(capsys, *args: str, raw: bool = False) -> str:
    """`blender-fast ARGS --help` as printed; unless raw, on one line (argparse's wrapping undone)."""
    from blender_fast.cli import main

    with pytest.raises(SystemExit):
        main([*args, "--help"])
    out = capsys.readouterr().out
    return out if raw else re.sub(r"\s+", " ", out)


def test_cli_md_and_readme_read_as_help_does(capsys):
    """Every subcommand has a row in docs/cli.md; every --strategy choice and make-checkpoint's shapes are
    written as --help writes them, in docs/cli.md and the README."""
    cli_md = (REPO / "docs" / "cli.md").read_text(encoding="utf-8").replace("\\|", "|")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^    ([a-z][a-z-]+)", cli_help(capsys, raw=True), flags=re.M)
    assert {"rank", "fuse", "export", "make-checkpoint", "serve"} <= set(commands)
    for command in commands:
        assert f"`blender-fast {command} " in cli_md, f"docs/cli.md has no row for `blender-fast {command}`"
    strategies = re.search(r"--strategy \{([a-z_,]+)\}", cli_help(capsys, "rank")).group(1).split(",")
    assert "adaptive" in strategies
    for text, name in ((cli_md, "docs/cli.md"), (readme, "README.md")):
        for strategy in strategies:
            assert f"`{strategy}`" in text or f"|{strategy}" in text, f"{name} does not name --strategy {strategy}"
    shapes = re.search(r"--shape SHAPE (ranker: \S+); (fuser: \S+?) ", cli_help(capsys, "make-checkpoint"))
    assert shapes, "make-checkpoint --help no longer lists its shapes: update this test and the docs"
    for text, name in ((cli_md, "docs/cli.md"), (readme, "README.md")):
        for part in shapes.groups():
            assert part in text, f"{name} does not say {part!r} as make-checkpoint --help does"
    for option in ("--budget", "--resume", "--top-k", "--fuser", "--ray"):
        assert option in cli_md
    assert "--model DIR" not in cli_md and "llm-blender/PairRM" in cli_md and "demo:SHAPE" in cli_md


def test_cli_md_names_only_options_that_exist(capsys):
    """Every --option docs/cli.md writes is one some subcommand's --help lists (none left from an older CLI)."""
    cli_md = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = re.findall(r"^    ([a-z][a-z-]+)", cli_help(capsys, raw=True), flags=re.M)
    known = {o for c in commands for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cli_help(capsys, c))}
    written = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cli_md))
    assert written and not written - known, f"docs/cli.md names options no --help lists: {sorted(written - known)}"


# Request fields of the rerank routes written as dotted names (`blender_fast.budget`), not modules.
REQUEST_FIELDS = {"blender_fast.budget", "blender_fast.source_maxlength", "blender_fast.candidate_maxlength"}


def test_dotted_names_in_the_docs_import():
    """Every `blender_fast.a.b` the README and docs/ name imports (a module, or a name in one): moved
    modules (serve.app's start, cluster.records, synthetic.ranker, ...) are named by their new homes.
    CHANGELOG.md names old paths on purpose and is not read here."""
    import importlib

    missing = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        # `blender_fast.json` is the generated checkpoint's manifest, a file name, not an import path.
        names = set(re.findall(r"(?<![\w.])blender_fast(?:\.[A-Za-z_]\w*)+", text)) - REQUEST_FIELDS
        for name in sorted(n for n in names if not n.endswith((".json", ".py", ".md"))):
            parts, obj = name.split("."), None
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ImportError:
                    continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing, missing


def test_install_lines_keep_one_editable_install():
    """A later install line (the serve or ray extra) must not replace the test command's editable install
    with a copy: every line that installs this project does it with -e, from the clone's root."""
    found = 0
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"pip3? install\b[^`\n]*?\s(-e\s+)?\"\.(\[[^\]]*\])?\"", line):
                found += 1
                assert m.group(1), f"{path.relative_to(REPO)}:{n} installs the project without -e: {line.strip()}"
    assert found >= 6


def test_hub_ids_not_download_by_hand():
    """install.md, fusion.md: the hub ids work where a directory does (no 'download it yourself')."""
    install = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
    assert "yourself" not in install and "--model llm-blender/PairRM" in install
    fusion = (REPO / "docs" / "fusion.md").read_text(encoding="utf-8")
    assert 'Fuser.from_pretrained("llm-blender/gen_fuser_3b")' in fusion


@pytest.mark.slow
def test_blender_progress_bar_has_a_total(tiny_checkpoint, capsys):
    """Blender().rank's bar reads 'Ranking: 100%|...| 6/6' (it read 'Ranking: 6pair [...]': no total, no ETA)."""
    from blender_fast import Blender

    blender = Blender()
    blender.loadranker(str(tiny_checkpoint))
    blender.rank(["What is 2+2?"], [["4", "five", "four"]])
    err = capsys.readouterr().err
    assert "Ranking" in err and "6/6" in err, err


def test_benchmarks_readme_says_when_something_is_downloaded():
    """issue 28 item 10: benchmarks/README.md said "nothing is ever downloaded", which holds only without
    --model (a hub id given to --model is downloaded once)."""
    text = re.sub(r"\s+", " ", (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8"))
    assert "nothing is ever downloaded" not in text.lower()
    assert "Without `--model` nothing is downloaded; a hub id given to `--model` is downloaded once" in text
