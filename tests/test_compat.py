"""Which transformers this run uses. CI runs the tests under transformers 4 (the reference needs it), then
the engine tests again under 5; this makes sure each run really is on the version it claims."""
import os

import pytest


def test_expected_transformers_major_version():
    want = os.environ.get("BLENDER_FAST_EXPECT_TRANSFORMERS")
    if not want:
        pytest.skip("BLENDER_FAST_EXPECT_TRANSFORMERS not set (CI sets it)")
    import transformers

    assert transformers.__version__.split(".")[0] == want
