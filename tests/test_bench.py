"""The CPU benchmark's pieces: its table, and the compiled-against-eager cases it times."""
from evmamba import bench


def test_table_gives_medians_in_ms_and_the_ratio():
    text = bench.table({"scan L=784 forward": {"reference": 0.0814, "torch": 0.0104}}, "reference", "torch")
    assert text.splitlines() == ["| case | reference (ms) | torch (ms) | speed-up |", "| --- | ---: | ---: | ---: |",
                                 "| scan L=784 forward | 81.4 | 10.4 | 7.8x |"]


def test_compile_cases_run_eager_and_compiled():
    # the same code path as the timed run, through a compiler without code generation (inductor compiles an
    # EVSS block in test_scan_ops, and whole models in the slow tests)
    cases = bench.compile_cases(batches=(1,), size=32, compiler="aot_eager")
    (name, fns), = cases.items()
    assert name == "tiny ES2D 32x32 batch 1 forward" and set(fns) == {"eager", "compiled"}
    for fn in fns.values():
        fn()
