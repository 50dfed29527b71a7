"""Request dataclasses, validation (one-line errors) and the JSON form."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import Modality
from gligen_rt.core.request import (
    GenerationRequest,
    GroundedObject,
    Person,
    request_from_json,
    request_to_json,
    validate,
)

BOX = (0.1, 0.2, 0.5, 0.6)
KP17 = tuple((0.1 + 0.04 * j, 0.2 + 0.03 * j) for j in range(17))


@pytest.fixture()
def img(tmp_path) -> str:
    path = tmp_path / "ref.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path)
    return str(path)


def _ok(modality: Modality, inpaint: bool, img: str) -> GenerationRequest:
    """A valid request for the given model."""
    kw: dict = {"prompt": "a photo"}
    if modality is Modality.TEXT_BOX:
        kw["objects"] = (GroundedObject(BOX, "a cat"),)
    elif modality is Modality.TEXT_IMAGE_BOX:
        kw["objects"] = (GroundedObject(BOX, "a cat"), GroundedObject(BOX, image=img))
    elif modality is Modality.KEYPOINT:
        kw["persons"] = (Person(KP17),)
    else:
        kw["condition"] = img
    if inpaint:
        kw["inpaint_image"] = img
    return GenerationRequest(**kw)


@pytest.mark.parametrize(
    ("modality", "inpaint"),
    [(m, False) for m in Modality] + [(Modality.TEXT_BOX, True), (Modality.TEXT_IMAGE_BOX, True)],
)
def test_valid_requests_pass(modality, inpaint, img):
    validate(_ok(modality, inpaint, img), modality, inpaint)
    validate(_ok(modality, inpaint, img), modality.value, inpaint, max_size=512, multiple=64)


def _with(req: GenerationRequest, **kw) -> GenerationRequest:
    return dataclasses.replace(req, **kw)


def _obj(box=BOX, phrase="x", image=None) -> GroundedObject:
    return GroundedObject(box, phrase, image)


TB, TI, KP, HED, SEM = (
    Modality.TEXT_BOX,
    Modality.TEXT_IMAGE_BOX,
    Modality.KEYPOINT,
    Modality.HED,
    Modality.SEM,
)

# (id, modality, inpaint, change, validate kwargs, expected substring)
CASES = [
    (
        "box-outside",
        TB,
        False,
        lambda r, i: _with(r, objects=(_obj((0.1, 0.2, 1.2, 0.5)),)),
        {},
        "outside [0, 1]",
    ),
    ("box-negative", TB, False, lambda r, i: _with(r, objects=(_obj((-0.1, 0.2, 0.2, 0.5)),)), {}, "outside"),
    ("box-x-flipped", TB, False, lambda r, i: _with(r, objects=(_obj((0.5, 0.2, 0.4, 0.5)),)), {}, "x0 < x1"),
    ("box-y-empty", TB, False, lambda r, i: _with(r, objects=(_obj((0.1, 0.5, 0.4, 0.5)),)), {}, "y0 < y1"),
    ("box-nan", TB, False, lambda r, i: _with(r, objects=(_obj((0.1, math.nan, 0.4, 0.5)),)), {}, "NaN"),
    ("box-inf", TB, False, lambda r, i: _with(r, objects=(_obj((0.1, 0.2, math.inf, 0.5)),)), {}, "Inf"),
    ("box-3-values", TB, False, lambda r, i: _with(r, objects=(_obj((0.1, 0.2, 0.4)),)), {}, "4 numbers"),
    ("31-objects", TB, False, lambda r, i: _with(r, objects=(_obj(),) * 31), {}, "at most 30"),
    (
        "30+style",
        TI,
        False,
        lambda r, i: _with(r, objects=(_obj(),) * 30, style_image=i),
        {},
        "style image counts",
    ),
    ("9-persons", KP, False, lambda r, i: _with(r, persons=(Person(KP17),) * 9), {}, "at most 8"),
    ("16-keypoints", KP, False, lambda r, i: _with(r, persons=(Person(KP17[:16]),)), {}, "16 keypoints"),
    (
        "keypoint-nan",
        KP,
        False,
        lambda r, i: _with(r, persons=(Person(((math.nan, 0.1),) + KP17[1:]),)),
        {},
        "NaN",
    ),
    (
        "keypoint-outside",
        KP,
        False,
        lambda r, i: _with(r, persons=(Person(((1.5, 0.1),) + KP17[1:]),)),
        {},
        "outside",
    ),
    ("objects-for-keypoint", KP, False, lambda r, i: _with(r, objects=(_obj(),)), {}, "takes no boxes"),
    ("objects-for-hed", HED, False, lambda r, i: _with(r, objects=(_obj(),)), {}, "takes no boxes"),
    ("persons-for-box", TB, False, lambda r, i: _with(r, persons=(Person(KP17),)), {}, "takes no keypoints"),
    ("condition-missing", HED, False, lambda r, i: _with(r, condition=None), {}, "needs a condition"),
    ("condition-for-box", TB, False, lambda r, i: _with(r, condition=i), {}, "does not take one"),
    ("inpaint-missing", TB, True, lambda r, i: _with(r, inpaint_image=None), {}, "inpaint_image"),
    ("inpaint-not-inpaint-model", TB, False, lambda r, i: _with(r, inpaint_image=i), {}, "not an inpainting"),
    ("inpaint-no-objects", TB, True, lambda r, i: _with(r, objects=()), {}, "at least one object"),
    ("no-phrase-text-box", TB, False, lambda r, i: _with(r, objects=(_obj(phrase=None),)), {}, "no phrase"),
    (
        "empty-phrase-text-box",
        TB,
        False,
        lambda r, i: _with(r, objects=(_obj(phrase="  "),)),
        {},
        "no phrase",
    ),
    ("image-for-text-box", TB, False, lambda r, i: _with(r, objects=(_obj(image=i),)), {}, "phrases only"),
    ("neither-text-image", TI, False, lambda r, i: _with(r, objects=(_obj(phrase=None),)), {}, "neither"),
    ("style-for-text-box", TB, False, lambda r, i: _with(r, style_image=i), {}, "style_image"),
    ("beta-and-alpha", TB, False, lambda r, i: _with(r, beta=0.3, alpha_type=(0.3, 0.0, 0.7)), {}, "both"),
    ("beta-high", TB, False, lambda r, i: _with(r, beta=1.5), {}, "beta"),
    ("beta-nan", TB, False, lambda r, i: _with(r, beta=math.nan), {}, "NaN"),
    ("alpha-sum", TB, False, lambda r, i: _with(r, alpha_type=(0.5, 0.0, 0.7)), {}, "summing to 1"),
    ("alpha-inf", TB, False, lambda r, i: _with(r, alpha_type=(math.inf, 0.0, 0.7)), {}, "Inf"),
    ("steps-0", TB, False, lambda r, i: _with(r, steps=0), {}, "steps"),
    ("steps-bool", TB, False, lambda r, i: _with(r, steps=True), {}, "steps"),
    ("guidance-negative", TB, False, lambda r, i: _with(r, guidance=-1.0), {}, "negative"),
    ("guidance-nan", TB, False, lambda r, i: _with(r, guidance=math.nan), {}, "NaN"),
    ("height-not-8", TB, False, lambda r, i: _with(r, height=500), {}, "multiple of 8"),
    ("width-not-64", TB, False, lambda r, i: _with(r, width=520), {"multiple": 64}, "multiple of 64"),
    ("width-zero", TB, False, lambda r, i: _with(r, width=0), {}, "multiple"),
    ("height-too-big", TB, False, lambda r, i: _with(r, height=1024), {"max_size": 768}, "larger than 768"),
    ("sampler", TB, False, lambda r, i: _with(r, sampler="dpm"), {}, "unknown sampler"),
    ("num-images-0", TB, False, lambda r, i: _with(r, num_images=0), {}, "num_images"),
    ("feature-cache-negative", TB, False, lambda r, i: _with(r, feature_cache=-1), {}, "feature_cache"),
    ("feature-cache-float", TB, False, lambda r, i: _with(r, feature_cache=2.5), {}, "feature_cache"),
    (
        "feature-cache-grounded-negative",
        TB,
        False,
        lambda r, i: _with(r, feature_cache_grounded=-1),
        {},
        "feature_cache_grounded",
    ),
    ("seed-negative", TB, False, lambda r, i: _with(r, seed=-1), {}, "seed"),
    ("prompt-not-str", TB, False, lambda r, i: _with(r, prompt=None), {}, "prompt"),
    (
        "object-image-missing",
        TI,
        False,
        lambda r, i: _with(r, objects=(_obj(image=i + ".missing"),)),
        {},
        "does not exist",
    ),
    (
        "condition-is-folder",
        HED,
        False,
        lambda r, i: _with(r, condition=os.path.dirname(i)),
        {},
        "is not a file",
    ),
    (
        "inpaint-missing-file",
        TB,
        True,
        lambda r, i: _with(r, inpaint_image="/no/such\nfile.png"),
        {},
        "exist",
    ),
    ("style-missing-file", TI, False, lambda r, i: _with(r, style_image=i + "x"), {}, "style_image"),
    ("sem-condition-missing", SEM, False, lambda r, i: _with(r, condition=i + "x"), {}, "condition"),
]


@pytest.mark.parametrize(
    ("modality", "inpaint", "change", "kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_validation_errors_are_one_line(modality, inpaint, change, kw, expected, img):
    request = change(_ok(modality, inpaint, img), img)
    with pytest.raises(RequestError) as info:
        validate(request, modality, inpaint, **kw)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message
    assert expected in message


def test_30_objects_allowed_and_style_counts(img):
    validate(GenerationRequest("p", objects=(_obj(),) * 30), TB, False)
    validate(GenerationRequest("p", objects=(_obj(),) * 29, style_image=img), TI, False)


def test_unreadable_file(img, monkeypatch):
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == img:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(RequestError, match="cannot be read"):
        validate(GenerationRequest("p", condition=img), HED, False)


def test_guidance_zero_and_default_sizes_allowed(img):
    validate(GenerationRequest("p", guidance=0.0, height=None, width=None), KP, False)
    validate(GenerationRequest("p", height=64, width=128, beta=0.0), KP, False, max_size=128, multiple=64)


# ------------------------------------------------------------------------------------------------
# JSON


def _full_request(folder: str) -> GenerationRequest:
    return GenerationRequest(
        prompt="a cat and a dog",
        negative_prompt="blurry",
        objects=(
            GroundedObject((0.1, 0.2, 0.5, 0.9), "a cat", os.path.join(folder, "cat.png")),
            GroundedObject((0.5, 0.1, 0.9, 0.5), None, os.path.join(folder, "dog.png")),
            GroundedObject((0.0, 0.0, 1.0, 1.0), "grass"),
        ),
        persons=(Person((None,) + KP17[1:]),),
        condition=os.path.join(folder, "edges.png"),
        inpaint_image=os.path.join(folder, "room.png"),
        style_image=os.path.join(folder, "style.png"),
        seed=7,
        steps=25,
        guidance=5.0,
        sampler="ddim",
        alpha_type=(0.3, 0.0, 0.7),
        height=512,
        width=768,
        num_images=3,
        feature_cache=3,
        feature_cache_grounded=2,
    )


def test_json_round_trip(tmp_path):
    req = _full_request(str(tmp_path))
    d = request_to_json(req)
    assert json.loads(json.dumps(d)) == d
    assert request_from_json(d) == req
    path = tmp_path / "req.json"
    path.write_text(json.dumps(d))
    assert request_from_json(path) == req
    minimal = GenerationRequest("only a prompt", beta=0.3)
    assert request_from_json(request_to_json(minimal)) == minimal
    assert "alpha_type" not in request_to_json(minimal)
    assert "feature_cache" not in request_to_json(minimal)
    assert "feature_cache_grounded" not in request_to_json(minimal)


def test_json_relative_paths_resolve_against_file_folder(tmp_path, monkeypatch):
    sub = tmp_path / "inputs"
    sub.mkdir()
    data = {
        "prompt": "p",
        "objects": [{"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9], "image": "cat.png"}],
        "condition": "maps/edges.png",
        "inpaint_image": "../room.png",
        "style_image": "/abs/style.png",
    }
    path = sub / "req.json"
    path.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    req = request_from_json(str(path.relative_to(tmp_path)))
    assert req.objects[0].image == str(sub / "cat.png")
    assert req.condition == str(sub / "maps" / "edges.png")
    assert req.inpaint_image == str(tmp_path / "room.png")
    assert req.style_image == "/abs/style.png"
    # dicts keep paths as given unless a base folder is named
    assert request_from_json(data).condition == "maps/edges.png"
    assert request_from_json(data, base_dir="/base").condition == "/base/maps/edges.png"


def test_json_types_are_normalised():
    req = request_from_json(
        {
            "prompt": "p",
            "objects": [{"phrase": "x", "box": [0, 0, 1, 1]}],
            "persons": [{"keypoints": [[0, 1]] + [None] * 16}],
        }
    )
    assert req.objects[0].box == (0.0, 0.0, 1.0, 1.0)
    assert isinstance(req.objects, tuple) and isinstance(req.persons[0].keypoints, tuple)
    assert req.persons[0].keypoints[0] == (0.0, 1.0)


JSON_ERRORS = [
    ({"prompt": "p", "stepz": 3}, "'stepz'"),
    ({"prompt": "p", "objects": [{"phrase": "x", "box": [0, 0, 1, 1], "colour": "red"}]}, "'colour'"),
    ({"prompt": "p", "persons": [{"keypoints": [], "name": "a"}]}, "'name'"),
    ({"negative_prompt": "x"}, "no 'prompt'"),
    ({"prompt": 3}, "prompt must be a string"),
    ({"prompt": "p", "steps": "50"}, "steps must be an integer"),
    ({"prompt": "p", "steps": 50.5}, "steps must be an integer"),
    ({"prompt": "p", "guidance": True}, "guidance must be a number"),
    ({"prompt": "p", "objects": [{"phrase": "x"}]}, "no 'box'"),
    ({"prompt": "p", "objects": [{"phrase": "x", "box": [0, 0, 1]}]}, "4 numbers"),
    ({"prompt": "p", "objects": {"phrase": "x"}}, "must be a JSON list"),
    ({"prompt": "p", "persons": [{"keypoints": [[0.1]]}]}, "2 numbers"),
    ({"prompt": "p", "alpha_type": [1, 0]}, "3 numbers"),
]


@pytest.mark.parametrize(("data", "expected"), JSON_ERRORS)
def test_json_errors_are_one_line(data, expected):
    with pytest.raises(RequestError) as info:
        request_from_json(data)
    assert "\n" not in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"prompt": "p",\n  "steps": 5,,\n}', "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        (b"\xff\xfe{", "not UTF-8"),
    ],
)
def test_malformed_json_file(tmp_path, text, expected):
    path = tmp_path / "bad.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(RequestError) as info:
        request_from_json(path)
    assert "\n" not in str(info.value)
    assert expected in str(info.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(RequestError, match="does not exist"):
        request_from_json(tmp_path / "none.json")


def test_json_nan_is_caught_by_validate(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"prompt": "p", "objects": [{"phrase": "x", "box": [0.1, NaN, 0.5, 0.5]}]}')
    req = request_from_json(path)
    with pytest.raises(RequestError, match="NaN"):
        validate(req, TB, False)
