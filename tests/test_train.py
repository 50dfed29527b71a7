"""Training: the synthetic scene generator, the data folder's validation, the stages (tiny sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gligen_ref.train.scenes import COLOURS, SHAPES, caption, make_scene, render, write_folder
from gligen_ref.train.trainer import CHECKPOINT, Run, TrainArgs
from gligen_rt.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("scenes") / "data", 12, seed=3)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-random model in the diffusers layout: the frozen base of the gligen stage tests."""
    from gligen_ref.checkpoint import save_diffusers
    from gligen_ref.model import GLIGENModel
    from gligen_rt.core.config import tiny_random

    torch.manual_seed(0)
    return save_diffusers(GLIGENModel(tiny_random()).eval(), tmp_path_factory.mktemp("base") / "model")


# ---- scenes -------------------------------------------------------------------------------------


def test_scenes_are_deterministic_per_seed_and_index() -> None:
    a, b = make_scene(7, 42), make_scene(7, 42)
    assert a == b
    assert np.array_equal(render(a), render(b))
    assert make_scene(7, 43) != a and make_scene(8, 42) != a


def test_scenes_follow_the_documented_vocabulary() -> None:
    counts = set()
    for i in range(200):
        scene = make_scene(0, i)
        counts.add(len(scene.objects))
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == len(colours)  # one object per colour: the evaluation finds them by colour
        for o in scene.objects:
            assert o.shape in SHAPES and o.colour in COLOURS
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        image = render(scene)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert counts == {1, 2, 3, 4}
    assert caption(["red circle", "blue square"]) == "a red circle and a blue square on a grey floor"


def test_rendered_object_fills_its_box() -> None:
    scene = make_scene(0, 5)
    image = render(scene).astype(int)
    for o in scene.objects:
        mask = np.all(image == COLOURS[o.colour], axis=-1)
        ys, xs = np.nonzero(mask)
        box = (xs.min() / 128, ys.min() / 128, (xs.max() + 1) / 128, (ys.max() + 1) / 128)
        assert np.allclose(box, o.box, atol=1.5 / 128)


def test_written_folder_holds_requests(data: Path) -> None:
    info = json.loads((data / "dataset.json").read_text())
    assert info["count"] == 12 and info["shapes"] == list(SHAPES)
    req = json.loads((data / "scene_000000.json").read_text())
    assert req == make_scene(3, 0).request()
    assert (data / "scene_000000.png").is_file()


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------


def _copy(data: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data, dest))


def _bad(data: Path, tmp_path: Path, capsys, stage: str = "vae", init: Path | None = None) -> str:
    out = tmp_path / "run"
    argv = ["train", stage, "--data", str(data), "--out", str(out), "--steps", "2", "--no-progress"]
    if init is not None:
        argv += ["--init", str(init)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (out / CHECKPOINT).exists() and not (out / "model").exists()
    return err


def test_box_outside_unit_square(data: Path, tmp_path: Path, capsys) -> None:
    d = _copy(data, tmp_path / "d")
    req = json.loads((d / "scene_000001.json").read_text())
    req["objects"][0]["box"] = [0.1, 0.1, 1.3, 0.5]
    (d / "scene_000001.json").write_text(json.dumps(req))
    assert "outside [0, 1]" in _bad(d, tmp_path, capsys)


def test_not_an_image(data: Path, tmp_path: Path, capsys) -> None:
    d = _copy(data, tmp_path / "d")
    (d / "scene_000002.png").write_bytes(b"not a png at all")
    assert "not a readable image" in _bad(d, tmp_path, capsys)


def test_missing_folder(tmp_path: Path, capsys) -> None:
    assert "no such data folder" in _bad(tmp_path / "nowhere", tmp_path, capsys)


def test_out_of_vocabulary_shape(data: Path, tmp_path: Path, capsys, base_folder: Path) -> None:
    d = _copy(data, tmp_path / "d")
    req = json.loads((d / "scene_000003.json").read_text())
    colour = req["objects"][0]["phrase"].split()[0]
    req["objects"][0]["phrase"] = f"{colour} hexagon"
    (d / "scene_000003.json").write_text(json.dumps(req))
    err = _bad(d, tmp_path, capsys, stage="gligen", init=base_folder)
    assert "'hexagon' is not in the data's vocabulary" in err


def test_gligen_stage_needs_a_base(data: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):  # argparse: --init is required
        main(["train", "gligen", "--data", str(data), "--out", str(tmp_path / "run")])


# ---- the stages ---------------------------------------------------------------------------------


def _args(stage: str, data: Path, out: Path, **kw) -> TrainArgs:
    base = dict(model="tiny-random", batch=4, lr=2e-3, warmup=2, save_every=2, progress=False, crop=32)
    base.update(kw)
    return TrainArgs(stage=stage, data=data, out=out, **base)


def test_vae_loss_falls(data: Path, tmp_path: Path) -> None:
    run = Run(_args("vae", data, tmp_path / "vae", steps=16, lr=3e-3))
    run.run()
    first, last = np.mean(run.losses[:3]), np.mean(run.losses[-3:])
    assert last < 0.8 * first, run.losses
    assert (tmp_path / "vae" / "loss.png").is_file() and (tmp_path / "vae" / "model" / "unet").is_dir()


def test_gligen_stage_trains_only_fusers_and_tokenizer(data: Path, tmp_path: Path, base_folder: Path) -> None:
    from gligen_ref.checkpoint import load_checkpoint

    run = Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=3))
    assert run.params and all(".fuser." in k or k.startswith("position_net.") for k in run.params)
    assert all(float(f.alpha_attn) == 0 and float(f.alpha_dense) == 0 for f in run.model.fusers())
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.run()
    after = load_checkpoint(tmp_path / "g" / "model").model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".fuser." in k or k.startswith("position_net.") for k in changed)
    assert any(k.endswith("alpha_attn") for k in changed)  # the gates open
    assert (tmp_path / "g" / "gligen.pth").is_file()  # the original layout too


def test_init_from_a_grounding_model_trains_it_further(data: Path, tmp_path: Path, base_folder: Path) -> None:
    from gligen_ref.checkpoint import load_checkpoint

    Run(_args("gligen", data, tmp_path / "first", init=base_folder, steps=2)).run()
    first = load_checkpoint(tmp_path / "first" / "model").model.state_dict()
    fresh = Run(_args("gligen", data, tmp_path / "fresh", init=base_folder, steps=2))
    assert not fresh.continues_grounding
    more = Run(_args("gligen", data, tmp_path / "more", init=tmp_path / "first" / "model", steps=2))
    assert more.continues_grounding  # its gates are open: tokenizer and fusers kept as trained
    kept = more.model.state_dict()
    assert all(torch.equal(first[k], kept[k]) for k in first if k.startswith("position_net."))


def test_a_base_run_under_a_grounding_model_yields_a_base(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    """The base stage changes the UNet the fusers were learned on: its result grounds no more, and a
    gligen run on it starts fresh."""
    from gligen_ref.checkpoint import load_checkpoint
    from gligen_ref.train.trainer import grounding_is_trained

    Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=2)).run()
    assert grounding_is_trained(load_checkpoint(tmp_path / "g" / "model").model)
    base = Run(_args("base", data, tmp_path / "b", init=tmp_path / "g" / "model", steps=2))
    assert base.reset_grounding and not grounding_is_trained(base.model)
    base.run()
    again = load_checkpoint(tmp_path / "b" / "model").model
    assert not grounding_is_trained(again)
    assert not Run(
        _args("gligen", data, tmp_path / "g2", init=tmp_path / "b" / "model", steps=1)
    ).continues_grounding
    plain = Run(_args("base", data, tmp_path / "b2", init=base_folder, steps=1))
    assert not plain.reset_grounding


def test_grounding_from_another_model_starts_the_fusers_there(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    from gligen_ref.checkpoint import load_checkpoint
    from gligen_rt.core.errors import DataError

    Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=2)).run()
    donor = load_checkpoint(tmp_path / "g" / "model").model.state_dict()
    run = Run(
        _args(
            "gligen", data, tmp_path / "w", init=base_folder, steps=1, grounding_from=tmp_path / "g" / "model"
        )
    )
    assert run.continues_grounding  # the donor's tokenizer is kept, not re-initialised
    own = run.model.state_dict()
    grounding = [k for k in donor if ".fuser." in k or k.startswith("position_net.")]
    assert grounding and all(torch.equal(donor[k].float(), own[k]) for k in grounding)
    base = load_checkpoint(base_folder).model.state_dict()
    assert all(
        torch.equal(base[k], own[k])
        for k in base
        if k.startswith(("unet.", "text_encoder.")) and k not in grounding
    )
    with pytest.raises(DataError, match="a base, not a GLIGEN model"):
        Run(_args("gligen", data, tmp_path / "x", init=base_folder, steps=1, grounding_from=base_folder))
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_fuser_init_block_copies_each_blocks_attention_and_keeps_the_output(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    from gligen_ref.model import transformer_blocks

    run = Run(_args("gligen", data, tmp_path / "b", init=base_folder, steps=1, fuser_init="block"))
    blocks = transformer_blocks(run.model.unet)
    for block in blocks:
        f = block.fuser
        for mine, theirs in (
            (f.attn, block.attn1),
            (f.ff, block.ff),
            (f.norm1, block.norm1),
            (f.norm2, block.norm3),
        ):
            ours = mine.state_dict()
            assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.items())
        assert float(f.alpha_attn) == 0.0 and float(f.alpha_dense) == 0.0  # the base's output is unchanged
    fresh = Run(_args("gligen", data, tmp_path / "f", init=base_folder, steps=1))
    assert not torch.equal(
        transformer_blocks(fresh.model.unet)[0].fuser.attn.to_q.weight, blocks[0].attn1.to_q.weight
    )
    run.run()  # and it trains
    assert math.isfinite(run.losses[-1])


def test_resume_is_bit_exact(data: Path, tmp_path: Path, base_folder: Path) -> None:
    straight = Run(_args("gligen", data, tmp_path / "a", init=base_folder, steps=4))
    straight.run()
    interrupted = Run(_args("gligen", data, tmp_path / "b", init=base_folder, steps=4))
    interrupted.train_step()
    interrupted.train_step()
    interrupted.save_checkpoint()
    del interrupted
    resumed = Run(_args("gligen", data, tmp_path / "b", init=base_folder, steps=4, resume=True))
    assert resumed.step == 2
    resumed.run()
    assert resumed.losses == straight.losses
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


def test_frozen_text_computed_once_trains_as_text_encoded_per_step(
    data: Path, tmp_path: Path, base_folder: Path, monkeypatch
) -> None:
    import gligen_ref.train.trainer as trainer

    cached = Run(_args("gligen", data, tmp_path / "a", init=base_folder, steps=3, drop_caption=0.5))
    assert cached.caption_ctx is not None and len(cached.caption_ctx) == len(cached.captions)
    monkeypatch.setattr(trainer, "CAPTION_CACHE_BYTES", 0)  # contexts too large to keep: per step
    per_step = Run(_args("gligen", data, tmp_path / "b", init=base_folder, steps=3, drop_caption=0.5))
    assert per_step.caption_ctx is None
    for _ in range(3):
        a, b = cached.train_step(), per_step.train_step()
        assert a == pytest.approx(b, rel=1e-5)


def test_an_existing_run_needs_resume(data: Path, tmp_path: Path, base_folder: Path) -> None:
    from gligen_rt.core.errors import DataError

    Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=2)).run()
    with pytest.raises(DataError, match="--resume"):
        Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=2))


def test_dense_after_keeps_the_feed_forward_gates_closed(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    run = Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=3, dense_after=3, high_noise=1.0))
    for _ in range(3):
        run.train_step()
    assert all(float(f.alpha_dense) == 0 for f in run.model.fusers())
    assert any(float(f.alpha_attn) != 0 for f in run.model.fusers())
    run.train_step()  # past --dense-after: the feed-forward gates learn too
    assert any(float(f.alpha_dense) != 0 for f in run.model.fusers())


def test_high_noise_draws_timesteps_from_the_upper_half(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    import gligen_ref.train.trainer as trainer

    seen: list[torch.Tensor] = []
    run = Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=2, high_noise=1.0, batch=8))
    original = run.model.unet_grounded

    def spy(zt, ts, *rest):
        seen.append(ts.clone())
        return original(zt, ts, *rest)

    run.model.unet_grounded = spy
    run.train_step()
    assert seen and bool((seen[0] >= trainer.NUM_TRAIN_TIMESTEPS // 2).all())


@pytest.mark.parametrize("flag", ["--high-noise", "--drop-caption", "--drop-grounding"])
def test_a_share_outside_zero_one_is_refused(
    flag: str, data: Path, tmp_path: Path, base_folder: Path, capsys
) -> None:
    out = tmp_path / "g"
    code = main(
        ["train", "gligen", "--data", str(data), "--init", str(base_folder), "--out", str(out), flag, "1.5"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err
    assert not (out / CHECKPOINT).exists()


def test_grounding_signal_is_zero_with_closed_gates_and_logged_per_checkpoint(
    data: Path, tmp_path: Path, base_folder: Path
) -> None:
    run = Run(_args("gligen", data, tmp_path / "g", init=base_folder, steps=4, lr=1e-2, gate_lr_scale=10))
    closed = run.grounding_signal()
    assert closed["phrase_gain"] == 0.0 and closed["layout_gain"] == 0.0  # tanh(0) gates: fusers inert
    run.run()
    lines = [json.loads(x) for x in (tmp_path / "g" / "grounding.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    assert lines[-1]["phrase_gain"] != 0.0  # open gates: the phrases change the prediction
    record = json.loads((tmp_path / "g" / "run.json").read_text())
    assert record["grounding_signal"] == lines[-1]


def test_package_orders_the_continuations_of_each_stage(tmp_path: Path) -> None:
    from gligen_ref.train.package import _runs
    from gligen_rt.core.errors import DataError

    for name in ("vae", "base", "base-2", "gligen", "gligen-10", "gligen-2", "gligen-old", "vae-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"name": name}))
    assert list(_runs(tmp_path)) == ["vae", "base", "base-2", "gligen", "gligen-2", "gligen-10"]
    (tmp_path / "gligen-3").mkdir()  # a continuation still running: no run.json yet
    with pytest.raises(DataError, match="gligen-3"):
        _runs(tmp_path)
