"""blender-fast benchmarks: engine vs llm-blender, selection strategies, FLOPs against the machine's
GEMM peak, and selection quality.  Run ``python -m benchmarks --help`` from the repository root.

Modules: ``common`` (data, machine info, timing and memory helpers), ``engine``, ``strategies``,
``flops``, ``quality`` (one per section of the report) and ``report`` (markdown, JSON, plots).
"""
