"""``blender-fast`` command line: make-checkpoint, export, rank, fuse."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import BACKEND_CHOICES, PRECISION_CHOICES

DEMO_PREFIX = "demo:"
DEMO_WARNING = (
    "NOTE: ranking with a GENERATED checkpoint ({path}): random weights, so the orderings are meaningless. "
    "They only show the engine working. Point --model at a real PairRM directory (llm-blender/PairRM "
    "downloaded by you) for real rankings."
)


def demo_checkpoint(spec: str) -> Path:
    """'demo:xsmall' → a generated checkpoint in the user cache, made once."""
    from .checkpoint import cache_root
    from .make_checkpoint import make_ranker_checkpoint

    shape = spec[len(DEMO_PREFIX):] or "xsmall"
    path = cache_root() / "checkpoints" / f"demo-{shape}-seed0"
    if not (path / "config.json").is_file():
        print(f"generating a random-weight PairRM checkpoint ({shape}) in {path} ...", file=sys.stderr)
        make_ranker_checkpoint(path, shape=shape, seed=0)
    return path


def resolve_model(spec: str) -> Path:
    if spec.startswith(DEMO_PREFIX):
        path = demo_checkpoint(spec)
        print(DEMO_WARNING.format(path=path), file=sys.stderr)
        return path
    return Path(spec)


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def cmd_make_checkpoint(args) -> int:
    from .make_checkpoint import make_fuser_checkpoint, make_ranker_checkpoint

    t0 = time.perf_counter()
    if args.kind == "fuser":
        path = make_fuser_checkpoint(args.dir, shape=args.shape or "tiny", seed=args.seed)
    else:
        path = make_ranker_checkpoint(args.dir, shape=args.shape or "tiny", seed=args.seed,
                                      layout=args.layout, weights_format=args.weights_format)
    print(f"wrote {args.kind} checkpoint to {path} in {time.perf_counter() - t0:.1f}s (random weights)")
    return 0


def cmd_export(args) -> int:
    from .export import export_command

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    report = export_command(str(resolve_model(args.dir)), precision=precision, out=args.out)
    state = "cached, not re-exported" if report.cached else f"exported in {report.seconds:.1f}s"
    print(f"{report.path} ({precision}, {state}); max |ORT - torch fp32| on a sample batch = {report.max_abs_diff:.3g}")
    return 0


def _load_ranker(args):
    from .ranker import Ranker

    precision = "int8" if args.int8 else args.precision
    ranker = Ranker.from_pretrained(resolve_model(args.model), backend=args.backend, device=args.device,
                                    precision=precision, threads=args.threads)
    if "auto" in (args.backend, precision):
        d = ranker.describe()
        print(f"ranker: {d['backend']} {d['precision']} on {d['device']} ({d['cpu_model']}; {', '.join(d['isa'])}): "
              f"{d['reason']}", file=sys.stderr)
    return ranker


def _rank_chunk(ranker, args, prompts):
    """Results to add to each record of this chunk of prompts."""
    from .prompts import as_blender_args
    from .selection import ranks_from_scores

    inputs, candidates, instructions = as_blender_args(prompts)
    if args.strategy == "full":
        scores = ranker.rank(inputs, candidates, instructions, return_scores=True, policy=args.policy)
        out = []
        for s in scores:
            order = [int(i) for i in sorted(range(len(s)), key=lambda i: (-s[i], i))]
            out.append({"ranks": ranks_from_scores(s).tolist(), "scores": [float(x) for x in s],
                        "top_k": order[:args.top_k], "forward_passes": len(s) * (len(s) - 1)})
        return out
    sels = ranker.select(inputs, candidates, top_k=args.top_k, strategy=args.strategy, orders=args.orders,
                         seed=args.seed, instructions=instructions)
    return [{"top_k": list(map(int, s.top_k)), "comparisons": s.comparisons, "forward_passes": s.forward_passes,
             "steps": s.steps} for s in sels]


def cmd_rank(args) -> int:
    from tqdm.auto import tqdm

    from .prompts import example_prompts_path, read_prompts

    prompts = read_prompts(args.input or example_prompts_path(), limit=args.limit)
    for p, prompt in enumerate(prompts):
        if args.top_k > len(prompt.candidates):
            raise ValueError(f"prompt {p} has {len(prompt.candidates)} candidates, fewer than --top-k {args.top_k}")
    ranker = _load_ranker(args)
    t0 = time.perf_counter()
    out = open(args.output, "w", encoding="utf-8") if args.output != "-" else sys.stdout
    try:
        with tqdm(total=len(prompts), desc=f"Ranking ({args.strategy})", unit="prompt", disable=args.quiet) as bar:
            for _, chunk in _chunks(prompts, args.chunk):
                for prompt, result in zip(chunk, _rank_chunk(ranker, args, chunk)):
                    result["best"] = result["top_k"][0]
                    out.write(json.dumps({**prompt.record, "blender_fast": {"strategy": args.strategy, **result}},
                                         ensure_ascii=False) + "\n")
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    elapsed = time.perf_counter() - t0
    print(f"ranked {len(prompts)} prompts in {elapsed:.1f}s ({len(prompts) / elapsed:.2f} prompts/s) -> {args.output}",
          file=sys.stderr)
    return 0


def cmd_fuse(args) -> int:
    from tqdm.auto import tqdm

    from .prompts import as_blender_args, example_prompts_path, read_prompts
    from .fuser import Fuser

    prompts = read_prompts(args.input or example_prompts_path(), limit=args.limit)
    for p, prompt in enumerate(prompts):
        if len(prompt.candidates) < args.top_k:
            raise ValueError(f"prompt {p} has {len(prompt.candidates)} candidates, fewer than --top-k {args.top_k}")
    ranker = _load_ranker(args)
    fuser = Fuser.from_pretrained(args.fuser, device=args.device)
    out = open(args.output, "w", encoding="utf-8") if args.output != "-" else sys.stdout
    try:
        with tqdm(total=len(prompts), desc=f"Rank ({args.strategy}) + fuse", unit="prompt", disable=args.quiet) as bar:
            for _, chunk in _chunks(prompts, args.chunk):
                results = _rank_chunk(ranker, args, chunk)
                inputs, candidates, instructions = as_blender_args(chunk)
                top = [[c[i] for i in r["top_k"]] for c, r in zip(candidates, results)]
                fused = fuser.fuse(inputs, top, instructions, batch_size=args.batch_size, progress=False,
                                   **({"num_beams": args.num_beams} if args.num_beams else {}))
                for prompt, result, text in zip(chunk, results, fused):
                    out.write(json.dumps({**prompt.record, "blender_fast": {"strategy": args.strategy, **result},
                                          "fused": text}, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _add_ranker_options(p):
    p.add_argument("--model", "--ranker", dest="model", default="demo:xsmall",
                   help="PairRM checkpoint directory (default: a generated random-weight demo checkpoint)")
    p.add_argument("--input", help="JSON Lines prompts (default: the package's example prompts)")
    p.add_argument("--output", default="-", help="output JSON Lines ('-' = stdout)")
    p.add_argument("--backend", choices=list(BACKEND_CHOICES), default="onnx", help="auto: see --precision auto")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=list(PRECISION_CHOICES), default="fp32",
                   help="auto: the fastest variant that passed the agreement gate on this CPU (startup line says which)")
    p.add_argument("--int8", action="store_true", help="same as --precision int8 (ONNX Runtime dynamic quantization)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--strategy", choices=["full", "bubble", "tournament"], default="full")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--orders", choices=["both", "one"], default="both")
    p.add_argument("--policy", choices=["max_logits", "max_wins"], default="max_logits")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting order for bubble/tournament")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--chunk", type=int, default=64, help="prompts run together (in lockstep)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint with the real layout")
    p.add_argument("dir")
    p.add_argument("--kind", choices=["ranker", "fuser"], default="ranker")
    p.add_argument("--shape", default=None, help="ranker: tiny|xsmall|base|large; fuser: tiny|small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["llm-blender", "hf"], default="llm-blender")
    p.add_argument("--weights-format", choices=["safetensors", "bin"], default="safetensors")
    p.set_defaults(func=cmd_make_checkpoint)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (cached) and check it against torch")
    p.add_argument("dir")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--out", default=None, help="write here instead of the cache")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("rank", help="rank (or select the top-k of) each prompt's candidates")
    _add_ranker_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("fuse", help="select the top-k candidates and fuse them with a GenFuser")
    _add_ranker_options(p)
    p.add_argument("--fuser", required=True, help="fuser (seq2seq) checkpoint directory")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-beams", type=int, default=None)
    p.set_defaults(func=cmd_fuse, top_k=3)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        parser.error("--top-k must be >= 1")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"blender-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
