"""GenFuser: fuse the top-ranked candidates of a prompt into one answer.

A drop-in for llm-blender 0.0.2's ``Blender.loadfuser(...)`` + ``Blender.fuse(...)``:

* ``build_fuser_inputs`` builds exactly the model-input strings that llm-blender's
  ``GenFuserDataset`` builds (same template, same per-candidate truncation).
* ``Fuser.fuse`` tokenizes and generates with llm-blender's settings (input
  ``max_length`` 1024, ``add_special_tokens=False``, ``num_beams=4``,
  ``max_new_tokens=candidate_maxlength``), so with the same checkpoint, dtype and
  deterministic decoding the outputs are the same token for token.

What differs from llm-blender, on purpose:

* the caller's lists are never modified (llm-blender's dataset writes the
  truncated candidates back into the caller's ``candidates`` lists);
* batches are formed from prompts of similar token length (padding stays small);
  results still come back in input order;
* bad input fails early with a ``ValueError`` that names the prompt index;
* an optional ONNX Runtime backend (``backend="onnx"``, needs ``optimum-onnx``).

torch / transformers / optimum are imported lazily, so that importing this module
costs nothing for users of the ranker only.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..model import cache
from ..options import (BACKENDS, FUSER_PRECISIONS, check_choice, check_count, check_optional_count,
                       resolve_device)

# llm-blender's GenFuserConfig defaults.
DEFAULT_MAX_LENGTH = 1024
DEFAULT_CANDIDATE_MAXLENGTH = 128

# Files a local checkpoint must have. Weights: any one of these (sharded checkpoints
# come with an index file).
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# A T5 tokenizer is loadable from either the fast tokenizer file or the
# sentencepiece model.
TOKENIZER_FILE_NAMES = ("tokenizer.json", "spiece.model")

ONNX_EXPORT_TASK = "text2text-generation-with-past"
FUSER_EXPORT_MANIFEST = "blender_fast_export.json"
# llm-blender's torch_dtype spellings (Blender.loadfuser passes them as dtype=) -> our precisions.
_DTYPE_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                     "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}

_INSTALL_HINT = 'install blender-fast[export] (pip install "blender-fast[export]")'
_ONNX_INSTALL_HINT = (
    "the ONNX fuser backend needs optimum-onnx: "
    "pip install -c constraints.txt optimum-onnx  (keep your torch version pinned)"
)


# ---------------------------------------------------------------------------
# Model inputs
# ---------------------------------------------------------------------------


def truncate_candidate(tokenizer, text: str, candidate_maxlength: Optional[int]) -> str:
    """llm-blender's per-candidate truncation: keep the first ``candidate_maxlength``
    tokens (no special tokens added), decode them and append ``"..."``."""
    if candidate_maxlength is None:
        return text
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) > candidate_maxlength:
        return tokenizer.decode(ids[:candidate_maxlength]) + "..."
    return text


def build_fuser_input(
    tokenizer,
    input_text: str,
    candidates: Sequence[str],
    instruction: str = "",
    candidate_maxlength: Optional[int] = DEFAULT_CANDIDATE_MAXLENGTH,
) -> str:
    """The GenFuser model-input string for one prompt (see ``build_fuser_inputs``)."""
    # New list: llm-blender truncates in place, i.e. overwrites the caller's
    # candidates (a second fuse() call on the same lists then sees "...texts").
    truncated = [truncate_candidate(tokenizer, str(c), candidate_maxlength) for c in candidates]
    candidates_part = "</s>".join(
        f"Candidate {i}: <extra_id_{i}>:" + c for i, c in enumerate(truncated)
    )
    fuse_input = "</s>".join(["Instruction: " + instruction, "Input: " + input_text, candidates_part])
    return fuse_input + "</s>Summarize candidates into a better one for the given instruction:"


def build_fuser_inputs(
    tokenizer,
    inputs: Sequence[str],
    candidates: Sequence[Sequence[str]],
    instructions: Optional[Sequence[str]] = None,
    candidate_maxlength: Optional[int] = DEFAULT_CANDIDATE_MAXLENGTH,
) -> list[str]:
    """The exact model-input strings llm-blender 0.0.2's ``GenFuserDataset`` builds.

    Per prompt: ``"Instruction: {instruction}</s>Input: {input}</s>"`` then
    ``"Candidate {i}: <extra_id_{i}>:{candidate}"`` joined by ``"</s>"``, then
    ``"</s>Summarize candidates into a better one for the given instruction:"``.
    Each candidate longer than ``candidate_maxlength`` tokens (encoded without special
    tokens) is cut to its first ``candidate_maxlength`` tokens, decoded and given a
    trailing ``"..."``; ``candidate_maxlength=None`` turns truncation off. A missing
    instruction is the empty string, as in llm-blender.

    Unlike llm-blender, the caller's lists are left untouched.
    """
    if len(inputs) != len(candidates):
        raise ValueError(
            f"inputs and candidates must have the same length, got {len(inputs)} and {len(candidates)}"
        )
    if instructions is not None and len(instructions) != len(inputs):
        raise ValueError(
            f"inputs and instructions must have the same length, got {len(inputs)} and {len(instructions)}"
        )
    return [
        build_fuser_input(
            tokenizer,
            inputs[i],
            candidates[i],
            instruction=instructions[i] if instructions is not None else "",
            candidate_maxlength=candidate_maxlength,
        )
        for i in range(len(inputs))
    ]


def validate_fuse_arguments(inputs, candidates, instructions=None) -> None:
    """Raise ``ValueError`` / ``TypeError`` naming the first bad prompt.

    "Empty" means:
    * a prompt is empty when its input is ``""`` and its instruction is ``""`` or
      absent: there is nothing to fuse for. An empty input alone is fine when the
      instruction carries the text (the usual Alpaca/MixInstruct layout).
    * a candidate is empty when it is ``""``. Whitespace-only candidates are kept, as
      llm-blender keeps them: they are real (if poor) model outputs.
    """
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of strings, not a single string")
    if len(inputs) != len(candidates):
        raise ValueError(
            f"inputs and candidates must have the same length, got {len(inputs)} and {len(candidates)}"
        )
    if instructions is not None:
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings (or None), not a single string")
        if len(instructions) != len(inputs):
            raise ValueError(
                f"inputs and instructions must have the same length, got {len(inputs)} and {len(instructions)}"
            )
    for i, input_text in enumerate(inputs):
        instruction = instructions[i] if instructions is not None else ""
        if not isinstance(input_text, str):
            raise TypeError(f"prompt {i}: input must be a string, got {type(input_text).__name__}")
        if not isinstance(instruction, str):
            raise TypeError(f"prompt {i}: instruction must be a string, got {type(instruction).__name__}")
        if input_text == "" and instruction == "":
            raise ValueError(f"prompt {i}: input (and instruction) is an empty string")
        prompt_candidates = candidates[i]
        if isinstance(prompt_candidates, str):
            raise TypeError(f"prompt {i}: candidates must be a list of strings, not a single string")
        if len(prompt_candidates) == 0:
            raise ValueError(f"prompt {i}: candidate list is empty")
        for j, candidate in enumerate(prompt_candidates):
            if not isinstance(candidate, str):
                raise TypeError(
                    f"prompt {i}: candidate {j} must be a string, got {type(candidate).__name__}"
                )
            if candidate == "":
                raise ValueError(f"prompt {i}: candidate {j} is an empty string")


# ---------------------------------------------------------------------------
# Checkpoint checks
# ---------------------------------------------------------------------------


def check_fuser_checkpoint(path) -> Path:
    """Fail with a clear message naming the missing file, before transformers does."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"fuser checkpoint directory {str(path)!r} does not exist "
            "(a local directory, or a Hugging Face Hub id such as llm-blender/gen_fuser_3b)"
        )
    if not path.is_dir():
        raise NotADirectoryError(f"fuser checkpoint {str(path)!r} is not a directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"fuser checkpoint {str(path)!r} has no config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILE_NAMES):
        raise FileNotFoundError(
            f"fuser checkpoint {str(path)!r} has no weights file "
            f"(looked for {', '.join(WEIGHT_FILE_NAMES)})"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILE_NAMES):
        raise FileNotFoundError(
            f"fuser checkpoint {str(path)!r} has no tokenizer file "
            f"(looked for {' or '.join(TOKENIZER_FILE_NAMES)})"
        )
    return path


def fuser_directory(source, *, revision: Optional[str] = None, hub_cache_dir=None, token=None,
                    local_files_only: Optional[bool] = None) -> Path:
    """A fuser source (a directory, or a Hugging Face Hub id such as ``llm-blender/gen_fuser_3b``) as a
    checked local checkpoint directory, fetched into the HF cache if need be; nothing is loaded. The CLI
    and the server call it before the ranker loads, so a wrong --fuser is reported before any model work."""
    from ..model.hub import resolve_model_source

    path = resolve_model_source(source, kind="fuser", revision=revision, cache_dir=hub_cache_dir, token=token,
                                local_files_only=local_files_only)
    return check_fuser_checkpoint(path)


# ---------------------------------------------------------------------------
# ONNX export cache
# ---------------------------------------------------------------------------


def fuser_fingerprint(checkpoint: Path) -> str:
    """A key for everything an ONNX export of ``checkpoint`` depends on: config.json and
    the sha256 of every weight file (memoized by ``cache.weights_fingerprint``, so the
    11 GB of gen_fuser_3b are hashed once)."""
    from ..model.cache import weights_fingerprint

    digest = hashlib.sha256()
    digest.update((checkpoint / "config.json").read_bytes())
    weight_files = sorted(
        (p for p in checkpoint.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")),
        key=lambda p: p.name,
    )
    for p in weight_files:
        digest.update(p.name.encode() + b"\0" + weights_fingerprint(p).encode())
    return digest.hexdigest()[:20]


def _import_ort_seq2seq():
    try:
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from optimum.exporters.onnx import main_export
    except ImportError as e:  # optimum-onnx missing or broken
        raise ImportError(f"{_ONNX_INSTALL_HINT} ({e})") from e
    return ORTModelForSeq2SeqLM, main_export


def export_fuser_to_onnx(checkpoint, cache_dir=None, merged_decoder: bool = False) -> Path:
    """Export a seq2seq checkpoint with optimum (encoder + decoder + decoder-with-past,
    i.e. with the decoder KV cache) once, under ``cache_dir/onnx-fuser/<fingerprint>``.

    ``merged_decoder=True`` asks for one decoder graph serving both the first step and
    the cached steps (the decoder weights are then stored once instead of twice).
    """
    import importlib.metadata

    _, main_export = _import_ort_seq2seq()
    checkpoint = check_fuser_checkpoint(checkpoint)
    if merged_decoder:
        config = json.loads((checkpoint / "config.json").read_text())
        d_model, n_heads, d_kv = config.get("d_model"), config.get("num_heads"), config.get("d_kv")
        if None not in (d_model, n_heads, d_kv) and n_heads * d_kv != d_model:
            # optimum-onnx 0.1.0 sizes the first step's empty cache as d_model // num_heads
            # per head, which fails at run time for such T5s (flan-t5-small); XL is fine.
            raise ValueError(
                f"onnx_merged_decoder=True does not work for this checkpoint (num_heads*d_kv="
                f"{n_heads * d_kv} != d_model={d_model}, an optimum-onnx limitation): use the split decoders"
            )
    root = Path(cache_dir) if cache_dir is not None else cache.cache_root()
    fingerprint = fuser_fingerprint(checkpoint)
    # The exporter's version is part of the key: a new optimum may export differently.
    flavour = "merged" if merged_decoder else "split"
    exporter = importlib.metadata.version("optimum-onnx")
    out_dir = root / "onnx-fuser" / f"{fingerprint}-{flavour}-optimum-onnx{exporter}"

    def build(scratch: Path) -> None:
        from torch.jit import TracerWarning

        # optimum exports through torch's TorchScript ONNX exporter, which torch >= 2.9 flags as legacy,
        # and the tracer warns about Python control flow in transformers' T5 that optimum's export plan
        # already accounts for: warnings the user cannot act on (the ranker's export silences the same).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", TracerWarning)
            main_export(
                model_name_or_path=str(checkpoint),
                output=scratch,
                task=ONNX_EXPORT_TASK,
                do_validation=False,
                no_post_process=not merged_decoder,
                local_files_only=True,
                library_name="transformers",
            )
        if merged_decoder:
            # the exporter leaves the two unmerged decoders beside the merged one:
            # for gen_fuser_3b that is ~10 GB of disk nobody reads
            for leftover in list(scratch.glob("decoder_model.onnx*")) + list(scratch.glob("decoder_with_past_model.onnx*")):
                leftover.unlink()
        manifest = {"checkpoint": str(checkpoint), "merged_decoder": merged_decoder, "exporter": f"optimum-onnx {exporter}",
                    cache.MANIFEST_FILES_KEY: cache.record_files(scratch)}
        (scratch / FUSER_EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=1))

    # Built in a scratch dir beside the target and renamed into place: a crashed or concurrent export
    # never leaves a half-written entry, and a damaged entry (checked against its manifest) is rebuilt.
    path, _ = cache.publish_dir(out_dir, build, check_fuser_export)
    return path


def check_fuser_export(out_dir: Path) -> Optional[str]:
    """None when ``out_dir`` is a complete, intact fuser export; else what is wrong, naming the file."""
    meta, problem = cache.read_manifest(Path(out_dir) / FUSER_EXPORT_MANIFEST)
    if problem:
        return problem
    files = meta.get(cache.MANIFEST_FILES_KEY)
    if not isinstance(files, dict) or "encoder_model.onnx" not in files:
        return f"{Path(out_dir) / FUSER_EXPORT_MANIFEST} does not list encoder_model.onnx"
    return cache.verify_files(out_dir, files)


# ---------------------------------------------------------------------------
# Fuser
# ---------------------------------------------------------------------------


def _resolve_precision(precision, dtype, device: str) -> str:
    """One of FUSER_PRECISIONS. ``dtype`` is llm-blender's spelling (``torch_dtype``: "float32",
    "bfloat16", a torch.dtype), kept as an alias. None: fp32 on CPU, bf16 (llm-blender's default) on
    CUDA: on CPU bfloat16 is slow on most machines and not bitwise comparable."""
    if dtype is not None:
        name = _DTYPE_PRECISIONS.get(str(dtype))
        if name is None:
            raise ValueError(f"dtype must be one of {sorted(set(_DTYPE_PRECISIONS))[:3]} or a torch.dtype of those, got {dtype!r}")
        if precision is not None and precision != name:
            raise ValueError(f"precision={precision!r} and dtype={dtype!r} disagree; pass precision only")
        precision = name
    if precision is None:
        return "bf16" if device.startswith("cuda") else "fp32"
    return check_choice("precision", precision, FUSER_PRECISIONS)


def _torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@dataclass
class Fuser:
    """A loaded GenFuser (T5-family seq2seq) model and its tokenizer."""

    model: Any
    tokenizer: Any
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    max_length: int = DEFAULT_MAX_LENGTH
    candidate_maxlength: int = DEFAULT_CANDIDATE_MAXLENGTH
    checkpoint: Optional[Path] = None
    onnx_dir: Optional[Path] = field(default=None, repr=False)

    @classmethod
    def from_pretrained(
        cls,
        path,
        backend: str = "torch",
        device: str = "cpu",
        precision: Optional[str] = None,
        *,
        threads: Optional[int] = None,
        cache_dir=None,
        max_length: int = DEFAULT_MAX_LENGTH,
        candidate_maxlength: int = DEFAULT_CANDIDATE_MAXLENGTH,
        onnx_merged_decoder: bool = False,
        dtype=None,
        onnx_cache_dir=None,
        onnx_threads: Optional[int] = None,
        revision: Optional[str] = None,
        token=None,
        hub_cache_dir=None,
        local_files_only: Optional[bool] = None,
    ) -> "Fuser":
        """Load a local seq2seq checkpoint directory (e.g. a copy of llm-blender/gen_fuser_3b).

        Spelled like ``Ranker.from_pretrained``:
        backend: "torch" (transformers) or "onnx" (ONNX Runtime through optimum-onnx; the
            checkpoint is exported once and cached under ``cache_dir/onnx-fuser/`` (default: the
            blender-fast cache, ``$BLENDER_FAST_CACHE`` or ``~/.cache/blender_fast``), keyed by a
            hash of its config and weights).
        device: "cpu", "cuda" (or "cuda:N"), or "auto" (cuda when torch sees a GPU).
            For onnx: the CUDA execution provider.
        precision: "fp32", "fp16" or "bf16" (``options.FUSER_PRECISIONS``). None: fp32 on CPU,
            bf16 (llm-blender's default) on CUDA. The onnx backend runs fp32 only.
        threads: intra-op threads: ONNX Runtime's for onnx; for torch, ``torch.set_num_threads``
            (process-wide, as for the Ranker's torch backend). None: the runtime's choice.
        cache_dir: where exported ONNX models go (onnx backend).
        max_length: token budget of the whole fuser input (llm-blender: 1024).
        candidate_maxlength: per-candidate token budget and default max_new_tokens
            (llm-blender: 128).
        onnx_merged_decoder: one decoder graph for the first and the cached steps
            (decoder weights stored once: half the decoder's memory and disk).
        dtype, onnx_cache_dir, onnx_threads: older spellings of precision (llm-blender's
            ``torch_dtype`` values: "float32", "float16", "bfloat16" or a torch.dtype),
            cache_dir and threads; kept so existing callers keep working.
        path may also be a Hugging Face Hub id (``llm-blender/gen_fuser_3b``, ``org/name@revision``),
        resolved by model/hub.py into the HF cache (``hub_cache_dir``, ``revision``, ``token``,
        ``local_files_only`` as there).
        """
        check_choice("backend", backend, BACKENDS)
        device = resolve_device(device, "torch", device_index=True)  # "cuda:N" as given
        precision = _resolve_precision(precision, dtype, device)
        if onnx_cache_dir is not None:
            if cache_dir is not None and Path(cache_dir) != Path(onnx_cache_dir):
                raise ValueError("cache_dir and onnx_cache_dir disagree; pass cache_dir only")
            cache_dir = onnx_cache_dir
        if onnx_threads is not None:
            if threads is not None and threads != onnx_threads:
                raise ValueError("threads and onnx_threads disagree; pass threads only")
            threads = onnx_threads
        check_optional_count("threads", threads)
        checkpoint = fuser_directory(path, revision=revision, hub_cache_dir=hub_cache_dir, token=token,
                                     local_files_only=local_files_only)
        try:
            import torch  # noqa: F401  (both backends hand torch tensors to generate())
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError(f"the fuser needs torch and transformers: {_INSTALL_HINT} ({e})") from e

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        onnx_dir = None
        if backend == "torch":
            from transformers import AutoModelForSeq2SeqLM

            if threads is not None:
                torch.set_num_threads(threads)
            model = AutoModelForSeq2SeqLM.from_pretrained(
                str(checkpoint), dtype=_torch_dtype(precision), local_files_only=True
            )
            model = model.to(device).eval()
        else:
            if precision != "fp32":
                raise ValueError(f"the onnx backend runs fp32 only, got precision={precision!r}")
            ORTModelForSeq2SeqLM, _ = _import_ort_seq2seq()
            onnx_dir = export_fuser_to_onnx(checkpoint, cache_dir=cache_dir, merged_decoder=onnx_merged_decoder)
            provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
            session_options = None
            if threads is not None:
                import onnxruntime

                session_options = onnxruntime.SessionOptions()
                session_options.intra_op_num_threads = threads
            model = ORTModelForSeq2SeqLM.from_pretrained(
                str(onnx_dir),
                use_cache=True,
                use_merged=onnx_merged_decoder,
                provider=provider,
                session_options=session_options,
                local_files_only=True,
            )
        return cls(
            model=model,
            tokenizer=tokenizer,
            backend=backend,
            device=device,
            precision=precision,
            max_length=max_length,
            candidate_maxlength=candidate_maxlength,
            checkpoint=checkpoint,
            onnx_dir=onnx_dir,
        )

    def fuse(
        self,
        inputs: Sequence[str],
        candidates: Sequence[Sequence[str]],
        instructions: Optional[Sequence[str]] = None,
        batch_size: int = 4,
        progress: bool = True,
        disable_tqdm: bool = False,
        sort_by_length: bool = True,
        **generate_kwargs,
    ) -> list[str]:
        """Fuse the candidates of each prompt into one text, like llm-blender's ``fuse``.

        inputs / candidates / instructions: as llm-blender (candidates are normally the
            top-3 ranked ones; numpy arrays of strings are accepted).
        batch_size: prompts per ``generate`` call.
        progress / disable_tqdm: the tqdm bar is shown when ``progress`` and not
            ``disable_tqdm`` (both spellings exist: blender-fast's and llm-blender's).
        sort_by_length: group prompts of similar token length into a batch (less
            padding); False keeps llm-blender's batches (consecutive prompts).
        generate_kwargs: passed to ``model.generate`` over llm-blender's defaults
            ``num_beams=4, max_new_tokens=candidate_maxlength, num_return_sequences=1``;
            ``candidate_max_length=N`` sets both the per-candidate truncation and the
            default ``max_new_tokens`` (as in llm-blender).
        Returns one string per prompt, in input order; with
        ``num_return_sequences=k`` the flat list of ``k`` strings per prompt that
        llm-blender returns (prompt i's at ``[i*k:(i+1)*k]``).
        """
        import torch
        from tqdm.auto import tqdm

        batch_size = check_count("batch_size", batch_size)
        validate_fuse_arguments(inputs, candidates, instructions)
        generate_kwargs = dict(generate_kwargs)
        # llm-blender: `kwargs.pop("candidate_max_length", None) or config.candidate_maxlength`
        candidate_maxlength = generate_kwargs.pop("candidate_max_length", None) or self.candidate_maxlength
        generate_params = {
            "max_new_tokens": candidate_maxlength,
            "num_beams": 4,
            "num_return_sequences": 1,
        }
        generate_params.update(generate_kwargs)
        returns_per_prompt = int(generate_params.get("num_return_sequences") or 1)

        texts = build_fuser_inputs(
            self.tokenizer, inputs, candidates, instructions=instructions,
            candidate_maxlength=candidate_maxlength,
        )
        # Same call as llm-blender's dataset, minus padding="max_length": padding is
        # added per batch below, which is what llm-blender ends up with after it drops
        # the all-padding columns.
        encoded = self.tokenizer(
            texts, max_length=self.max_length, truncation=True, add_special_tokens=False
        )["input_ids"]

        order = list(range(len(texts)))
        if sort_by_length:
            order.sort(key=lambda i: -len(encoded[i]))  # longest first: OOM shows up at once
        pad_id = self.tokenizer.pad_token_id
        pad_left = self.tokenizer.padding_side == "left"

        outputs: list[Optional[list[str]]] = [None] * len(texts)
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="Fusing candidates", disable=disable_tqdm or not progress):
            width = max(len(encoded[i]) for i in batch)
            input_ids, attention_mask = [], []
            for i in batch:
                ids = encoded[i]
                pad = [pad_id] * (width - len(ids))
                mask = [1] * len(ids)
                input_ids.append(pad + ids if pad_left else ids + pad)
                attention_mask.append([0] * len(pad) + mask if pad_left else mask + [0] * len(pad))
            input_ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
            attention_mask = torch.tensor(attention_mask, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                output_ids = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, **generate_params
                )
            decoded = self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)
            for row, i in enumerate(batch):
                outputs[i] = decoded[row * returns_per_prompt: (row + 1) * returns_per_prompt]
        return [text for per_prompt in outputs for text in per_prompt]
