"""FLOPs in the paper's convention and parameters per kind of module."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import evmamba
from evmamba.analysis.cost import CATEGORIES, count_flops, parameter_breakdown, scan_flops

SWITCHES = [dict(), dict(scan="ss2d"), dict(conv_branch=False), dict(gate=False), dict(step=3), dict(step=4),
            dict(stages="all-evss"), dict(stages="ir-first"), dict(scan="ss2d", conv_branch=False, gate=False)]


# ---- the paper's numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant, target, tolerance", [
    ("tiny", 0.8e9, 0.05),     # paper Table 2: 0.8 G (one decimal)
    ("small", 1.343e9, 0.03),  # the authors' training log: 1.343 G
    ("base", 4.0e9, 0.03),     # paper Table 2: 4.0 G
])
def test_released_variants_match_the_paper(variant, target, tolerance):
    total, table = count_flops(evmamba.build_model(variant), image_size=224)
    assert abs(total - target) / target < tolerance, f"{variant}: {total / 1e9:.3f} G"


def test_evmamba_count_flops_is_the_analysis_function():
    model = evmamba.build_model("tiny", num_classes=10)
    assert evmamba.count_flops(model, 96).total == count_flops(model, 96).total


# ---- the per-layer table ----------------------------------------------------------------------------
@pytest.mark.parametrize("switches", SWITCHES[:5])
def test_table_rows_add_up_to_the_totals(switches):
    model = evmamba.build_model("tiny", **switches)
    total, table = count_flops(model, image_size=(96, 128))
    assert table["flops"].sum() == total
    assert (table[list(CATEGORIES)].sum(axis=1) == table["flops"]).all()
    assert table["params"].sum() == evmamba.count_parameters(model)
    blocks = [n for n, m in model.named_modules()
              if type(m).__name__ in ("EVSSBlock", "InvertedResidual", "PatchMerging")]
    assert sorted(blocks + ["patch_embed", "classifier"]) == sorted(table["module"])
    for name in table["module"]:
        assert table.set_index("module").loc[name, "params"] == evmamba.count_parameters(model.get_submodule(name))


def test_known_values_for_the_plain_layers():
    model = evmamba.build_model("tiny")
    rows = count_flops(model, 224).table.set_index("module")
    embed, head = rows.loc["patch_embed"], rows.loc["classifier"]
    assert embed["grid"] == "224x224" and rows.loc["layers.0.blocks.0", "grid"] == "56x56"
    assert embed["conv"] == 48 * 3 * 4 * 4 * 56 * 56        # one multiply-add per weight per output position
    assert embed["norm"] == 5 * 56 * 56 * 48                  # LayerNorm: 5 per element (fvcore)
    assert head["norm"] == 5 * 7 * 7 * 384 and head["pool"] == 7 * 7 * 384 and head["matmul"] == 384 * 1000
    ir = rows.loc["layers.2.1"]                               # inverted residual, 14x14, C=192, m=768
    hw, c, m = 14 * 14, 192, 768
    assert ir["conv"] == hw * (c * m + m * 9 + m * c) + (m * (m // 8) * 2)
    assert ir["norm"] == 2 * hw * (m + m + c)                 # eval BatchNorm: 2 per element
    assert ir["scan"] == 0


@pytest.mark.parametrize("switches", [dict(), dict(scan="ss2d"), dict(step=3), dict(step=4)])
def test_scan_flops_come_from_the_mixers_routes(switches):
    """9·B·L·D·N + B·D·L per mixer, with L and D from its routes: ES2D pads (odd grids here: 72 -> 18, 9)."""
    model = evmamba.build_model("tiny", stages="all-evss", **switches)
    batch = 2
    table = count_flops(model, 72, batch_size=batch).table.set_index("module")
    grids = model.stage_grids(72, 72)
    for name, mixer in model.mixers():
        stage = int(name.split(".")[1])
        routes = mixer.routes(*grids[stage])
        expected = scan_flops(batch, routes.length, routes.num_routes * mixer.d_inner, mixer.d_state)
        assert table.loc[name.rsplit(".op", 1)[0], "scan"] == expected
    if switches.get("step") == 4:  # 9x9 at step 4 pads to 12x12: 16 routes of 9 tokens
        assert model.layers[1].blocks[0].op.routes(9, 9).length == 9


def test_scan_formula():
    assert scan_flops(1, 196, 768, 16) == 9 * 196 * 768 * 16 + 196 * 768
    assert scan_flops(2, 10, 4, 3, with_d=False) == 9 * 2 * 10 * 4 * 3


# ---- against torch's own counter --------------------------------------------------------------------
@pytest.mark.parametrize("switches", [dict(), dict(scan="ss2d"), dict(step=3, stages="all-evss"),
                                      dict(conv_branch=False, gate=False, stages="ir-first")])
def test_conv_and_matmul_part_matches_torch_flop_counter(switches):
    """torch counts 2 FLOPs per multiply-add for convolutions and matrix products and nothing else; the
    reference scan is elementwise, so torch counts nothing inside it either. 40x40: grids 10, 5, 3, 2."""
    model = evmamba.build_model("tiny", backend="reference", **switches).eval()
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(torch.randn(1, 3, 40, 40))
    total, table = count_flops(model, 40)
    assert counter.get_total_flops() == 2 * int(table[["conv", "matmul"]].sum().sum())
    per_module = counter.get_flop_counts()
    for _, row in table.iterrows():
        torch_row = sum(per_module.get(f"EfficientVMamba.{row['module']}", {}).values())
        assert torch_row == 2 * (row["conv"] + row["matmul"]), row["module"]


def test_the_scan_is_counted_once_and_the_model_left_alone():
    model = evmamba.build_model("tiny", backend="torch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = count_flops(model, 64)
    model.set_scan_backend("reference")
    assert count_flops(model, 64).total == first.total  # the scan never runs: no backend's inner ops counted
    for _, mixer in model.mixers():
        assert "scan_map" not in vars(mixer)
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_batch_scales_every_count():
    model = evmamba.build_model("tiny", scan="ss2d")
    one, two = count_flops(model, 64), count_flops(model, 64, batch_size=2)
    assert two.total == 2 * one.total


def test_bad_arguments_say_what_to_do():
    model = evmamba.build_model("tiny")
    with pytest.raises(ValueError, match="image_size"):
        count_flops(model, image_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        count_flops(model, batch_size=0)
    with pytest.raises(ValueError, match="torch module"):
        count_flops("tiny")


# ---- parameters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("switches", SWITCHES[:4] + [dict(stages="all-evss"), dict(stages="all-ir")])
def test_parameter_groups_add_up(switches):
    model = evmamba.build_model("tiny", **switches)
    table = parameter_breakdown(model)
    assert list(table.index) == ["scan mixer", "conv branch", "gate", "inverted residual", "rest"]
    assert table["params"].sum() == evmamba.count_parameters(model)
    assert table["share"].sum() == pytest.approx(1.0)
    mixers = sum(evmamba.count_parameters(m) for _, m in model.mixers())
    assert table.loc["scan mixer", "params"] == mixers
    if switches.get("conv_branch") is False:
        assert table.loc["conv branch", "params"] == 0
    if switches.get("se") is False:
        assert table.loc["gate", "params"] == 0
    if switches.get("stages") == "all-evss":
        assert table.loc["inverted residual", "params"] == 0
    if switches.get("stages") == "all-ir":
        assert table.loc["scan mixer", "params"] == table.loc["gate", "params"] == 0


def test_parameter_groups_of_the_released_tiny():
    table = parameter_breakdown(evmamba.build_model("tiny"))
    # one EVSS block of width C: conv branch = dw 3x3 + bias, BN, 1x1 + bias
    conv = sum(9 * c + c + 2 * c + c * c + c for c in (48, 96)) * 2
    assert table.loc["conv branch", "params"] == conv
    gate = sum(2 * c + c * (c // 8) + c // 8 + (c // 8) * c + c for c in (48, 96)) * 2
    assert table.loc["gate", "params"] == gate
