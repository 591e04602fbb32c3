"""Which pairs to compare, step by step: strategies, budgets and llm-blender's aggregation."""
