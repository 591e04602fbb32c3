"""blender-fast benchmarks (`python -m benchmarks --help`, benchmarks/README.md): one module per section,
``common`` and ``tables`` shared, ``report`` writing results.md, results.json and the plots."""
