"""Hidden attention: the blockwise log-space construction against a direct product loop, against the
selective scan's own output, and on long routes with strong decay."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from evmamba import build_model, selective_scan
from evmamba.analysis.hidden_attention import (
    SAFE_EXPONENT,
    conv_activations,
    hidden_attention,
    implicit_attention,
    implicit_attention_reference,
    model_hidden_attention,
    route_ssm,
)
from evmamba.analysis.hidden_attention_figures import attention_row_figure, hidden_attention_figure
from evmamba.mixer import SelectiveScan2D


def _case(d=3, length=13, n=4, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(d, length, generator=g, dtype=torch.float64) * scale
    A = -(torch.rand(d, n, generator=g, dtype=torch.float64) + 0.05)
    B = torch.randn(n, length, generator=g, dtype=torch.float64)
    C = torch.randn(n, length, generator=g, dtype=torch.float64)
    return delta, A, B, C


@pytest.mark.parametrize("scale", [0.5, 400.0])
@pytest.mark.parametrize("block", [1, 4, 5, 64])
def test_matches_the_direct_product_loop(scale, block):
    delta, A, B, C = _case(scale=scale)
    # mild decay: blocks are products of two small matrices; strong decay (more than e^SAFE_EXPONENT across
    # a block): pairwise differences
    forgets = (delta.sum(1)[:, None] * -A).max()
    assert (forgets > SAFE_EXPONENT) == (scale > 1)
    ref = implicit_attention_reference(delta, A, B, C)
    got = implicit_attention(delta, A, B, C, reduce=None, block=block, dtype=torch.float64, bar=False)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-13)
    assert torch.all(got.triu(1) == 0)  # causal
    torch.testing.assert_close(implicit_attention(delta, A, B, C, reduce="abs", block=block, dtype=torch.float64,
                                                  bar=False), ref.abs().mean(0), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(implicit_attention(delta, A, B, C, reduce="mean", block=block, dtype=torch.float64,
                                                  bar=False), ref.mean(0), rtol=1e-10, atol=1e-13)
    f32 = implicit_attention(delta.float(), A.float(), B.float(), C.float(), reduce=None, block=block, bar=False)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), ref, rtol=1e-4, atol=1e-5)


def test_diagonal_is_c_dot_delta_b():
    delta, A, B, C = _case(d=2, length=9)
    got = implicit_attention(delta, A, B, C, reduce=None, dtype=torch.float64, bar=False)
    for c in range(2):
        torch.testing.assert_close(got[c].diagonal(), (C * B).sum(0) * delta[c])


@pytest.mark.parametrize("scan, step, grid", [("ss2d", 2, (5, 6)), ("es2d", 2, (5, 7)), ("es2d", 3, (7, 6))])
def test_attention_times_input_is_the_scan_output(scan, step, grid):
    """y_t = sum_s alpha[t, s] u_s + D u_t for every channel of every route, with the mixer's own inputs."""
    torch.manual_seed(0)
    mixer = SelectiveScan2D(8, scan=scan, step=step).double().eval()
    with torch.no_grad():
        mixer.dt_projs_bias.add_(1.0)  # a longer memory than the initialisation's
    x_conv = conv_activations(mixer, torch.randn(2, *grid, 8, dtype=torch.float64))
    for k in range(mixer.num_routes):
        routes, u, delta, A, B, C, D = route_ssm(mixer, x_conv, k, sample=1)
        alpha = implicit_attention(delta, A, B, C, reduce=None, block=4, dtype=torch.float64, bar=False)
        y = torch.einsum("cts,cs->ct", alpha, u) + D[:, None] * u
        # the scan from the raw inputs, as the mixer runs it
        _, u_all, dt_all, Bs, Cs = mixer.ssm_inputs(x_conv[1:2])
        A_all, D_all, bias = mixer.ssm_parameters(torch.float64)
        y_scan = selective_scan(u_all, dt_all, A_all, Bs, Cs, D_all, delta_bias=bias, delta_softplus=True,
                                backend="reference")[0]
        d = mixer.d_inner
        torch.testing.assert_close(y, y_scan[k * d:(k + 1) * d], rtol=1e-9, atol=1e-12)


def test_long_route_with_strong_decay_is_finite_and_exact():
    """L = 4096 with delta*|A| up to 20 per step: the cumulative decay reaches e^-40000, far beyond what
    exp(S_t) / exp(S_s) could hold; differences of cumulative sums keep every entry finite and right."""
    g = torch.Generator().manual_seed(1)
    d, length, n = 2, 4096, 4
    A = -torch.tensor([[1.0, 2.0, 5.0, 20.0], [0.5, 1.0, 10.0, 20.0]], dtype=torch.float64)
    delta = torch.rand(d, length, generator=g, dtype=torch.float64)  # delta*|A| in [0, 20)
    delta[:, 1000:1100] = 1e-4  # a stretch with almost no decay, where long-range terms matter
    B = torch.randn(n, length, generator=g, dtype=torch.float64)
    C = torch.randn(n, length, generator=g, dtype=torch.float64)
    S = (delta[:, :, None] * A[:, None, :]).cumsum(1)  # (d, L, N)
    assert S.min() < -20000
    got = implicit_attention(delta.float(), A.float(), B.float(), C.float(), reduce="abs", bar=False)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # rows checked directly in float64: alpha[c, t, s] = sum_n C_t exp(S_t - S_s) delta_s B_s, per channel
    full = implicit_attention(delta[:1], A[:1], B, C, reduce="mean", dtype=torch.float64, bar=False)
    for t in (0, 63, 64, 1050, 1099, 4095):
        s = torch.arange(t + 1)
        direct = (C[:, t][None] * torch.exp(S[0, t][None] - S[0, s]) * delta[0, s, None] * B[:, s].T).sum(1)
        torch.testing.assert_close(full[t, : t + 1], direct, rtol=1e-9, atol=1e-300)
        assert torch.all(full[t, t + 1:] == 0)
    one = implicit_attention(delta[:1].float(), A[:1].float(), B.float(), C.float(), reduce="abs", bar=False)
    torch.testing.assert_close(one[4095, 3000:].double(), full[4095, 3000:].abs(), rtol=1e-4, atol=1e-6)
    # in the quiet stretch the attention reaches back 50 tokens with a visible weight
    assert full[1099, 1050].abs() > 1e-6


def test_argument_errors():
    delta, A, B, C = _case()
    with pytest.raises(ValueError, match="valid values are 'abs', 'mean' and None"):
        implicit_attention(delta, A, B, C, reduce="max")
    with pytest.raises(ValueError, match="A must be <= 0"):
        implicit_attention(delta, -A, B, C)
    with pytest.raises(ValueError, match=r"B must be \(N=4, L=13\)"):
        implicit_attention(delta, A, B[:, :5], C)
    big = torch.rand(96, 3136)
    with pytest.raises(ValueError, match="average over channels with reduce='abs' or 'mean'"):
        implicit_attention(big, -torch.ones(96, 2), torch.ones(2, 3136), torch.ones(2, 3136), reduce=None)


# ---- one route of a model, in scan order and image order --------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


def test_model_routes_image_order_and_row_maps(tiny):
    atts = model_hidden_attention(tiny, "astronaut", mixer="layers.0.blocks.1.op", image_size=64, bar=False)
    assert [a.route for a in atts] == [0, 1, 2, 3]
    a1 = atts[1]  # sub-map (1, 0), column-major, 8x8 tokens
    assert a1.grid == (16, 16) and a1.length == 64 and a1.channels == 96 and a1.reduce == "abs"
    assert a1.picture.shape == (64, 64, 3)
    assert np.all(np.triu(a1.matrix, 1) == 0) and np.all(a1.matrix >= 0)
    # image order: the same entries, steps sorted by raster position
    m, pos = a1.image_order()
    flat = pos[:, 0] * 16 + pos[:, 1]
    assert np.all(np.diff(flat) > 0)
    assert sorted(m.ravel().tolist()) == sorted(a1.matrix.ravel().tolist())
    t_of = {tuple(p): t for t, p in enumerate(a1.positions.tolist())}
    i, j = 5, 9
    assert m[i, j] == a1.matrix[t_of[tuple(pos[i])], t_of[tuple(pos[j])]]
    # the row of a query: route 1 reads only odd rows and even columns; the nearest to (8, 8) is (7, 8)
    amap, used = a1.row_map(8, 8)
    assert used == (7, 8)
    assert np.isnan(amap[0::2]).all() and np.isnan(amap[:, 1::2]).all()
    t = t_of[(7, 8)]
    assert amap[7, 8] == a1.matrix[t, t] > 0
    assert amap[9, 8] == 0  # read after the query (column-major: the next one down): causal zero
    assert amap[5, 8] > 0
    with pytest.raises(ValueError, match="outside the 16x16 map"):
        a1.row_map(16, 0)


def test_ss2d_row_major_route_is_already_in_image_order():
    model = build_model("tiny", seed=1, scan="ss2d").eval()
    (att,) = model_hidden_attention(model, "random", mixer=0, routes=0, image_size=32, reduce="mean", bar=False)
    m, _ = att.image_order()
    np.testing.assert_array_equal(m, att.matrix)
    assert (att.matrix < 0).any()  # signed
    assert att.picture is None


def test_real_size_route_without_materialising_channels(tiny):
    """A 56x56 SS2D route (L = 3136) averaged over a few channels: (L, L) only."""
    model = build_model("tiny", seed=0, scan="ss2d").eval()
    (att,) = model_hidden_attention(model, "chelsea", mixer=0, routes=[2], channels=range(4), bar=False)
    assert att.matrix.shape == (3136, 3136) and att.channels == 4
    assert np.isfinite(att.matrix).all()
    # route 2 is row-major reversed: its first step is the bottom-right position
    assert tuple(att.positions[0]) == (55, 55)


def test_mixer_choice_errors(tiny):
    with pytest.raises(ValueError, match=r"no mixer named 'op'.*layers.0.blocks.0.op"):
        model_hidden_attention(tiny, "random", mixer="op", image_size=32)
    with pytest.raises(ValueError, match=r"mixer must be an index in 0..3"):
        model_hidden_attention(tiny, "random", mixer=4, image_size=32)
    with pytest.raises(ValueError, match=r"route must be an integer in 0..3"):
        model_hidden_attention(tiny, "random", routes=[4], image_size=32)
    mixer = tiny.layers[0].blocks[0].op
    with pytest.raises(ValueError, match="conv activations"):
        hidden_attention(mixer, torch.randn(1, 48, 8, 8))


def test_figures(tiny):
    atts = model_hidden_attention(tiny, "coffee", mixer=0, image_size=64, bar=False)
    fig = hidden_attention_figure(atts)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8
    assert all(atts[k].route_name in panels[k].get_title() for k in range(4))
    row = attention_row_figure(atts, (8, 8))
    panels = [ax for ax in row.axes if ax.get_visible() and ax.images]
    assert len(panels) == 4
    for ax, a in zip(panels, atts):
        (q,) = [line for line in ax.lines if line.get_gid() == "query"]
        assert (q.get_ydata()[0], q.get_xdata()[0]) == a.row_map(8, 8)[1]
        assert a.route_name in ax.get_title()
    with pytest.raises(ValueError, match=r"query must be \(row, col\)"):
        attention_row_figure(atts, 8)


def test_large_matrices_are_drawn_as_cell_means():
    from evmamba.analysis import hidden_attention_figures as F
    small = np.arange(16.0).reshape(4, 4)
    assert np.array_equal(F._shown(small), small.astype(np.float32))
    side = F.MAX_SIDE * 2 + 1  # k = 3: cells of 3 x 3, the last ones padded
    m = np.random.default_rng(0).random((side, side)).astype(np.float32)
    m[:3, :3] = np.nan  # a cell the route does not read
    shown = F._shown(m)
    assert shown.shape == (-(-side // 3),) * 2 and np.isnan(shown[0, 0])
    assert np.isclose(shown[1, 2], m[3:6, 6:9].mean())
    assert np.isclose(shown[-1, -1], m[-2:, -2:].mean())  # 1025 = 341 * 3 + 2: padding left out of the mean


def test_cell_means_in_raster_order_equal_those_of_the_reordered_matrix():
    from evmamba.analysis import hidden_attention_figures as F
    side = F.MAX_SIDE + 7  # k = 2, the last cells padded
    m = np.random.default_rng(1).random((side, side)).astype(np.float32)
    m[5, :] = np.nan
    order = np.random.default_rng(2).permutation(side)
    np.testing.assert_array_equal(F._shown(m, order), F._shown(m[np.ix_(order, order)]))
