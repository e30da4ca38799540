"""The GPU benchmark's code path, dry-run on the CPU: rows, the table against the authors' figures,
the budget, and the results file written as rows finish."""
import json

from evmamba import bench_gpu


def test_dry_run_writes_rows_and_a_table(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    report = bench_gpu.main(["--device", "cpu", "--batch", "1", "--size", "64", "--quick", "--variants", "tiny",
                             "--scans", "es2d", "--modes", "eager", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["throughput"] == report["throughput"] and len(saved["throughput"]) == 1
    row = saved["throughput"][0]
    assert row["mode"] == "eager" and all(row[k] > 0 for k in ("inference_fp32", "inference_bf16", "train_step_bf16"))
    assert row["peak_gib"] is None  # peak memory is measured on CUDA only
    text = capsys.readouterr().out
    assert "mamba_ssm backend not available on this device: correctness check skipped" in text
    assert "| tiny | ES2D | eager |" in text and "(5,454)" in text and "(1,724)" in text


def test_budget_leaves_rows_not_timed(tmp_path):
    out = tmp_path / "gpu.json"
    report = bench_gpu.main(["--device", "cpu", "--variants", "tiny", "small", "--scans", "es2d", "ss2d",
                             "--modes", "eager", "compiled", "--budget", "0", "--skip-check", "--out", str(out)])
    assert report["throughput"] == []
    order = [(r["mode"], r["scan"], r["variant"]) for r in report["not_timed"]]
    assert order[:5] == [("eager", "es2d", "tiny"), ("eager", "es2d", "small"), ("eager", "ss2d", "tiny"),
                         ("eager", "ss2d", "small"), ("compiled", "es2d", "tiny")]
    assert len(order) == 8 and json.loads(out.read_text())["not_timed"] == report["not_timed"]


def test_table_gives_ratios_to_the_authors():
    report = {"batch": 128, "device": "NVIDIA H200", "throughput": [
        {"variant": "tiny", "scan": "es2d", "mode": "compiled", "inference_fp32": None, "inference_bf16": 8181.0,
         "train_step_bf16": 2155.0, "peak_gib": 5.0}]}
    row = bench_gpu.table(report).splitlines()[-1]
    assert row == ("| tiny | ES2D | compiled | — | 8,181 (5,454) | 2,155 (1,724) | 5.0 (6.3) | 1.50x | 1.25x |")


def test_compiled_mode_checks_the_compiled_model_first(tmp_path):
    # the same graphs as inductor's, forward and backward, without its code generation (one inductor run
    # of the model is in test_scan_ops)
    report = bench_gpu.main(["--device", "cpu", "--variants", "tiny", "--scans", "es2d", "--modes", "compiled",
                             "--budget", "0", "--check-compiler", "aot_eager", "--size", "32"])
    (check,) = report["checks"]
    assert check["compiled"] and bench_gpu.check_passed(check)


def test_kernel_check_through_the_cpu_stand_in(monkeypatch, capsys):
    # the GPU run's first check, with the kernel's CPU stand-in behind the mamba_ssm backend
    import mamba_ext_stand_in

    import evmamba.scan as scan_module
    from evmamba.scan import cuda
    monkeypatch.setattr(cuda, "extension", lambda: mamba_ext_stand_in)
    monkeypatch.setitem(scan_module._IMPLEMENTATIONS, "mamba_ssm", cuda.run_kernel)
    r = bench_gpu.check_kernel("tiny", "es2d", "cpu")
    # the model trains here (BatchNorm on batch statistics), so the conv branch's first bias, just before a
    # BatchNorm, has a gradient that is zero by construction (its rounding noise differs between backends
    # by 30% of itself): measured on the scale of the largest gradient, it passes
    assert bench_gpu.check_passed(r)
    bench_gpu._print_check(r)
    line = capsys.readouterr().out
    assert line.startswith("check tiny  es2d: logits ") and line.endswith(" ok\n")
