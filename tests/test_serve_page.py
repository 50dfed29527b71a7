"""The page at / in a real headless browser (the system's chromium, driven by playwright): draw two
boxes with the mouse, name them, generate; the image (equal to a direct pipeline call for the
boxes drawn) and its overlay appear; an empty phrase and a box outside [0, 1] show the server's
one-line message. For a keypoint model: persons dragged (a standing pose) or clicked keypoint by
keypoint, a keypoint moved and one deleted, then generated (equal to a direct call); too many
persons show the server's message. Skips when chromium or playwright is absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serve_support import LiveServer, decode_png
from test_runtime_support import engine_folder

from gligen_rt.core.request import GenerationRequest, GroundedObject, Person
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.serve import create_app

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the serve extra)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)")

# Never let playwright fetch a browser of its own; these flags keep chromium off the network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEPS = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    with GligenPipeline.from_engines(engine_folder(tmp_path_factory, "text-box"), "ort-cpu") as pipe:
        with LiveServer(create_app(pipe)) as server:
            yield pipe, server


@pytest.fixture()
def page(tmp_path: Path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            context.close()


def drag(pg, frm: tuple[float, float], to: tuple[float, float]) -> None:
    """Press at `frm` and release at `to`, both normalised to the drawing canvas."""
    box = pg.locator("#draw").bounding_box()
    pg.mouse.move(box["x"] + frm[0] * box["width"], box["y"] + frm[1] * box["height"])
    pg.mouse.down()
    pg.mouse.move(box["x"] + to[0] * box["width"], box["y"] + to[1] * box["height"], steps=6)
    pg.mouse.up()


def boxes_on_page(pg) -> list[tuple[float, float, float, float]]:
    rows = pg.locator("#box-list li")
    return [
        tuple(float(rows.nth(i).locator(f".coord-{k}").input_value()) for k in ("x0", "y0", "x1", "y1"))
        for i in range(rows.count())
    ]


def test_draw_two_boxes_generate_and_see_the_overlay(served, page, tmp_path: Path) -> None:
    pipe, server = served
    pg = page
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelector('#sampler').options.length > 0")
    assert "text-box" in pg.locator("#model-info").inner_text()
    pg.fill("#prompt", "a cat and a dog on a sofa")
    pg.fill("#seed", "11")
    pg.fill("#steps", str(STEPS))

    drag(pg, (0.1, 0.2), (0.45, 0.8))
    drag(pg, (0.55, 0.3), (0.9, 0.75))
    assert pg.locator("#box-list li").count() == 2
    pg.locator("#box-list .phrase").nth(0).fill("a cat")
    pg.locator("#box-list .phrase").nth(1).fill("a dog")
    # move the second box by dragging its inside; delete a third one drawn by mistake
    drag(pg, (0.7, 0.5), (0.68, 0.45))
    drag(pg, (0.2, 0.85), (0.3, 0.95))
    assert pg.locator("#box-list li").count() == 3
    pg.locator("#box-list li").nth(2).locator(".delete").click()
    assert pg.locator("#box-list li").count() == 2

    pg.click("#generate")
    pg.wait_for_selector("#result:not([hidden])")
    pg.wait_for_function("document.querySelector('#result-image').naturalWidth > 0")
    assert pg.locator("#error").is_hidden()
    assert pg.locator("#result-overlay").get_attribute("data-boxes") == "2"
    assert pg.locator("#progress").evaluate(f"p => p.value === p.max && p.max === {STEPS}")
    href = pg.locator("#download").get_attribute("href")
    assert href.startswith("data:image/png;base64,")
    got = decode_png(href.split(",", 1)[1])

    boxes = boxes_on_page(pg)
    assert boxes[0] < boxes[1] and all(0 <= v <= 1 for b in boxes for v in b)
    req = GenerationRequest(
        prompt="a cat and a dog on a sofa",
        objects=(GroundedObject(boxes[0], "a cat"), GroundedObject(boxes[1], "a dog")),
        seed=11,
        steps=STEPS,
    )
    assert np.array_equal(got, pipe(req).images[0])
    # the overlay really has the boxes' colours drawn on it
    overlay = pg.locator("#result-overlay").evaluate("c => c.toDataURL('image/png')")
    ov = decode_png(overlay.split(",", 1)[1])
    assert (ov.sum(axis=-1) > 0).mean() > 0.01
    shot = tmp_path / "page.png"  # kept in the test's folder for a look
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    for hidden in ("#condition", "#inpaint-image", "#style-image"):  # not for a text-box model
        assert pg.locator(hidden).is_hidden()


def test_bad_box_and_empty_phrase_show_the_servers_message(served, page) -> None:
    _, server = served
    pg = page
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelector('#sampler').options.length > 0")
    pg.fill("#steps", str(STEPS))
    drag(pg, (0.2, 0.2), (0.6, 0.6))
    pg.click("#generate")  # phrase left empty
    pg.wait_for_selector("#error:not([hidden])")
    assert pg.locator("#error").inner_text() == (
        "objects[0] has no phrase: the text-box model needs a phrase for every box"
    )
    pg.locator("#box-list .phrase").nth(0).fill("a cat")
    pg.locator("#box-list .coord-x1").nth(0).fill("1.5")
    pg.click("#generate")
    pg.wait_for_function("document.querySelector('#error').textContent.includes('outside [0, 1]')")
    assert pg.locator("#result").is_hidden()


@pytest.fixture(scope="module")
def served_keypoint(tmp_path_factory: pytest.TempPathFactory):
    with GligenPipeline.from_engines(engine_folder(tmp_path_factory, "keypoint"), "ort-cpu") as pipe:
        with LiveServer(create_app(pipe)) as server:
            yield pipe, server


def persons_on_page(pg) -> list[list[list[float] | None]]:
    rows = pg.locator("#person-list li")
    return [json.loads(rows.nth(i).get_attribute("data-keypoints")) for i in range(rows.count())]


def click(pg, at: tuple[float, float]) -> None:
    box = pg.locator("#draw").bounding_box()
    pg.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"])


def test_keypoint_model_place_move_and_delete_keypoints_then_generate(served_keypoint, page) -> None:
    pipe, server = served_keypoint
    pg = page
    pg.goto(server.url + "/")
    pg.wait_for_function("document.querySelector('#sampler').options.length > 0")
    assert "keypoint" in pg.locator("#model-info").inner_text()
    assert pg.locator("#boxes-panel").is_hidden() and pg.locator("#persons-panel").is_visible()
    pg.fill("#prompt", "two people in a park")
    pg.fill("#seed", "4")
    pg.fill("#steps", str(STEPS))

    # a dragged box becomes a person in a standing pose filling it
    drag(pg, (0.05, 0.1), (0.45, 0.9))
    (first,) = persons_on_page(pg)
    assert all(kp is not None for kp in first) and len(first) == 17
    assert first[0] == pytest.approx([0.25, 0.164], abs=0.01)  # the nose: top middle
    assert first[15][1] > 0.8 and first[16][1] > 0.8  # the ankles at the bottom
    # drag its left wrist elsewhere
    drag(pg, tuple(first[9]), (0.5, 0.45))
    assert persons_on_page(pg)[0][9] == pytest.approx([0.5, 0.45], abs=0.01)
    # select its right ankle and mark it missing
    click(pg, tuple(first[16]))
    pg.keyboard.press("Delete")
    assert persons_on_page(pg)[0][16] is None
    assert "a click places the right ankle" in pg.locator("#person-list li").nth(0).inner_text()
    # that click places it again; the clicks after it start a second person keypoint by keypoint
    click(pg, (0.3, 0.92))
    assert persons_on_page(pg)[0][16] == pytest.approx([0.3, 0.92], abs=0.01)
    for at in ((0.7, 0.2), (0.73, 0.17), (0.67, 0.17)):
        click(pg, at)
    second = persons_on_page(pg)[1]
    assert [kp is not None for kp in second] == [True] * 3 + [False] * 14
    assert second[1] == pytest.approx([0.73, 0.17], abs=0.01)
    assert "a click places the left ear" in pg.locator("#person-list li").nth(1).inner_text()

    pg.click("#generate")
    pg.wait_for_selector("#result:not([hidden])")
    pg.wait_for_function("document.querySelector('#result-image').naturalWidth > 0")
    assert pg.locator("#error").is_hidden()
    assert pg.locator("#result-overlay").get_attribute("data-persons") == "2"
    got = decode_png(pg.locator("#download").get_attribute("href").split(",", 1)[1])
    persons = tuple(
        Person(tuple(None if kp is None else tuple(kp) for kp in kps)) for kps in persons_on_page(pg)
    )
    req = GenerationRequest(prompt="two people in a park", persons=persons, seed=4, steps=STEPS)
    assert np.array_equal(got, pipe(req).images[0])

    # more persons than the model takes: the server's message on the page, no new image
    for i in range(7):
        drag(pg, (0.05 + 0.1 * i, 0.05), (0.12 + 0.1 * i, 0.3))
    assert pg.locator("#person-list li").count() == 9
    pg.click("#generate")
    pg.wait_for_selector("#error:not([hidden])")
    assert pg.locator("#error").inner_text() == "9 persons: at most 8 are supported, remove 1"
    pg.locator("#person-list li").nth(8).locator(".delete").click()
    assert pg.locator("#person-list li").count() == 8
