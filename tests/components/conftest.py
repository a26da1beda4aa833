"""Fixtures shared by the tests of several components."""

import pytest


@pytest.fixture
def lenient_topup() -> list[str]:
    """Config overrides that open every top-up filter, so the tiny preset's briefly trained generator fills it.

    Shared by the top-up tests (components/topup) and the evaluate stage's (components/evaluate), which check the
    plumbing around the filter, not the filter itself.
    """
    return [
        "topup.min_realism=0",
        "topup.max_copy_similarity=1.01",
        "topup.mask_area_factor=1000",
        "topup.min_contrast_fraction=0",
        "topup.max_draw_factor=8",
    ]
