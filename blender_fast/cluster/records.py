"""Old import path of the prompt reader: it is blender_fast.jsonl.prompts now (shared by the CLI and the
Ray job). Kept so that existing imports keep working."""
from ..jsonl.prompts import (RESULT_FIELDS, InputFile, Prompt, as_blender_args, decode_record,  # noqa: F401
                             example_prompts_path, input_file, iter_prompts, parse_prompt, read_prompts,
                             record_digest)
