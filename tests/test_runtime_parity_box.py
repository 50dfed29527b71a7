"""Runtime vs reference on the tiny model, same weights, seed and noise: text-box, text-image-box.

ORT CPU FP32 and OpenVINO FP32 must reach PSNR >= 45 dB against gligen_ref's ReferencePipeline, and
grounding must change the output (test_runtime_support.check_case). Each engine folder is exported
once per session; the modalities are spread over several files to keep each under 90 s.
"""

from __future__ import annotations

import pytest
from test_runtime_support import CASES, case_id, check_case, write_images

IDS = "text-box,text-image-box".split(",")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("case", [c for c in CASES if case_id(c) in IDS], ids=case_id)
def test_parity_and_grounding(tmp_path_factory: pytest.TempPathFactory, case, images) -> None:
    check_case(tmp_path_factory, case, images)
