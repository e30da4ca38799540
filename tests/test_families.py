"""Scan-route families: the built-ins' defining properties, validation of any family, a family of the user's
own through the model and every analysis, checkpoints with another route count, the routes table."""
import numpy as np
import pytest
import torch

import evmamba
from evmamba.families import BUILT_IN, FamilyRoutes, family, hilbert_curve
from evmamba.routes import scan_routes

SIZES = [(7, 7), (8, 6), (5, 9), (12, 12), (1, 1), (1, 6)]
PARAMS = {"es2d": [1, 2, 3], "windows": [2, 3, 7]}


def cases():
    for scan in BUILT_IN:
        for value in PARAMS.get(scan, [2]):
            for h, w in SIZES:
                yield scan, value, h, w


@pytest.mark.parametrize("scan, value, h, w", list(cases()))
def test_every_route_is_a_permutation_and_every_position_is_read_equally(scan, value, h, w):
    r = scan_routes(scan, h, w, value)
    cells = r.padded_height * r.padded_width
    for k in range(r.num_routes):
        idx = r.index[k]
        assert torch.unique(idx).numel() == idx.numel()  # no position twice
        assert int(idx.min()) >= 0 and int(idx.max()) < cells
    reads = r.reads()
    assert bool((reads == reads.flatten()[0]).all()) and int(reads.flatten()[0]) >= 1
    assert r.padded_height >= h and r.padded_width >= w
    assert r.num_routes == evmamba.routes.num_routes(scan, value)


def steps(r, k):
    pos = r.positions(k)
    return (pos[1:] - pos[:-1]).abs().sum(1)


@pytest.mark.parametrize("scan", ["zigzag", "hilbert"])
@pytest.mark.parametrize("h, w", SIZES)
def test_continuous_families_step_to_a_neighbour_every_token(scan, h, w):
    r = scan_routes(scan, h, w)
    for k in range(r.num_routes):
        assert bool((steps(r, k) == 1).all()), (scan, h, w, k)


def test_hilbert_curve_is_the_classic_curve():
    assert hilbert_curve(1).tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]]
    curve = hilbert_curve(3)
    assert curve[0].tolist() == [0, 0] and curve[-1].tolist() == [0, 7]
    assert len({tuple(p) for p in curve.tolist()}) == 64
    assert scan_routes("hilbert", 56, 56).padded_shape == (64, 64)
    assert scan_routes("hilbert", 5, 9).padded_shape == (8, 16)  # two 8x8 squares side by side, not 16x16


@pytest.mark.parametrize("size", [2, 3, 7])
@pytest.mark.parametrize("h, w", [(7, 7), (8, 6), (5, 9), (14, 14)])
def test_a_windows_route_finishes_a_window_before_the_next(size, h, w):
    r = scan_routes("windows", h, w, size)
    n_windows = (r.padded_height // size) * (r.padded_width // size)
    for k in range(r.num_routes):
        pos = r.positions(k)
        window = (pos[:, 0] // size) * (r.padded_width // size) + pos[:, 1] // size
        changes = int((window[1:] != window[:-1]).sum())
        assert changes == n_windows - 1  # each window's size² tokens in one run
    # the row-first route reads each window row-major; LocalMamba's 2x2 windows on a 4x4 map:
    assert scan_routes("windows", 4, 4, 2).index[0].tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert scan_routes("windows", 4, 4, 2).index[1].tolist() == [0, 4, 1, 5, 8, 12, 9, 13, 2, 6, 3, 7, 10, 14, 11, 15]


def test_zigzag_diagonal_and_reverses_read_what_they_say():
    z = scan_routes("zigzag", 3, 3)
    assert z.index[0].tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert z.index[1].tolist() == [0, 3, 6, 7, 4, 1, 2, 5, 8]
    assert z.index[2].tolist() == z.index[0].flip(0).tolist() and z.index[3].tolist() == z.index[1].flip(0).tolist()
    d = scan_routes("diagonal", 3, 3)
    assert d.index[0].tolist() == [2, 1, 5, 0, 4, 8, 3, 7, 6]  # r - c = -2, -1, 0, 1, 2, each from its top
    assert d.index[1].tolist() == [0, 1, 3, 2, 4, 6, 5, 7, 8]  # r + c = 0 .. 4, each from its top


def test_es2d_and_ss2d_are_the_authors_orders():
    es = scan_routes("es2d", 4, 4, 2)
    assert es.index.tolist() == [[0, 2, 8, 10], [4, 12, 6, 14], [1, 3, 9, 11], [5, 13, 7, 15]]
    ss = scan_routes("ss2d", 2, 3)
    assert ss.index.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


# ---- validation -------------------------------------------------------------------------------------
@pytest.fixture
def register():
    names = []

    def add(name, fn, **kw):
        names.append(name)
        return evmamba.register_scan(name, fn, replace=True, **kw)
    yield add
    for n in names:
        evmamba.unregister_scan(n)


@pytest.mark.parametrize("routes, message", [
    (lambda h, w: [torch.arange(h * w) + 1],
     r"scan 'bad' on a 4x4 map: route 0 reads position 16, outside the 4x4 grid"),
    (lambda h, w: [torch.zeros(h * w, dtype=torch.long)], "route 0 reads a position more than once"),
    (lambda h, w: [torch.arange(h * w), torch.arange(h * w - 1)], "routes must be non-empty and of one length"),
    (lambda h, w: [torch.arange(h * w), torch.arange(h * w // 2)], "of one length"),
    (lambda h, w: [torch.arange(h * w).float()], "must be a 1-D integer tensor"),
    (lambda h, w: [torch.arange(h * w // 2)], r"every position must be read by the same number of routes"),
    (lambda h, w: "rows", "a scan family must return a sequence of 1-D index tensors or FamilyRoutes"),
    (lambda h, w: [torch.arange(h * w)] * (1 + (h == 4)), "returned 2 routes on a 4x4 map but 1 on the map its "
                                                          "models are sized by"),
])
def test_a_family_that_breaks_a_rule_is_refused_naming_it(register, routes, message):
    register("bad", routes)
    with pytest.raises(ValueError, match=message):
        scan_routes("bad", 4, 4)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown scan 'spiral': registered scans are es2d, ss2d, zigzag"):
        evmamba.build_model("tiny", scan="spiral")
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        evmamba.register_scan("zigzag", lambda h, w: [torch.arange(h * w)])
    with pytest.raises(ValueError, match="lower-case identifier"):
        evmamba.register_scan("My Scan", lambda h, w: [torch.arange(h * w)])
    with pytest.raises(ValueError, match="has no parameter 'size'"):
        evmamba.register_scan("sized", lambda h, w: [torch.arange(h * w)], param="size")
    with pytest.raises(ValueError, match="built-in scan and cannot be removed"):
        evmamba.unregister_scan("es2d")
    with pytest.raises(ValueError, match=r"step only applies to scans with a parameter \(es2d: step, windows: "
                                         r"size\); zigzag takes none \(got step=3\)"):
        evmamba.build_model("tiny", scan="zigzag", step=3)
    with pytest.raises(ValueError, match=r"step \(windows's size\) must be an integer >= 1, got 0"):
        evmamba.build_model("tiny", scan="windows", step=0)


# ---- a family of the user's own, through everything ----------------------------------------------
def spiral(height, width):
    """Clockwise from the top-left corner, inwards; and reversed."""
    grid = torch.arange(height * width).view(height, width)
    order = []
    while grid.numel():
        order.append(grid[0])
        grid = grid[1:].t().flip(0)  # the rest, turned so its next side is on top
    order = torch.cat(order)
    return FamilyRoutes([order, order.flip(0)], [evmamba.Route("spiral in"), evmamba.Route("spiral out")])


def test_a_spiral_of_ones_own_runs_through_the_model_and_every_analysis(register):
    from evmamba.analysis import erf
    from evmamba.analysis.cost import count_flops
    from evmamba.analysis.partition import partition
    from evmamba.analysis.partition_plotly import partition_plotly
    register("spiral", spiral)
    assert scan_routes("spiral", 3, 3).index[0].tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert "spiral" in evmamba.scans() and "spiral" in evmamba.ModelConfig.__dataclass_fields__["scan"].metadata[
        "choices"]()
    torch.manual_seed(0)
    model = evmamba.build_model("tiny", scan="spiral", num_classes=3)
    x = torch.randn(2, 3, 44, 44, requires_grad=True)  # 11x11 then 5x5 maps
    model(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert model.layers[0].blocks[0].op.num_routes == 2
    part = partition(scan_routes("spiral", 5, 5))
    assert part.names == ["spiral in", "spiral out"] and part.route_map is None
    assert partition_plotly(scan_routes("spiral", 5, 5)).data
    result = erf.effective_receptive_fields(model, "mixer", stage=0, image_size=64, num_inputs=1, bar=False)
    assert [r.route_name for r in result.routes] == ["spiral in", "spiral out"]
    assert np.isfinite(result.combined.contribution).all()
    flops = count_flops(model.eval(), 64)
    es2d = count_flops(evmamba.build_model("tiny", num_classes=3).eval(), 64)
    # the scan reads K·L = 2·H·W tokens per map against ES2D's H·W: twice ES2D's scan FLOPs
    assert flops.table["scan"].sum() == pytest.approx(2 * es2d.table["scan"].sum(), rel=1e-9)


@pytest.mark.parametrize("scan", [s for s in BUILT_IN if s not in ("es2d", "ss2d")])
@pytest.mark.parametrize("size", [32, 44])
def test_the_model_runs_forward_and_backward_with_every_family(scan, size):
    torch.manual_seed(0)
    model = evmamba.build_model("tiny", scan=scan, step=3 if scan == "windows" else 2, num_classes=2)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    out.square().sum().backward()
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    grads = [p.grad for n, p in model.named_parameters() if ".op.x_proj_weight" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_checkpoint_with_another_route_count_is_refused_naming_both(tmp_path):
    path = evmamba.save_checkpoint(evmamba.build_model("tiny", step=3, num_classes=4), tmp_path / "es2d3.pt")
    with pytest.raises(evmamba.CheckpointMismatchError, match=r"the checkpoint's mixers have 9 routes \(per-route "
                                                             r"parameter sets\), the model's scan ZIGZAG has 4"):
        evmamba.load_checkpoint(evmamba.build_model("tiny", scan="zigzag", num_classes=4), path)


def test_a_grid_table_can_list_any_family():
    from ablations.config import expand_table
    table = expand_table({"name": "orders", "scan": ["es2d", "zigzag", "windows"], "step": [2, 7]})
    shown = [(r.scan, r.step) for r in table.rows]
    assert shown == [("es2d", 2), ("es2d", 7), ("zigzag", 2), ("windows", 2), ("windows", 7)]
    assert table.rows[-1].shown()["step p"] == "size 7"


def test_the_routes_table_lists_every_family():
    from evmamba.locality import routes_table
    rows = {r["scan"].split(" ")[0]: r for r in routes_table(14)}
    assert list(rows) == list(evmamba.scans())
    near = "near (d<=1, t<=1)"
    assert rows["ss2d"][near] == 1.0 and rows["zigzag"][near] == 1.0 and rows["es2d"][near] == 0.0
    assert rows["zigzag"]["max jump"] == 1.0 and rows["hilbert"]["max jump"] == 1.0
    assert rows["es2d"]["tokens read"] == 196 and rows["ss2d"]["tokens read"] == 784
    assert rows["hilbert"]["padding"] == pytest.approx(1 - 196 / 256)
    assert family("windows").param == "size"


def test_hidden_attention_and_route_contributions_for_a_new_family(register):
    from evmamba.analysis.attribution import route_contributions
    from evmamba.analysis.hidden_attention import model_hidden_attention
    register("spiral", spiral)
    torch.manual_seed(0)
    for scan in ("zigzag", "spiral"):
        model = evmamba.build_model("tiny", scan=scan, num_classes=3).eval()
        k = model.layers[0].blocks[0].op.num_routes
        atts = model_hidden_attention(model, "chelsea", image_size=64)
        assert len(atts) == k and all(np.isfinite(a.matrix).all() for a in atts)
        table = route_contributions(model, "chelsea", image_size=64, bar=False)
        blocks = 4  # tiny's EVSS blocks
        assert len(table) == (blocks + 1) * (k + 1)  # each route, then all, in each block and all blocks at once
        assert np.isfinite(table["change"].to_numpy(float)).all()
