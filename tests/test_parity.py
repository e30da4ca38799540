"""Logits against the authors' model: the parity case computed with their code, and a literal second
reading of their forward pass (tests/official.py) for SS2D and for odd stage sizes."""
import official
import pytest
import torch
from conftest import rel_err

from evmamba import build_model, load_checkpoint


@pytest.fixture(scope="module")
def parity_case():
    from conftest import DATA
    return torch.load(DATA / "parity_tiny_es2d_64.pt")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_parity_case_from_the_authors_code(parity_case, official_weights, backend):
    model = build_model("tiny", backend=backend).eval()
    load_checkpoint(model, official_weights("tiny", parity_case["weights_seed"]), strict=True)
    with torch.no_grad():
        logits = model(parity_case["input"])
    assert rel_err(logits, parity_case["logits"]) < 1e-4


def test_literal_reading_matches_the_authors_code(parity_case, official_weights):
    logits = official.forward(official_weights("tiny", parity_case["weights_seed"]), parity_case["input"])
    assert rel_err(logits, parity_case["logits"]) < 1e-4


CASES = [  # variant, scan, (H, W), weight seed. 72x56 and 100x84 give odd stage grids (9x7, 25x21, ...).
    ("tiny", "es2d", (224, 224), 3),
    ("tiny", "ss2d", (224, 224), 3),
    ("tiny", "es2d", (72, 56), 4),
    ("tiny", "ss2d", (72, 56), 4),
    ("tiny", "es2d", (100, 84), 5),
    ("tiny", "ss2d", (100, 84), 5),
    ("tiny", "es2d", (37, 45), 6),
    ("small", "es2d", (72, 56), 7),
    ("small", "ss2d", (64, 96), 7),
    ("base", "es2d", (72, 56), 8),
    ("base", "ss2d", (40, 40), 8),
]


@pytest.mark.parametrize("variant,scan,size,seed", CASES, ids=lambda c: str(c))
def test_logits_match_the_literal_reading(official_weights, variant, scan, size, seed):
    sd = official_weights(variant, seed)
    model = build_model(variant, scan=scan).eval()
    load_checkpoint(model, sd, strict=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model(x)
    assert rel_err(ours, official.forward(sd, x, scan)) < 1e-4
