"""Partition data and pictures: what they draw is exactly what the model's routes read."""
import json

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

import evmamba
from evmamba.analysis import partition_figures as mpl_figs
from evmamba.analysis import partition_plotly as plotly_figs
from evmamba.analysis.partition import PAD_GREY, partition, sample_image, stage_routes, to_rgb
from evmamba.analysis.style import route_colour

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny():
    return evmamba.build_model("tiny")


def flat(positions: np.ndarray, routes) -> torch.Tensor:
    """(L, 2) rows, columns on the padded grid -> flat indices as in routes.index."""
    return torch.as_tensor(positions[:, 0] * routes.padded_width + positions[:, 1])


# ---- routes come from the model ----------------------------------------------------------------------
def test_stage_routes_are_the_mixers_routes(tiny):
    for stage, size in ((0, 56), (1, 28)):
        routes = stage_routes(tiny, stage, image_size=224)
        for name, mixer in tiny.mixers():
            if name.startswith(f"layers.{stage}."):
                assert torch.equal(routes.index, mixer.routes(size, size).index)
    assert (stage_routes(tiny, 0, (64, 96)).height, stage_routes(tiny, 0, (64, 96)).width) == (16, 24)
    with pytest.raises(ValueError, match="stage 2 has no scan mixers.*0, 1"):
        stage_routes(tiny, 2)
    with pytest.raises(ValueError, match="stage must be"):
        stage_routes(tiny, 7)


def test_partition_data_follows_the_routes():
    routes = evmamba.scan_routes("es2d", 7, 9, step=3)
    part = partition(routes, "astronaut", patch=5)
    hp, wp = routes.padded_shape
    assert part.image.shape == (hp * 5, wp * 5, 3)
    assert (part.image[7 * 5:] == PAD_GREY).all() and not (part.image[: 7 * 5, : 9 * 5] == PAD_GREY).all()
    assert np.array_equal(part.route_map, routes.route_map().numpy())
    for k in range(routes.num_routes):
        pos = part.positions(k)
        assert np.array_equal(part.order[k][pos[:, 0], pos[:, 1]], np.arange(routes.length))
        # the regrouped sub-image holds exactly the patches route k reads, at their sub-map places
        sub, spos = part.sub_image(k), part.sub_positions(k)
        for (r, c), (a, b) in zip(pos, spos):
            tile = part.image[r * 5:(r + 1) * 5, c * 5:(c + 1) * 5]
            assert np.array_equal(sub[a * 5:(a + 1) * 5, b * 5:(b + 1) * 5], tile)
        mask = routes.padding_mask().numpy()
        assert all(part.sub_padding(k)[a, b] == mask[r, c] for (r, c), (a, b) in zip(pos, spos))
    ss = partition(evmamba.scan_routes("ss2d", 5, 6))
    assert ss.route_map is None and (np.sort(ss.readers, -1) == np.arange(4)).all()
    assert ss.sub_image(2).shape == ss.image.shape


# ---- images -----------------------------------------------------------------------------------------
def test_images_of_any_mode():
    from PIL import Image
    astronaut = sample_image("astronaut")
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    with pytest.raises(ValueError, match="valid names are astronaut, chelsea"):
        sample_image("nebula")
    grey = np.linspace(0, 1, 20 * 30).reshape(20, 30)
    for image in (grey, grey > 0.5, (grey * 255).astype(np.uint8)[..., None], Image.fromarray(astronaut).convert("P"),
                  Image.fromarray(astronaut).convert("RGBA"), Image.fromarray(astronaut).convert("L"), "coffee"):
        rgb = to_rgb(image)
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="torch tensor"):
        to_rgb(torch.zeros(3, 8, 8))
    part = partition(evmamba.scan_routes("es2d", 8, 8), Image.fromarray(astronaut).convert("L"))
    assert part.has_image and part.image.shape == (512, 512, 3)


# ---- matplotlib --------------------------------------------------------------------------------------
def test_figure_draws_the_models_routes_at_the_real_grids(tiny):
    routes = stage_routes(tiny, 0, 224)  # 56x56
    fig = mpl_figs.route_paths_figure(tiny, "astronaut", stage=0, layout="grid")
    drawn = mpl_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(4))
    for k, pos in drawn.items():
        assert torch.equal(flat(pos, routes), routes.index[k])
    assert "56×56" in fig._suptitle.get_text() and "step 2" in fig._suptitle.get_text()
    # the regrouped sub-images: sub-map coordinates back to the grid give the same reading order
    fig = mpl_figs.route_paths_figure(tiny, stage=1)  # 28x28
    routes = stage_routes(tiny, 1, 224)
    drawn = mpl_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(4))
    for k, pos in drawn.items():
        i, j = routes.routes[k].submap
        assert torch.equal(flat(np.stack([i + 2 * pos[:, 0], j + 2 * pos[:, 1]], 1), routes), routes.index[k])


def test_overview_window_and_colours():
    routes = evmamba.scan_routes("es2d", 8, 8, step=2)
    fig = mpl_figs.partition_figure(routes, "chelsea")
    drawn = mpl_figs.drawn_paths(fig)
    for k in range(4):
        assert torch.equal(flat(drawn[k], routes), routes.index[k])  # 8x8: the whole grid
    # every position coloured exactly once, by its route's colour
    overlay = next(im for im in fig.axes[1].images if im.get_gid() == "routes").get_array()
    assert overlay.shape[:2] == (8, 8)
    rmap = routes.route_map().numpy()
    for r in range(8):
        for c in range(8):
            assert np.allclose(overlay[r, c, :3], to_rgba(route_colour(int(rmap[r, c])))[:3])
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert labels >= {f"route {k}: {r.name}" for k, r in enumerate(routes.routes)}
    # numbers on the reading-order panel are the reading steps
    texts = [t for t in fig.axes[2].texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in texts) == sorted(list(range(16)) * 4)
    # a big grid: the window shows the top-left 8x8 in reading order, numbered with the real steps
    big = evmamba.scan_routes("es2d", 28, 28, step=2)
    fig = mpl_figs.partition_figure(big, numbers=True)
    drawn = mpl_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(4))
    for k, pos in drawn.items():
        full = big.positions(k).numpy()
        inside = full[(full[:, 0] < 8) & (full[:, 1] < 8)]
        assert np.array_equal(pos, inside)
    steps = {int(t.get_text()) for t in fig.axes[2].texts if t.get_text().isdigit()}
    assert 14 in steps and max(steps) > 16  # row 2 of sub-map (0,0) is step 14 of a 14-wide sub-map


@pytest.mark.parametrize("height, width, step", [(7, 9, 3), (5, 5, 2), (9, 9, 4)])
def test_padding_is_drawn_and_labelled(height, width, step):
    routes = evmamba.scan_routes("es2d", height, width, step)
    fig = mpl_figs.partition_figure(routes, "rocket")
    pad = [c for c in fig.axes[0].collections if c.get_gid() == "padding"]
    assert len(pad) == 1
    centres = {(int(round(p.get_extents().y0 + 0.5)), int(round(p.get_extents().x0 + 0.5))) for p in pad[0].get_paths()}
    mask = routes.padding_mask().numpy()
    assert len(pad[0].get_paths()) == mask.sum() and centres == set(map(tuple, np.argwhere(mask)))
    assert any("padding" in t.get_text() for t in fig.legends[0].get_texts())
    assert f"padded to {routes.padded_height}×{routes.padded_width}" in fig._suptitle.get_text()
    even = mpl_figs.partition_figure(evmamba.scan_routes("es2d", 8, 8))
    assert not [c for c in even.axes[0].collections if c.get_gid() == "padding"]


def test_any_step_and_the_ss2d_comparison():
    for step in (1, 3, 4):
        routes = evmamba.scan_routes("es2d", 8, 8, step)
        fig = mpl_figs.route_paths_figure(routes)
        assert len(mpl_figs.drawn_paths(fig)) == step * step
    fig = mpl_figs.scan_comparison_figure("astronaut", height=6, width=6, step=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("ES2D route") for t in titles) == 4 and sum(t.startswith("SS2D route") for t in titles) == 4
    ss = evmamba.scan_routes("ss2d", 6, 6)
    ss_axes = [ax for ax in fig.axes if ax.get_title().startswith("SS2D")]
    for k, ax in enumerate(ss_axes):
        line = next(ln for ln in ax.lines if ln.get_gid() == f"path-{k}")
        xy = np.column_stack([line.get_ydata(), line.get_xdata()])
        xy = np.round(xy[~np.isnan(xy).any(1)]).astype(int)
        assert torch.equal(flat(xy, ss), ss.index[k])


# ---- plotly --------------------------------------------------------------------------------------------
def test_plotly_draws_the_models_routes_and_stays_light(tiny):
    routes = stage_routes(tiny, 0, 224)
    fig = plotly_figs.partition_plotly(tiny, "astronaut", stage=0)
    drawn = plotly_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(4))
    for k, pos in drawn.items():
        assert torch.equal(flat(pos, routes), routes.index[k])
    # each position tinted exactly once, by the route that reads it
    heat = {t.meta["route"]: np.asarray(t.z) for t in fig.data
            if isinstance(t.meta, dict) and t.meta.get("part") == "patches"}
    assert sum(heat.values()).tolist() == np.ones((56, 56)).tolist()
    for k, z in heat.items():
        assert torch.equal(torch.nonzero(torch.as_tensor(z).flatten()).flatten(), routes.index[k].sort().values)
    # hover steps are the reading order
    pieces = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("part") == "path" and t.meta["route"] == 1]
    steps = np.concatenate([np.asarray(t.customdata)[:, 0] for t in pieces])
    assert np.array_equal(np.unique(steps[steps >= 0]), np.arange(routes.length))
    # a few dozen frames, a light file
    assert 30 <= len(fig.frames) <= 60
    assert len(fig.data) < 250
    assert len(fig.to_json()) < 1.5e6
    last = fig.frames[-1]
    assert all(d.visible for d in last.data[:-1])
    first = fig.frames[0]
    assert sum(bool(d.visible) for d in first.data[:-1]) == 4  # one piece per route


def test_plotly_padding_steps_and_ss2d():
    routes = evmamba.scan_routes("es2d", 7, 9, step=3)
    fig = plotly_figs.partition_plotly(routes, "coffee")
    pad = [t for t in fig.data if isinstance(t.meta, dict) and t.meta.get("part") == "padding"]
    assert len(pad) == 1 and "padding" in pad[0].name
    padded = sorted(map(tuple, np.argwhere(routes.padding_mask().numpy())))
    assert sorted(map(tuple, pad[0].meta["positions"])) == padded
    drawn = plotly_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(9))
    for k, pos in drawn.items():
        assert torch.equal(flat(pos, routes), routes.index[k])
    json.loads(fig.to_json())

    fig = plotly_figs.scan_comparison_plotly(None, height=6, width=7, step=2)
    es, ss = evmamba.scan_routes("es2d", 6, 7), evmamba.scan_routes("ss2d", 6, 7)
    for scan, routes in (("ES2D", es), ("SS2D", ss)):
        drawn = plotly_figs.drawn_paths(fig, scan=scan)
        assert sorted(drawn) == list(range(4))
        for k, pos in drawn.items():
            assert torch.equal(flat(pos, routes), routes.index[k])

    routes = evmamba.scan_routes("es2d", 8, 8, step=4)
    fig = plotly_figs.regrouped_plotly(routes, "astronaut")
    drawn = plotly_figs.drawn_paths(fig)
    assert sorted(drawn) == list(range(16))
    for k, pos in drawn.items():
        i, j = routes.routes[k].submap
        assert torch.equal(flat(np.stack([i + 4 * pos[:, 0], j + 4 * pos[:, 1]], 1), routes), routes.index[k])


def test_errors_speak_to_the_user(tiny):
    routes = evmamba.scan_routes("es2d", 8, 8)
    with pytest.raises(ValueError, match="stage only applies"):
        partition(routes, stage=1)
    with pytest.raises(ValueError, match="expected scan routes"):
        partition("es2d")
    with pytest.raises(ValueError, match="layout"):
        mpl_figs.route_paths_figure(routes, layout="spiral")
    with pytest.raises(ValueError, match="frames"):
        plotly_figs.partition_plotly(routes, frames=-1)
    with pytest.raises(ValueError, match="already fixes"):
        mpl_figs.partition_figure(partition(routes), "astronaut")
