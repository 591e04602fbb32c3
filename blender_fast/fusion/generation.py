"""Sample n candidates per prompt: llm-blender 0.0.2's ``Blender.n_generate``.

The first half of best-of-n decoding (the second half ranks the samples with
PairRM). torch is imported lazily.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..options import check_count

SAMPLING_MODES = ("top_k_sampling", "top_p_sampling", None)


def sampling_generate_kwargs(
    generate_kwargs: dict, n: int, sampling_mode: Optional[str], model_max_length: int
) -> dict:
    """The ``generate`` kwargs llm-blender's n_generate uses, as a new dict.

    top_k_sampling: do_sample, top_k (default 50), temperature (default 0.7);
    top_p_sampling: do_sample, top_p (default 1.0), temperature (default 0.7);
    None: the caller's kwargs only. Without ``max_new_tokens``, ``max_length``
    defaults to the tokenizer's ``model_max_length``. ``num_return_sequences`` is
    always ``n``.
    """
    params = dict(generate_kwargs)  # llm-blender edits its kwargs dict in place
    if sampling_mode == "top_k_sampling":
        params["do_sample"] = True
        params["top_k"] = params.get("top_k", 50)
        params["temperature"] = params.get("temperature", 0.7)
    elif sampling_mode == "top_p_sampling":
        params["do_sample"] = True
        params["top_p"] = params.get("top_p", 1.0)
        params["temperature"] = params.get("temperature", 0.7)
    elif sampling_mode is not None:
        raise ValueError(f"Unknown sampling_mode: {sampling_mode}")
    if "max_new_tokens" not in params:
        params["max_length"] = params.get("max_length", model_max_length)
    params["num_return_sequences"] = n
    # llm-blender also sets output_scores=True, only to tell decoder-only models
    # from encoder-decoder ones by the length of the scores; the model config tells
    # us that directly, and the scores' memory (steps x rows x vocab) is saved.
    # Neither choice changes what is sampled.
    params.pop("output_scores", None)
    params["return_dict_in_generate"] = True
    return params


def n_generate(
    model,
    tokenizer,
    inputs: Sequence[str],
    instructions: Optional[Sequence[str]] = None,
    n: int = 5,
    sampling_mode: Optional[str] = "top_p_sampling",
    batch_size: int = 4,
    progress: bool = True,
    disable_tqdm: bool = False,
    **generate_kwargs,
) -> list[list[str]]:
    """Generate ``n`` samples for each input, as llm-blender 0.0.2's ``Blender.n_generate``.

    model: a Hugging Face transformers causal LM or seq2seq model (anything with
        ``.generate``, ``.device`` and ``.config``). vllm models are not supported
        (llm-blender's vllm branch is left out).
    tokenizer: its tokenizer. Prompts are tokenized in batches of ``batch_size``
        with ``padding=True, truncation=True`` and the tokenizer's own padding side
        and max length, exactly as llm-blender does (so a decoder-only model wants a
        pad token, and left padding for batched sampling to be meaningful).
    inputs / instructions: the prompt is ``instruction + "\\n" + input`` when
        instructions are given, else the input.
    n: samples per input (``num_return_sequences``).
    sampling_mode: "top_p_sampling" (default top_p 1.0, temperature 0.7),
        "top_k_sampling" (default top_k 50, temperature 0.7), or None (only
        ``generate_kwargs``).
    progress / disable_tqdm: the tqdm bar is shown when ``progress`` and not ``disable_tqdm``.
    generate_kwargs: passed to ``model.generate``; the caller's dict is not changed.
        Without ``max_new_tokens``, generation stops at ``max_length`` (default
        ``tokenizer.model_max_length``) tokens, prompt included for decoder-only models.

    Returns one list of ``n`` strings per input, special tokens skipped; the prompt is
    stripped from decoder-only outputs. With the same seed (``torch.manual_seed``) the
    samples are the ones llm-blender draws.
    """
    import torch
    from tqdm.auto import tqdm

    if instructions is not None and len(inputs) != len(instructions):
        raise ValueError(
            "Number of inputs and instructions must be the same if instructions is not None "
            f"(got {len(inputs)} and {len(instructions)})"
        )
    n, batch_size = check_count("n", n), check_count("batch_size", batch_size)
    params = sampling_generate_kwargs(generate_kwargs, n, sampling_mode, tokenizer.model_max_length)

    prompts = (
        [x + "\n" + y for x, y in zip(instructions, inputs)] if instructions is not None else list(inputs)
    )
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    sampled: list[list[str]] = []
    # Same consecutive batches as llm-blender: with a fixed seed the random draws
    # depend on the batch layout.
    for start in tqdm(range(0, len(prompts), batch_size), desc="Sampling generations", disable=disable_tqdm or not progress):
        batch_prompts = prompts[start: start + batch_size]
        encodings = tokenizer(batch_prompts, return_tensors="pt", padding=True, truncation=True)
        encodings = {k: v.to(model.device) for k, v in encodings.items()}
        with torch.no_grad():
            outputs = model.generate(**encodings, **params)
        output_ids = outputs.sequences
        if not is_encoder_decoder:
            # decoder-only models return prompt + continuation
            output_ids = output_ids[:, encodings["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(output_ids, skip_special_tokens=True)
        sampled.extend(texts[i: i + n] for i in range(0, len(texts), n))
    return sampled
