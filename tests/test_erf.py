"""Effective receptive fields: the gradient method, the area ratios, causality of single routes, and the
conv-only receptive field when the scan is replaced by identity."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from evmamba import build_model, probes, scan_routes
from evmamba.analysis.erf import (
    THRESHOLDS,
    NetworkToStage,
    area_ratios,
    block_erf,
    effective_receptive_fields,
    high_contribution_square,
    input_gradients,
    mixer_erf,
    network_erf,
    normalise,
)
from evmamba.analysis.erf_figures import area_ratio_figure, erf_figure
from evmamba.analysis.interventions import keep_only_route, scan_replaced_by_identity
from evmamba.blocks import EVSSBlock
from evmamba.mixer import SelectiveScan2D


def _mixer(scan="ss2d", step=2, dim=8, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = SelectiveScan2D(dim, scan=scan, step=step).eval()
        # larger dt than Mamba's initialisation, so the scan carries visibly far
        with torch.no_grad():
            m.dt_projs_bias.fill_(0.5)
    return m


def _features(n, h, w, c, seed=1):
    return torch.randn(n, h, w, c, generator=torch.Generator().manual_seed(seed))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Positions within Chebyshev distance 1 of a True position (what one 3x3 conv can reach)."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            out |= padded[1 + dr: 1 + dr + mask.shape[0], 1 + dc: 1 + dc + mask.shape[1]]
    return out


# ---- normalisations and area ratios -----------------------------------------------------------------
def test_normalisations_known_values():
    x = np.array([[0.0, 1.0], [32.0, 1024.0]])
    np.testing.assert_allclose(normalise(x, "linear"), x / 1024)
    np.testing.assert_allclose(normalise(x, "power"), (x / 1024) ** 0.2)
    np.testing.assert_allclose(normalise(x, "power")[1], [2 ** -1, 1.0])  # (32/1024)^0.2 = 1/2
    np.testing.assert_allclose(normalise(x, "power", exponent=0.5)[0, 1], 1 / 32)
    np.testing.assert_allclose(normalise(x, "log"), np.log10(1 + x) / np.log10(1025))
    for how in ("linear", "power", "log"):
        y = normalise(x, how)
        assert y.max() == 1.0 and y[0, 0] == 0.0
        assert np.all(np.argsort(y.ravel(), kind="stable") == np.argsort(x.ravel(), kind="stable"))
    assert np.all(normalise(np.zeros((3, 3))) == 0)


def test_normalise_rejects_bad_input():
    with pytest.raises(ValueError, match="valid normalisations are power, log, linear"):
        normalise(np.ones((2, 2)), "sqrt")
    with pytest.raises(ValueError, match="non-negative"):
        normalise(-np.ones((2, 2)))


CELL = "cell-centred"


def test_area_ratio_known_values():
    # the cell-centred convention (raw map, squares around the output cell's centre, >=, clipped)
    uniform = np.ones((9, 9))  # centred squares of side 1, 3, 5, 7, 9 hold 1, 9, 25, 49, 81 of 81
    assert area_ratios(uniform, (4, 4), convention=CELL) == {0.2: 25 / 81, 0.3: 25 / 81, 0.5: 49 / 81, 0.99: 1.0}
    point = np.zeros((9, 9))
    point[4, 4] = 3.0
    assert area_ratios(point, (4, 4), convention=CELL) == {t: 1 / 81 for t in THRESHOLDS}
    # between pixels (an even stride): squares of side 2, 4, 6, 8 on an 8x8 map
    assert area_ratios(np.ones((8, 8)), (3.5, 3.5), (0.05, 0.2, 0.5), convention=CELL) == {
        0.05: 4 / 64, 0.2: 16 / 64, 0.5: 36 / 64}
    # off centre the square is clipped to the map: at the corner, radius 1 covers 2x2
    assert area_ratios(uniform, (0, 0), (0.04,), convention=CELL) == {0.04: 4 / 81}
    assert high_contribution_square(uniform, (4, 4), 0.5, convention=CELL) == (1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"shares in \(0, 1\]"):
        area_ratios(uniform, (4, 4), (0.0,))
    with pytest.raises(ValueError, match="valid conventions are replknet, cell-centred"):
        area_ratios(uniform, (4, 4), convention="mine")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2 ** 31 - 1),
       st.lists(st.floats(0.01, 1.0), min_size=2, max_size=6))
def test_area_ratios_grow_with_the_threshold(h, w, seed, thresholds):
    rng = np.random.default_rng(seed)
    x = rng.random((h, w)) ** 4
    centre = (rng.integers(0, h) + rng.choice([0, 0.5]) * (h > 1), rng.integers(0, w))
    for convention in (CELL, "replknet") if h == w else (CELL,):  # RepLKNet's maps are square
        values = list(area_ratios(x, centre, sorted(thresholds), convention=convention).values())
        found = [v for v in values if not np.isnan(v)]
        assert all(a <= b for a, b in zip(found, found[1:]))
        assert all(0 < v <= 1 for v in found)
        # RepLKNet's has no value from some threshold on, never before one that has a value
        assert values[:len(found)] == found


# ---- RepLKNet's area ratio, held to a literal reading of their analyze_erf.py -------------------------------
def replknet_literal(data, thresholds=(0.2, 0.3, 0.5, 0.99)):
    """RepLKNet's erf/analyze_erf.py as described: log10(x + 1), divided by the maximum, then for each
    threshold the first i in 1 .. h//2 - 1 whose square rows h//2-i .. h//2+i, columns w//2-i .. w//2+i
    holds strictly more than the threshold's share; (2i+1)/h * (2i+1)/w, or no value."""
    data = np.log10(data + 1)
    data = data / np.max(data)
    h, w = data.shape
    out = {}
    for thresh in thresholds:
        out[thresh] = None
        all_sum = np.sum(data)
        for i in range(1, h // 2):
            selected_area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]
            if np.sum(selected_area) / all_sum > thresh:
                out[thresh] = (i * 2 + 1) / h * (i * 2 + 1) / w
                break
    return out


def _maps():
    rng = np.random.default_rng(7)
    delta = np.zeros((15, 15))
    delta[7, 7] = 1.0
    blob = np.exp(-((np.arange(32)[:, None] - 16) ** 2 + (np.arange(32)[None] - 15) ** 2) / 40.0)
    return {"delta": delta, "uniform": np.ones((11, 11)), "random odd": rng.random((21, 21)) ** 3,
            "random even": rng.random((24, 24)) ** 3, "blob": blob, "blob x 1000": 1e3 * blob,
            "random x 1000": 1e3 * rng.random((17, 17)) ** 6}


@pytest.mark.parametrize("name", list(_maps()))
def test_replknet_area_ratio_matches_their_definition_exactly(name):
    x = _maps()[name]
    got = area_ratios(x)  # RepLKNet's convention is the default
    want = replknet_literal(x)
    assert list(got) == list(want)
    for t in want:
        assert (np.isnan(got[t]) and want[t] is None) or got[t] == want[t], (name, t, got[t], want[t])


def test_replknet_area_ratio_has_no_value_where_no_square_qualifies_and_depends_on_scale():
    delta = _maps()["delta"]
    # a single point: every square from 3x3 up holds everything, so each threshold gets the 3x3 square
    assert area_ratios(delta) == {t: 3 / 15 * 3 / 15 for t in THRESHOLDS}  # (2i+1)/h * (2i+1)/w, as they write it
    # a uniform map: the largest square tried (side 9 of 11) holds 81/121 < 0.99: no value
    ratios = area_ratios(np.ones((11, 11)))
    assert np.isnan(ratios[0.99]) and ratios[0.5] == 9 / 11 * 9 / 11  # 49/121 < 0.5 < 81/121
    # the log transform: the same map times 10^3 gives other ratios (the cell-centred ones do not change)
    blob = _maps()["blob"]
    assert area_ratios(blob) != area_ratios(1e3 * blob)
    assert area_ratios(blob, (16, 15), convention=CELL) == area_ratios(1e3 * blob, (16, 15), convention=CELL)
    assert high_contribution_square(np.ones((11, 11)), threshold=0.99) is None
    assert high_contribution_square(delta, threshold=0.5) == (6, 6, 9, 9)


# ---- the gradient ---------------------------------------------------------------------------------------
def test_captum_saliency_and_autograd_agree():
    mixer = _mixer("es2d")
    f = _features(3, 8, 8, 8)
    a = mixer_erf(mixer, f, (3, 5), method="saliency", bar=False)
    b = mixer_erf(mixer, f, (3, 5), method="autograd", bar=False)
    for x, y in zip(a.all(), b.all()):
        assert x.position == y.position
        np.testing.assert_allclose(x.contribution, y.contribution, rtol=1e-5, atol=1e-8)
    assert a.combined.contribution.max() > 0


def test_erf_is_the_mean_of_relu_gradients_over_inputs():
    mixer = _mixer("ss2d")
    f = _features(3, 6, 6, 8)
    together = mixer_erf(mixer, f, (2, 2), routes=False, batch_size=2, bar=False).combined.contribution
    one_by_one = [mixer_erf(mixer, f[i:i + 1], (2, 2), routes=False, bar=False).combined.contribution
                  for i in range(3)]
    np.testing.assert_allclose(together, np.mean(one_by_one, axis=0), rtol=1e-5, atol=1e-9)
    # by hand: ReLU of the gradient of sum_c ReLU(out[r, c, :]), summed over channels and batch, / N
    x = f.clone().requires_grad_(True)
    torch.relu(mixer(x)[:, 2, 2, :]).sum().backward()
    np.testing.assert_allclose(together, torch.relu(x.grad).sum((0, 3)).numpy() / 3, rtol=1e-5, atol=1e-9)


# ---- causality of one route ------------------------------------------------------------------------------
def test_ss2d_route0_is_causal_at_the_centre():
    """Route 0 of SS2D reads row-major; the output at (r0, c0) takes scan tokens read at or before it,
    i.e. rows < r0 and row r0 up to c0, and the mixer's 3x3 depthwise conv before the scan widens that by
    one row and column. So with route 0 alone, the ERF is exactly zero on every row >= r0 + 2 and on row
    r0 + 1 from column c0 + 2 on, and positive elsewhere (over a few random inputs)."""
    mixer = _mixer("ss2d")
    h = w = 9
    r0, c0 = 4, 4
    result = mixer_erf(mixer, _features(6, h, w, 8), (r0, c0), method="autograd", bar=False)
    erf = result.routes[0].contribution
    assert result.routes[0].position == (r0, c0)
    assert np.all(erf[r0 + 2:] == 0)
    assert np.all(erf[r0 + 1, c0 + 2:] == 0)
    allowed = np.ones((h, w), dtype=bool)
    allowed[r0 + 2:] = False
    allowed[r0 + 1, c0 + 2:] = False
    assert np.all(erf[allowed] > 0)
    # the other routes reach the rest: all routes together are positive everywhere
    assert np.all(result.combined.contribution > 0)


@pytest.mark.parametrize("scan, step", [("ss2d", 2), ("es2d", 2), ("es2d", 3)])
def test_every_route_sees_only_what_it_read_before(scan, step):
    """Route k alone at position p: zero outside the 3x3 neighbourhood of the positions route k reads at or
    before p (the depthwise conv's reach), for every route of SS2D and ES2D (odd size: padding included)."""
    mixer = _mixer(scan, step)
    h, w = 7, 8
    result = mixer_erf(mixer, _features(3, h, w, 8), (3, 4), method="autograd", bar=False)
    routes = scan_routes(scan, h, w, step)
    for k, e in enumerate(result.routes):
        order = routes.reading_order(k).numpy()
        t0 = order[e.position]
        assert t0 >= 0  # the position is on the route
        read_before = (order >= 0) & (order <= t0)
        reach = _dilate(read_before)[:h, :w]
        assert np.all(e.contribution[~reach] == 0), (scan, step, k)
        assert e.contribution[e.position] > 0


def test_es2d_route_positions_are_the_nearest_on_each_submap():
    mixer = _mixer("es2d", 2)
    result = mixer_erf(mixer, _features(1, 8, 8, 8), (4, 4), bar=False)
    routes = scan_routes("es2d", 8, 8, 2)
    assert [e.position for e in result.routes] == [routes.nearest_position(k, 4, 4) for k in range(4)]
    assert [e.position for e in result.routes] == [(4, 4), (3, 4), (4, 3), (3, 3)]
    assert result.routes[1].route_name == routes.routes[1].name
    table = result.table()
    assert list(table["route"]) == ["all", 0, 1, 2, 3]
    assert list(table.columns[-8:]) == [f"area ratio {t:g} ({c})" for c in ("RepLKNet", "cell-centred")
                                        for t in THRESHOLDS]


def test_route_masks_are_per_call_and_end_with_the_block_even_after_an_error():
    mixer = _mixer("ss2d")
    attributes = dict(vars(mixer))
    weights = {k: v.clone() for k, v in mixer.state_dict().items()}
    with pytest.raises(RuntimeError):
        with keep_only_route(mixer, 1):
            assert probes.active().weights_for(mixer).tolist() == [0, 1, 0, 0]
            raise RuntimeError
    assert probes.active() is None
    mixer_erf(mixer, _features(1, 6, 6, 8), bar=False)
    assert probes.active() is None
    assert vars(mixer) == attributes  # nothing set on the mixer, nothing replaced
    assert all(torch.equal(v, weights[k]) for k, v in mixer.state_dict().items())
    with pytest.raises(ValueError, match=r"route must be an integer in 0..3"):
        with keep_only_route(mixer, 4):
            pass


# ---- identity scan: the conv-only receptive field -------------------------------------------------------
def test_identity_scan_mixer_has_the_3x3_receptive_field():
    mixer = _mixer("ss2d")
    f = _features(4, 9, 9, 8)
    with scan_replaced_by_identity(mixer):
        erf = mixer_erf(mixer, f, (4, 4), routes=False, bar=False).combined.contribution
    support = np.zeros((9, 9), dtype=bool)
    support[3:6, 3:6] = True
    np.testing.assert_array_equal(erf > 0, support)
    assert probes.active() is None and "scan_map" not in vars(mixer)  # the real scan is back
    assert (mixer_erf(mixer, f, (4, 4), routes=False, bar=False).combined.contribution[~support] > 0).any()


def _conv_only_support(image, grid_pos, stage):
    """Analytic support in pixels for stage 0 or 1 of the EVSS-only network with the scan and gate removed:
    each EVSS block is one 3x3 reach (mixer conv and conv branch), patch merging takes 2x2 cells, the patch
    embedding 4x4 pixels."""
    grid = [(image // 4, image // 4), (image // 8, image // 8)]
    mask = np.zeros(grid[stage], dtype=bool)
    mask[grid_pos] = True
    for s in range(stage, -1, -1):
        for _ in range(2):  # two blocks per stage in every variant's first two stages
            mask = _dilate(mask)
        if s > 0:
            mask = np.kron(mask, np.ones((2, 2), dtype=bool)).astype(bool)
    return np.kron(mask, np.ones((4, 4), dtype=bool)).astype(bool)


@pytest.mark.parametrize("stage, pos", [(0, (8, 8)), (0, (1, 14)), (1, (4, 3))])
def test_identity_scan_network_erf_equals_the_conv_only_receptive_field(stage, pos):
    # gate=False: the channel gate averages over the whole map, which would make every receptive field global
    model = build_model("tiny", seed=3, gate=False).eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with scan_replaced_by_identity(model):
        erf = network_erf(model, images, stage, pos, routes=False, method="autograd", bar=False)
        # the ERF keeps only positive gradients; the support is where any gradient is not zero
        grad = input_gradients(NetworkToStage(model, stage), images, pos, "autograd")
    expected = _conv_only_support(64, pos, stage)
    np.testing.assert_array_equal(grad.abs().sum((0, 1)).numpy() > 0, expected)
    assert np.all(erf.combined.contribution[~expected] == 0)
    assert (erf.combined.contribution[expected] > 0).mean() > 0.95
    if stage == 0 and pos == (8, 8):
        r0, c0, r1, c1 = np.argwhere(expected)[[0, -1]].ravel()
        assert (r0, c0, r1, c1) == (24, 24, 43, 43)  # 5x5 cells of 4x4 pixels
        # with the scan back, the ERF reaches beyond the convolutions
        full = network_erf(model, images, stage, pos, routes=False, method="autograd", bar=False)
        assert (full.combined.contribution[~expected] > 0).any()


def test_block_with_gate_sees_everything():
    block = EVSSBlock(8).eval()
    with scan_replaced_by_identity(block):
        erf = block_erf(block, _features(2, 8, 8, 8), (4, 4), routes=False, bar=False)
    assert np.all(erf.combined.contribution > 0)
    assert any("gate" in n for n in erf.notes)


# ---- the levels from one call -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


def test_seeded_models_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model("tiny", seed=5).eval(), build_model("tiny", seed=5).eval()
    assert torch.rand(1) == before
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training
    c = build_model("tiny", seed=6).eval()
    assert not torch.equal(c.patch_embed[0].weight, a.patch_embed[0].weight)


@pytest.mark.parametrize("level", ["mixer", "block", "stage"])
def test_levels_on_random_inputs(tiny, level):
    r = effective_receptive_fields(tiny, level, stage=1, block=1, num_inputs=2, image_size=64, bar=False)
    assert r.level == level
    assert r.output_grid == (8, 8)
    assert r.input_shape == ((64, 64) if level == "stage" else (8, 8))
    assert r.requested == (4, 4)
    assert len(r.routes) == 4
    for e in r.all():
        assert e.contribution.shape == r.input_shape and np.isfinite(e.contribution).all()
        assert e.contribution.sum() > 0
    if level == "stage":
        assert r.combined.centre == (4.5 * 8 - 0.5, 4.5 * 8 - 0.5)  # 8-pixel cells at stage 1
        assert r.combined.contribution[35:37, 35:37].sum() > 0
    again = effective_receptive_fields(tiny, level, stage=1, block=1, num_inputs=2, image_size=64, bar=False)
    np.testing.assert_array_equal(again.routes[2].contribution, r.routes[2].contribution)


def test_natural_images_and_progress(tiny):
    calls = []
    r = effective_receptive_fields(tiny, "mixer", stage=0, inputs=["astronaut", "chelsea"], image_size=64,
                                   progress=lambda f, desc=None: calls.append(f), bar=False)
    assert r.num_inputs == 2 and "astronaut" in r.inputs
    assert r.input_shape == (16, 16)
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)


def test_ir_stage_and_argument_errors(tiny):
    with pytest.raises(ValueError, match="valid levels are mixer, block, stage"):
        effective_receptive_fields(tiny, "layer")
    with pytest.raises(ValueError, match=r"stage must be an integer in 0..3"):
        effective_receptive_fields(tiny, "stage", stage=4)
    with pytest.raises(ValueError, match=r"inverted-residual blocks and has no scan.*EVSS stage \(0, 1\)"):
        effective_receptive_fields(tiny, "mixer", stage=2)
    with pytest.raises(ValueError, match=r"block must be an integer in 0..1"):
        effective_receptive_fields(tiny, "block", block=2)
    with pytest.raises(ValueError, match=r"outside the 16x16 output grid"):
        effective_receptive_fields(tiny, "stage", image_size=64, position=(16, 0), bar=False)
    with pytest.raises(ValueError, match=r"channels last: \(N, H, W, 48\)"):
        mixer_erf(tiny.layers[0].blocks[0].op, torch.randn(1, 48, 8, 8))
    with pytest.raises(ValueError, match="num_inputs applies to random inputs only"):
        effective_receptive_fields(tiny, "mixer", inputs="rocket", num_inputs=3)
    with pytest.raises(ValueError, match="feature_size applies to the mixer and block levels"):
        effective_receptive_fields(tiny, "stage", feature_size=(8, 8))
    with pytest.raises(ValueError, match="valid methods are saliency, autograd"):
        effective_receptive_fields(tiny, "mixer", method="gradcam", feature_size=(4, 4), bar=False)
    # an inverted-residual stage: no scan reads its grid, so every route uses the requested position
    r = effective_receptive_fields(tiny, "stage", stage=2, image_size=64, num_inputs=1, bar=False)
    assert r.output_grid == (4, 4) and all(e.position == (2, 2) for e in r.routes)
    assert any("stage 2 has no scan" in n for n in r.notes)


def test_all_inverted_residual_model_gives_only_the_combined_erf():
    model = build_model("tiny", stages="all-ir").eval()
    r = network_erf(model, torch.randn(1, 3, 64, 64), 0, bar=False)
    assert r.routes == [] and r.scan is None


def test_erf_at_224_for_one_image(tiny):
    from evmamba.analysis.images import image_batch
    images, _ = image_batch("chelsea", 224)
    r = network_erf(tiny, images, 0, routes=False, bar=False)
    assert r.output_grid == (56, 56) and r.combined.contribution.shape == (224, 224)
    ratios = r.combined.area_ratios()
    assert list(ratios.values()) == sorted(ratios.values())


# ---- figures ----------------------------------------------------------------------------------------------------
def test_erf_figure_names_routes_and_marks_positions():
    mixer = _mixer("es2d")
    r = mixer_erf(mixer, _features(1, 8, 8, 8), (4, 4), bar=False)
    fig = erf_figure(r)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(panels) == 5
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("all routes")
    for k in range(4):
        assert r.routes[k].route_name in titles[k + 1]
    for ax, e in zip(panels, r.all()):
        (marker,) = [line for line in ax.lines if line.get_gid() == "position"]
        assert (marker.get_ydata()[0], marker.get_xdata()[0]) == e.position
        assert "area ratio" in ax.get_xlabel() and f"at {e.position}" in ax.get_xlabel()
    # route 1's position moved to its sub-map: the requested one is drawn too
    assert "asked (4, 4)" in panels[2].get_xlabel()
    assert any(line.get_gid() == "requested" for line in panels[2].lines)
    two = erf_figure({"ES2D": r, "SS2D": mixer_erf(_mixer("ss2d"), _features(1, 8, 8, 8), bar=False)},
                     normalisation="log")
    assert len([ax for ax in two.axes if ax.get_visible() and ax.images]) == 10
    assert isinstance(area_ratio_figure(r), Figure)


# ---- natural images offline ---------------------------------------------------------------------------------
def test_sample_images_load_offline_as_rgb():
    from evmamba.analysis.images import DEFAULT_SAMPLES, load_image, load_images, sample_names
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(sample_names())
    for name in ("astronaut", "camera", "motorcycle"):
        a = load_image(name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert [n for n, _ in load_images()] == list(DEFAULT_SAMPLES)
    assert len(load_images("samples")) == len(sample_names())
    with pytest.raises(ValueError, match=r"sample names are astronaut, chelsea, coffee, rocket"):
        load_image("kitten")


def test_images_from_a_folder(tmp_path):
    from PIL import Image

    from evmamba.analysis.images import image_batch, load_images, to_picture
    with pytest.raises(ValueError, match="holds no images"):
        load_images(tmp_path)
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((30, 30), 10, np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    named = load_images(tmp_path)
    assert [n for n, _ in named] == ["a.jpg", "b.png"]
    assert named[0][1].shape == (30, 30, 3)
    x, names = image_batch([str(tmp_path / "b.png"), "rocket"], size=32)
    assert x.shape == (2, 3, 32, 32) and names == ["b.png", "rocket"]
    np.testing.assert_allclose(to_picture(x[0]), 200 / 255, atol=1e-5)  # the normalisation undone
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*broken.png as an image"):
        load_images(tmp_path)


# ---- RepLKNet's reference setting ----------------------------------------------------------------------------
def replknet_get_input_grad(model, samples):
    """RepLKNet's erf/visualize_erf.py get_input_grad, written out on our model: the final feature map
    (channels first, as their models return it), ReLU at its centre pixel summed over channels, the input
    gradient, ReLU, summed over batch and channels."""
    outputs = model.forward_features(samples).permute(0, 3, 1, 2)
    out_size = outputs.size()
    central_point = torch.nn.functional.relu(outputs[:, :, out_size[2] // 2, out_size[3] // 2]).sum()
    grad = torch.autograd.grad(central_point, samples)[0]
    grad = torch.nn.functional.relu(grad)
    return grad.sum((0, 1)).cpu().numpy()


def test_replknet_preset_is_their_erf_map_averaged_over_images(tmp_path):
    from PIL import Image

    from evmamba.analysis.erf import replknet_erf
    from evmamba.imagenet import stretched
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((70 + 9 * i, 90, 3)) * 255).astype(np.uint8)).save(tmp_path / f"img{i}.png")
    model = build_model("tiny", seed=4).eval()
    result = replknet_erf(model, tmp_path, image_size=64, num_images=2, bar=False)
    # theirs: each image resized to size x size (bicubic), normalised, one map per image, the maps averaged
    maps = []
    for i in range(2):
        x = stretched(np.asarray(Image.open(tmp_path / f"img{i}.png")), size=64).requires_grad_(True)
        maps.append(replknet_get_input_grad(model, x))
    np.testing.assert_allclose(result.combined.contribution, np.mean(maps, axis=0), rtol=1e-5, atol=1e-9)
    assert result.output_grid == (2, 2) and result.requested == (1, 1) and result.num_inputs == 2
    assert result.routes == [] and result.skipped == 0


def test_inputs_whose_map_is_not_finite_are_left_out_and_counted():
    from evmamba.analysis.erf_gradients import contribution_map

    class Body(torch.nn.Module):  # the second input's gradient is NaN everywhere
        def forward(self, x):
            scale = torch.ones(x.shape[0], 1, 1, 1)
            scale[1] = float("nan")
            return (x * scale).permute(0, 2, 3, 1)

    x = torch.rand(3, 2, 5, 5)
    m = contribution_map(Body(), x, (2, 2), channel_dim=1, method="autograd", bar=False)
    assert (m.used, m.skipped) == (2, 1)
    expected = np.zeros((5, 5))
    expected[2, 2] = 2.0  # two channels, each with gradient 1 at the centre, for both finite inputs
    np.testing.assert_array_equal(m.contribution, expected)
