"""The control of the "plain-phase step <= 1.03x a plain SD UNet step" target, on our backends.

A plain Stable Diffusion UNet (diffusers' UNet2DConditionModel, no fusers, no position net) with the
reference model's weights (its fusers dropped), exported the plain way: ``torch.onnx.export``
(the exporter and opset our engines are exported with: export/onnx_export.py's defaults), dynamic batch and latent size as our engines have, FP16 by
the same converter as our FP16 engines. It is exported once beside the engine folders and run with
the same library calls and options as the configuration's backend (ORT session / OpenVINO compile),
on the plain phase's inputs (CFG batch 2 at the scenario's size). Our ``unet_plain`` step should not
be slower than this graph: anything beyond 3% is something left in the plain engine (fuser work,
gates, unfused attention).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gligen_rt.benchmarks.scenario import Config, Scenario

log = logging.getLogger(__name__)


def _opset() -> int:
    from gligen_rt.export.onnx_export import DEFAULT_OPSET

    return DEFAULT_OPSET


CONTROL_BACKENDS = ("ort-cpu", "openvino")


def control_path(root: Path, scenario: Scenario, precision: str) -> Path:
    """Where the control graph of a scenario lives (beside the engine folders)."""
    td = f"-td{scenario.token_downsample}" if scenario.token_downsample > 1 else ""
    name = f"sd-unet-control-{scenario.model}-seed{scenario.model_seed}-{precision}{td}.onnx"
    return root / name


def export_control(
    model: Any,
    path: Path,
    size: int,
    precision: str,
    external_data: bool | None = None,
    token_downsample: int = 1,
) -> Path:
    """Export the plain SD UNet of ``model`` (a gligen_ref GLIGENModel) to ``path`` (once).

    ``token_downsample``: the first level's keys and values pooled that much, as in our engines
    exported with it (gligen_ref/token_downsample.py).

    ``external_data``: weights in ``<path>.data`` (default: when they pass 1.8 GB, ONNX's 2 GB limit).
    """
    import torch

    from gligen_ref.token_downsample import token_downsampled
    from gligen_rt.benchmarks.machine import sd_unet_like

    if path.is_file():
        return path
    cfg = model.config
    with torch.device("meta"):
        sd = sd_unet_like(cfg)
    ours = model.state_dict()
    state = {
        k[len("unet.") :]: v
        for k, v in ours.items()
        if k.startswith("unet.") and ".fuser." not in k and not k.startswith("unet.position_net.")
    }
    conv = "sd_conv_in." if model.sd_conv_in is not None else "conv_in."
    if model.sd_conv_in is None and model.conv_in.in_channels != cfg.unet.latent_channels:
        raise ValueError(f"{cfg.key} has no 4-channel conv_in for a plain SD UNet")
    state.update({"conv_in." + k[len(conv) :]: v for k, v in ours.items() if k.startswith(conv)})
    sd.load_state_dict(state, strict=True, assign=True)

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = sd

        def forward(
            self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
        ) -> torch.Tensor:
            return self.unet(sample, timestep, encoder_hidden_states=context).sample

    lat = size // cfg.vae.downscale
    args = (
        torch.randn(2, cfg.unet.latent_channels, lat, lat),
        torch.tensor([500.0]),
        torch.randn(2, 77, cfg.context_dim),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(p.numel() for p in sd.parameters()) * 4 > 1.8e9 if external_data is None else external_data
    tic = time.perf_counter()
    opset = _opset()
    # the exporter writes one file per weight beside a large graph: export into a scratch folder,
    # then save the graph with its weights in one <name>.data file (fp16: converted on the way)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".sd-control-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        # tracing diffusers' UNet warns ~24 times about shape-dependent Python branches, each
        # harmless for this fixed graph (the exporter's own export path silences them the same way)
        plain = Plain().eval()
        with torch.no_grad(), warnings.catch_warnings(), token_downsampled(plain, token_downsample):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                plain,
                args,
                str(raw),
                input_names=["sample", "timestep", "context"],
                output_names=["eps"],
                dynamic_axes={
                    "sample": {0: "B", 2: "h", 3: "w"},
                    "context": {0: "B"},
                    "eps": {0: "B", 2: "h", 3: "w"},
                },
                opset_version=opset,
                dynamo=opset >= 23,
                external_data=big,
            )
        tmp = Path(scratch) / path.name
        if precision == "fp16":
            from gligen_rt.export.fp16 import convert_fp16

            convert_fp16(raw, tmp, external_data=big)
        else:
            import onnx

            from gligen_rt.export.fp16 import save_model

            save_model(onnx.load(str(raw), load_external_data=True), tmp, external_data=big)
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(path.name + ".data"))
        os.replace(tmp, path)  # the graph last: its presence means the pair is complete
    log.info("plain SD UNet control exported in %.0f s", time.perf_counter() - tic)
    return path


def _inputs(
    scenario: Scenario, latent_channels: int, context_dim: int, downscale: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lat = scenario.size // downscale
    return {
        "sample": rng.standard_normal((2, latent_channels, lat, lat), dtype=np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "context": rng.standard_normal((2, 77, context_dim), dtype=np.float32),
    }


def sd_unet_times(
    scenario: Scenario, config: Config, path: Path, threads: int | None, calls: int
) -> list[float]:
    """Seconds per call of the control graph on ``config``'s backend (the first call is warm-up)."""
    from gligen_rt.core.config import preset

    if config.backend not in CONTROL_BACKENDS:
        raise ValueError(
            f"no plain SD UNet control for {config.backend} (only {', '.join(CONTROL_BACKENDS)})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"the control graph {path.name} was not exported")
    cfg = preset(scenario.model, scenario.modality)
    feeds = _inputs(scenario, cfg.unet.latent_channels, cfg.context_dim, cfg.vae.downscale)
    if config.backend == "ort-cpu":
        from gligen_rt.engines.ort import make_session

        session = make_session(path, "cpu", threads=threads)

        def call() -> None:
            session.run(["eps"], feeds)
    else:
        from gligen_rt.engines.openvino import compile_model

        # INT8 builds: the FP32 control graph in BF16 (it is not quantized, so their plain step is held
        # against plain SD at BF16, not at INT8)
        hint = "bf16" if config.precision in ("bf16", "int8", "int8a") else "f32"
        compiled = compile_model(path, "CPU", hint, None, threads=threads)
        request = compiled.create_infer_request()

        def call() -> None:
            request.infer(feeds)

    times = []
    for i in range(calls + 1):
        tic = time.perf_counter()
        call()
        if i:
            times.append(time.perf_counter() - tic)
    return times
