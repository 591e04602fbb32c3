"""Old import path of the output rules: they are blender_fast.jsonl.targets now (shared by every writer).
Kept so that existing imports keep working."""
from ..jsonl.targets import OutputError, OutputTarget, output_dir, output_file, write_text  # noqa: F401
