"""Synthetic slides: reproducible bytes across chunkings, sane tissue, bounded memory."""

import subprocess
import sys

import numpy as np
import pytest

from gigamlx.slide.store import open_store
from gigamlx.synth.render import default_slide, render, scene_layers, synth_slide
from gigamlx.synth.scene import make_scene


def test_synth_same_bytes_whatever_chunking(tmp_path):
    a = open_store(synth_slide(tmp_path / "a.zarr", (700, 900), seed=3, chunk_px=256))
    b = open_store(synth_slide(tmp_path / "b.zarr", (700, 900), seed=3, chunk_px=384))
    assert a.image[:, :].tobytes() == b.image[:, :].tobytes()
    assert a.mask[:, :].tobytes() == b.mask[:, :].tobytes()
    rgb, mask = render(make_scene((700, 900), 3), np.arange(700), np.arange(900))  # one chunk
    assert a.image[:, :].tobytes() == rgb.tobytes() and a.mask[:, :].tobytes() == mask.tobytes()


def test_synth_same_bytes_whatever_the_worker_processes(tmp_path):
    """Chunks rendered in two processes (in flight out of order) are the serial bytes."""
    a = open_store(synth_slide(tmp_path / "a.zarr", (520, 1100), seed=5, chunk_px=128, workers=1))
    b = open_store(synth_slide(tmp_path / "b.zarr", (520, 1100), seed=5, chunk_px=128, workers=2))
    assert a.image[:, :].tobytes() == b.image[:, :].tobytes()
    assert a.mask[:, :].tobytes() == b.mask[:, :].tobytes()


def test_synth_seed_changes_pixels():
    scene_a, scene_b = make_scene((256, 512), 0), make_scene((256, 512), 1)
    ys, xs = np.arange(256), np.arange(512)
    assert not np.array_equal(render(scene_a, ys, xs)[0], render(scene_b, ys, xs)[0])


@pytest.mark.parametrize("hw", [(700, 900), (2048, 8192), (16384, 65536)])
def test_synth_tissue_fraction_sane(hw):
    step = max(1, hw[0] // 256)  # a strided preview renders the same pixels
    _, mask = render(make_scene(hw, 0), np.arange(0, hw[0], step), np.arange(0, hw[1], step))
    assert 0.25 < mask.mean() < 0.65


def test_synth_looks_like_tissue_vs_background():
    rgb, mask = render(make_scene((512, 1024), 2), np.arange(512), np.arange(1024))
    tissue, background = rgb[mask == 1].astype(float), rgb[mask == 0].astype(float)
    assert background.mean() > 200  # bright background
    assert tissue[:, 1].mean() < background[:, 1].mean() - 15  # stained: green absorbed
    assert background.std() > 2  # noisy, not flat


def test_synth_bounded_memory(tmp_path):
    """A 3072x4096 synth (36 MB of RGB) grows peak RSS by about one chunk's temporaries."""
    code = (
        "from gigamlx.core.memory import peak_rss_bytes\n"
        "from gigamlx.synth.render import synth_slide\n"
        f"synth_slide({str(tmp_path / 'warm.zarr')!r}, (300, 300), chunk_px=256)\n"
        "base = peak_rss_bytes()\n"
        f"synth_slide({str(tmp_path / 'm.zarr')!r}, (3072, 4096), chunk_px=256)\n"
        "print(peak_rss_bytes() - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth_mb = int(out.stdout.strip()) / 2**20  # bytes on every platform
    assert growth_mb < 18, f"peak RSS grew {growth_mb:.0f} MB for a 36 MB image"


def test_default_slide_generated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GIGAMLX_CACHE", str(tmp_path))
    first = default_slide(size_hw=(300, 500))
    stamp = (first / "zarr.json").stat().st_mtime_ns
    assert default_slide(size_hw=(300, 500)) == first
    assert (first / "zarr.json").stat().st_mtime_ns == stamp
    assert open_store(first).image.shape == (300, 500, 3)


def test_synth_fat_is_white_but_labelled_tissue():
    scene = next(make_scene((2048, 4096), s) for s in range(100) if make_scene((2048, 4096), s).fat)
    e = scene.fat[0]
    ys, xs = np.arange(int(e.cy) - 8, int(e.cy) + 8), np.arange(int(e.cx) - 8, int(e.cx) + 8)
    rgb, mask = render(scene, ys, xs)
    assert mask.all()  # the middle of a fat patch is tissue
    background = np.array(scene.style.background_rgb)
    assert np.median(np.abs(rgb.reshape(-1, 3) - background).max(axis=1)) < 25  # yet near-white


def test_synth_hole_is_glass_but_inside_the_tissue_region():
    # a tear or lumen: no stain in the image, yet tissue in the region a pathologist outlines
    def held_hole(scene):
        scene = scene._replace(fat=())  # fat is white and tissue too: keep it out of the way
        glass_scene = scene._replace(pieces=(), holes=())
        for e in scene.holes:
            ys = np.arange(int(e.cy) - 4, int(e.cy) + 4)
            xs = np.arange(int(e.cx) - 4, int(e.cx) + 4)
            rgb, mask = render(scene, ys, xs)
            glass = render(glass_scene, ys, xs)[0]
            if mask.all() and np.abs(rgb.astype(int) - glass).max() < 30:
                return True
        return False

    scenes = (make_scene((2048, 4096), s) for s in range(40))
    assert any(held_hole(scene) for scene in scenes if scene.holes)


def test_synth_style_varies_between_slides():
    styles = [make_scene((1024, 2048), s).style for s in range(8)]
    assert len({st.background_rgb for st in styles}) == 8
    assert np.ptp([st.eosin_od[1] for st in styles]) > 20
    assert max(st.defocus for st in styles) > 0.5 > min(st.defocus for st in styles)


def test_synth_pen_and_dust_are_background():
    scene = make_scene((2048, 4096), 4)
    stroke = scene.strokes[0]
    y, x = (int(v) for v in stroke.points[0])
    ys, xs = np.arange(max(0, y - 2), y + 3), np.arange(max(0, x - 2), x + 3)
    rgb, mask = render(scene, ys, xs)
    ink = np.array(stroke.ink_rgb)
    assert np.abs(rgb.reshape(-1, 3) - ink).max(axis=1).min() < 60  # the ink is drawn
    background_only = render(scene._replace(pieces=(), fat=()), ys, xs)[1]
    assert not background_only.any()  # and the label comes from tissue alone


def test_scene_layers_say_where_the_renderer_drew_what():
    scene = make_scene((512, 768), 0)  # fat, two strokes, dust, three bubbles
    ys, xs = np.arange(512), np.arange(768)
    rgb, mask = render(scene, ys, xs)
    layers = scene_layers(scene, ys, xs)
    assert np.array_equal(layers.tissue, mask.astype(bool))  # the label, exactly
    assert layers.fat.any() and not (layers.fat & ~layers.tissue).any()  # fat is tissue
    assert layers.faint.any() and not (layers.faint & (layers.fat | ~layers.tissue)).any()
    glass = np.array(scene.style.background_rgb)
    luminance = rgb.astype(float).mean(axis=-1)
    assert np.median(luminance[layers.dust & ~layers.tissue]) < glass.mean() - 60  # dark specks
    under_pen = rgb[layers.pen & ~layers.tissue & ~layers.dust].astype(float)
    assert np.median(np.abs(under_pen - glass).max(axis=1)) > 80  # inked
    assert np.median(luminance[layers.bubble_rim & ~layers.tissue]) < glass.mean() - 20
    window = scene_layers(scene, ys[100:300], xs[250:700])  # a chunk: the same pixels
    for name, whole in layers._asdict().items():
        assert np.array_equal(getattr(window, name), whole[100:300, 250:700]), name
