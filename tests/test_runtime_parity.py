"""Runtime vs reference on the tiny model, same weights, seed and noise, for every modality.

ORT CPU FP32 and OpenVINO FP32 must reach PSNR >= 45 dB against gligen_ref's ReferencePipeline, and
grounding must change the output (test_runtime_support.check_case). Each engine folder is exported
once per session.
"""

from __future__ import annotations

import pytest
from test_runtime_support import CASES, case_id, check_case, write_images


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_and_grounding(tmp_path_factory: pytest.TempPathFactory, case, images) -> None:
    check_case(tmp_path_factory, case, images)
