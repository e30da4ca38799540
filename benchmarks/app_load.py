"""The demo as a hostile and a busy user find it: odd inputs, paths and names, cancelled requests, bursts,
and rounds of varied calls, against a server started here on loopback (a child process, so its memory is
its own). Prints one table: test, result, latency, the server's resident memory after it.

    python benchmarks/app_load.py                 # about 10 minutes on 2 CPU cores
    python benchmarks/app_load.py --rounds 2 --burst 10

Bounded: every call has a timeout, the server listens on 127.0.0.1 only and is stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def start_server(weights_dir: Path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--device", "cpu", "--port", str(port),
                             "--weights-dir", str(weights_dir), "--no-allow-hub-downloads"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from gradio_client import Client
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            return proc, Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # noqa: BLE001 - the server is still starting
            if proc.poll() is not None:
                raise SystemExit(f"the server did not start: {proc.stderr.read()[-2000:]}") from None
            time.sleep(1)
    raise SystemExit("the server did not answer within 120 s")


def files(d: Path) -> dict:
    import torch
    from PIL import Image

    import evmamba
    torch.save({"api_token": "s3cr3t", "db_user": "admin"}, d / "secrets.pt")
    evmamba.save_checkpoint(evmamba.build_model("tiny", seed=1), d / "allowed" / "tiny.pth")
    grey = (np.arange(96 * 96).reshape(96, 96) * 7 % 65536).astype(np.uint16)
    Image.fromarray(grey).save(d / "sixteen.png")
    (d / "big.png").write_bytes(b"\x89PNG" + bytes(25 * 2**20))
    return {"secrets": d / "secrets.pt", "allowed": d / "allowed" / "tiny.pth", "sixteen": d / "sixteen.png",
            "big": d / "big.png"}


VARIED = [  # 30 calls of every kind, with small and medium settings
    ("/partition", {}), ("/partition", dict(scan="SS2D", height=16, width=12)), ("/partition", dict(step=3)),
    ("/erf", {}), ("/erf", dict(level="mixer")), ("/erf", dict(level="block", stage=1)),
    ("/erf", dict(scan="ss2d")), ("/erf", dict(inputs="natural images", count=2)), ("/erf", dict(step=3)),
    ("/attribution", dict(methods=["Saliency"])), ("/attribution", {}),
    ("/attribution", dict(scan="ss2d", methods=["Saliency"])),
    ("/hidden_attention", {}), ("/hidden_attention", dict(route="1")),
    ("/hidden_attention", dict(scan="ss2d", route="0")),
    ("/ablation_table", {}), ("/ablation_table", dict(table="paper_table5")), ("/ablation_table", dict(scan="SS2D")),
    ("/measure_row", dict(step=3)), ("/erf", dict(gate=False)), ("/erf", dict(conv_branch=False)),
    ("/erf", dict(variant="small")), ("/attribution", dict(variant="small", methods=["Saliency"])),
    ("/hidden_attention", dict(variant="small")), ("/partition", dict(height=56, width=56)),
    ("/erf", dict(level="mixer", row=3, col=4)), ("/erf", dict(stages="all-evss")),
    ("/attribution", dict(target=3, methods=["Input x Gradient"])), ("/ablation_table", dict(table="scan_step")),
    ("/erf", dict(seed=5)),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--clients", type=int, default=6)
    args = p.parse_args(argv)
    from gradio_client import handle_file
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "allowed").mkdir()
        f = files(d)
        proc, client = start_server(d / "allowed")
        try:
            def record(test, fn):
                t = time.perf_counter()
                try:
                    result = fn()
                except Exception as e:  # noqa: BLE001 - the reply is the result
                    result = f"error: {str(e).splitlines()[0][:110]}"
                rows.append((test, result, time.perf_counter() - t, rss_mb(proc.pid)))
                print(f"{test}: {rows[-1][1]} ({rows[-1][2]:.1f} s, {rows[-1][3]:.0f} MB)", flush=True)

            def call(api, **kwargs):
                return client.predict(api_name=api, **kwargs)

            record("start", lambda: "ready")
            solo = call("/erf")[1]["data"]
            for name, path in (("server file outside the allowed folder", f["secrets"]),
                               ("/etc/shadow", "/etc/shadow"), ("a folder", "/etc"), ("a missing file", "/no/such.pth"),
                               ("traversal out of the allowed folder", f"{f['allowed'].parent}/../secrets.pt"),
                               ("a Hub name (downloads not allowed)", "hf:someone/anything")):
                record(f"weights: {name}", lambda path=path: call("/erf", weights=str(path)))
            record("weights: allowed folder", lambda: call("/erf", weights=str(f["allowed"]))[2].splitlines()[0][:80])
            record("weights: uploaded file", lambda: call("/erf", weights_upload=handle_file(str(f["allowed"])))[2]
                   .splitlines()[0][:80])
            record("100,000-character weights", lambda: call("/erf", weights="x" * 100_000))
            record("scan=None", lambda: call("/measure_row", scan=None))
            record("16-bit PNG", lambda: call("/partition", upload=handle_file(str(f["sixteen"])))[3].splitlines()[-1])
            record("25 MB image upload", lambda: call("/partition", upload=handle_file(str(f["big"]))))
            record("over budget (base SS2D, all attributions)", lambda: call(
                "/attribution", variant="base", scan="ss2d", methods=["Integrated Gradients", "SmoothGrad",
                                                                      "Saliency", "Input x Gradient"]))

            def cancel_then_solo():
                job = client.submit(api_name="/attribution", methods=["Integrated Gradients", "SmoothGrad"])
                time.sleep(3)
                job.cancel()
                again = call("/erf")[1]["data"]
                return "the next result equals the solo one" if again == solo else "DIFFERENT from the solo one"
            record("cancel an attribution after 3 s, then /erf", cancel_then_solo)

            def burst(n):
                with ThreadPoolExecutor(args.clients) as pool:
                    jobs = [pool.submit(call, "/partition", height=8 + i % 8) for i in range(n)]
                    outcomes = []
                    for j in jobs:
                        try:
                            j.result(timeout=TIMEOUT)
                            outcomes.append("ok")
                        except Exception as e:  # noqa: BLE001 - counted
                            outcomes.append(type(e).__name__)
                return f"{outcomes.count('ok')}/{n} answered" + (
                    f", others: {sorted(set(outcomes) - {'ok'})}" if outcomes.count("ok") < n else "")
            record(f"burst of {args.burst}", lambda: burst(args.burst))
            record(f"burst of {2 * args.burst}", lambda: burst(2 * args.burst))

            def varied_round():
                with ThreadPoolExecutor(args.clients) as pool:
                    jobs = [pool.submit(call, api, **kw) for api, kw in VARIED]
                    bad = []
                    for (api, kw), j in zip(VARIED, jobs):
                        try:
                            j.result(timeout=TIMEOUT)
                        except Exception as e:  # noqa: BLE001 - listed
                            bad.append(f"{api} {kw}: {str(e)[:60]}")
                return f"{len(VARIED) - len(bad)}/{len(VARIED)} answered" + (f"; failed: {bad[:2]}" if bad else "")
            for r in range(args.rounds):
                record(f"round {r + 1} of {len(VARIED)} varied calls ({args.clients} clients)", varied_round)
            peak = max(row[3] for row in rows)
            rows.append(("peak resident memory over the run", f"{peak:.0f} MB", 0.0, rss_mb(proc.pid)))
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n| test | result | latency (s) | server memory (MB) |\n| --- | --- | ---: | ---: |")
    for test, result, seconds, memory in rows:
        print(f"| {test} | {str(result).replace('|', '/')} | {seconds:.1f} | {memory:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
