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


def test_comparison_gives_each_backend_and_each_ratio():
    m = {"scan L=784 forward": {"reference": 0.08, "torch": 0.01, "cpu_fused": 0.0025}}
    text = bench.comparison(m, ("reference", "torch", "cpu_fused"), [("reference", "torch"), ("torch", "cpu_fused")])
    assert text.splitlines() == [
        "| case | reference (ms) | torch (ms) | cpu_fused (ms) | torch vs reference | cpu_fused vs torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| scan L=784 forward | 80.0 | 10.0 | 2.5 | 8.0x | 4.0x |"]


def test_scan_cases_cover_the_study_and_224_shapes():
    cases = bench.scan_cases([784], study_shapes=[(64, 96, 16)])
    assert list(cases) == ["scan batch 64 d=96 L=16 forward", "scan batch 64 d=96 L=16 forward+backward",
                           "scan L=784 forward", "scan L=784 forward+backward"]
    assert set(cases["scan L=784 forward"]) == {"reference", "torch", "cpu_fused"}


def test_compare_times_the_reference_after_the_interleaved_fast_backends():
    calls = []
    cases = {"case": {b: (lambda b=b: calls.append(b)) for b in ("reference", "torch", "cpu_fused")}}

    class Bar:
        moved = 0

        def update(self, n):
            self.moved += n
    bar = Bar()
    medians = bench.compare(cases, 3, bar)
    # warm-up, then the fast two rotated, then the reference's warm-up and its three
    assert calls == ["torch", "cpu_fused", "torch", "cpu_fused", "cpu_fused", "torch", "torch", "cpu_fused",
                     "reference"] + ["reference"] * 3
    assert set(medians["case"]) == {"reference", "torch", "cpu_fused"}
    assert bar.moved == 3 * bench.blocks(cases) == 6
