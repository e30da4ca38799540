"""Scan routes: coverage, order, padding, and gather/scatter as exact inverses."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evmamba import scan_routes
from evmamba.routes import num_routes

sizes = st.integers(min_value=1, max_value=23)


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, p=st.integers(1, 5))
def test_es2d_reads_every_position_exactly_once(h, w, p):
    r = scan_routes("es2d", h, w, p)
    assert r.num_routes == p * p
    assert sorted(r.index.flatten().tolist()) == list(range(r.padded_height * r.padded_width))
    assert (r.reads() == 1).all()
    assert r.padded_height % p == 0 and r.padded_width % p == 0
    assert r.padded_height - h < p and r.padded_width - w < p


@settings(max_examples=40, deadline=None)
@given(h=sizes, w=sizes)
def test_ss2d_reads_every_position_four_times(h, w):
    r = scan_routes("ss2d", h, w)
    assert r.num_routes == 4 and r.length == h * w and r.padded_shape == (h, w)
    assert (r.reads() == 4).all()
    for k in range(4):
        assert sorted(r.index[k].tolist()) == list(range(h * w))


@settings(max_examples=40, deadline=None)
@given(h=sizes, w=sizes, p=st.integers(1, 4), scan=st.sampled_from(["es2d", "ss2d"]))
def test_merge_after_scan_is_identity(h, w, p, scan):
    p = 2 if scan == "ss2d" else p
    r = scan_routes(scan, h, w, p)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    reads = 4 if scan == "ss2d" else 1
    # cross-scan to (K, C, B, L), then cross-merge back to channels-last (B, H, W, C)
    assert torch.equal(r.cross_merge(r.cross_scan(x)).permute(0, 3, 1, 2), x * reads)


def test_ss2d_order():
    r = scan_routes("ss2d", 2, 3)
    assert r.index.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert [x.reverse for x in r.routes] == [False, False, True, True]


def test_es2d_step2_is_the_authors_order():
    # 3x5 pads to 4x6; sub-maps (even,even) row-major, (odd,even) col-major, (even,odd) row, (odd,odd) col.
    r = scan_routes("es2d", 3, 5, 2)
    assert r.padded_shape == (4, 6)

    def pos(k):
        return [tuple(p) for p in r.positions(k).tolist()]

    assert pos(0) == [(0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4)]
    assert pos(1) == [(1, 0), (3, 0), (1, 2), (3, 2), (1, 4), (3, 4)]
    assert pos(2) == [(0, 1), (0, 3), (0, 5), (2, 1), (2, 3), (2, 5)]
    assert pos(3) == [(1, 1), (3, 1), (1, 3), (3, 3), (1, 5), (3, 5)]
    assert [x.reverse for x in r.routes] == [False] * 4
    assert r.padding_mask()[3].all() and r.padding_mask()[:, 5].all() and not r.padding_mask()[:3, :5].any()


def test_es2d_step3_directions_alternate():
    r = scan_routes("es2d", 9, 9, 3)
    assert [x.order for x in r.routes] == ["row", "col", "row", "col", "row", "col", "row", "col", "row"]
    assert [x.submap for x in r.routes][:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    assert r.tokens_read == 81 and r.length == 9


def test_queries_agree():
    r = scan_routes("es2d", 7, 6, 2)
    rm = r.route_map()
    for k in range(r.num_routes):
        order = r.reading_order(k)
        pos = r.positions(k)
        assert (rm[pos[:, 0], pos[:, 1]] == k).all()
        assert order[pos[:, 0], pos[:, 1]].tolist() == list(range(r.length))
        assert ((order >= 0) == (rm == k)).all()
    assert r.nearest_position(1, 0, 0) == (1, 0)
    with pytest.raises(ValueError, match="route_map"):
        scan_routes("ss2d", 4, 4).route_map()


def test_bad_arguments():
    with pytest.raises(ValueError, match="registered scans are es2d, ss2d"):
        scan_routes("es3d", 4, 4)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        scan_routes("es2d", 4, 4, 0)
    with pytest.raises(ValueError, match="step only applies to scans with a parameter"):
        scan_routes("ss2d", 4, 4, 3)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        scan_routes("es2d", 0, 4)
    with pytest.raises(ValueError, match="routes are for a 4x4 map"):
        scan_routes("es2d", 4, 4).cross_scan(torch.zeros(1, 1, 5, 4))
    assert num_routes("es2d", 4) == 16 and num_routes("ss2d") == 4


def test_route_tables_are_cached_and_bounded(monkeypatch):
    from evmamba import routes as r
    monkeypatch.setattr(r, "_TABLES", {})
    monkeypatch.setattr(r, "_MAX_TABLES", 3)
    first = r.route_tables("es2d", 4, 4, 2, "cpu")
    assert r.route_tables("es2d", 4, 4, 2, torch.device("cpu")) is first
    for size in (5, 6, 7):
        r.route_tables("es2d", size, size, 2, "cpu")
    assert len(r._TABLES) == 3 and ("es2d", 4, 4, 2, "cpu") not in r._TABLES
    ss = r.route_tables("ss2d", 3, 5, 2, "cpu")
    assert ss.readers == 4 and ss.merge_index.numel() == 4 * 15 and ss.scan_index.numel() == 4 * 15
