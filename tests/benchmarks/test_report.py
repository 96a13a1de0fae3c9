"""benchmarks/report.py on a small synthetic pytest-benchmark JSON: the tables hold the numbers, the
targets are judged, the plot is a PNG."""

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "report.py")
_spec = importlib.util.spec_from_file_location("benchmark_report", _PATH)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

ENV = {"device": "Test CPU (2 cores)", "torch": "2.99", "triton": "9.9", "cuda": None, "date": "2031-01-02",
       "bench_set": "full"}


def _model(impl, mode, median, batch=8, **extra):
    info = dict(ENV, model="resnet50", mode=mode, batch=batch, image_size=224, impl=impl, median_s=median,
                images_per_s=batch / median, **extra)
    return {"name": f"test_{mode}[resnet50-{impl}]", "stats": {"median": median}, "extra_info": info}


def _op(impl, median, speedup):
    info = dict(ENV, op="bn_act", layer="layer1 block end", direction="forward", impl=impl, median_s=median,
                GBps=77.0e-3 / median, TFLOPs=None, roofline_fraction=0.5, speedup_vs_eager=speedup)
    return {"name": f"test_op[bn_act-{impl}]", "stats": {"median": median}, "extra_info": info}


@pytest.fixture
def results(tmp_path):
    data = {"machine_info": {"resnet_fast": dict(ENV, device_limits={"copy_GBps": 20.0, "matmul_TFLOPs": 1.5,
                                                                      "dtype": "torch.float32"})},
            "benchmarks": [_model("torchvision", "inference", 0.333, speedup_vs_torchvision=1.0),
                           _model("resnet_fast", "inference", 0.231, speedup_vs_torchvision=1.4416),
                           _model("resnet_fast_optimized", "inference", 0.300, speedup_vs_torchvision=1.11,
                                  speedup_vs_onnxruntime=0.833, load_average_1min=[1.0, 2.5]),
                           _model("onnxruntime", "inference", 0.250, speedup_vs_torchvision=1.332,
                                  speedup_vs_onnxruntime=1.0),
                           _model("torchvision", "train", 0.308, batch=4),
                           _model("resnet_fast", "train", 0.423, batch=4, speedup_vs_torchvision=0.728),
                           _op("eager", 0.010, 1.0), _op("resnet_fast", 0.004, 2.5)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_markdown_tables_and_targets(results, tmp_path):
    out, png = tmp_path / "out.md", tmp_path / "out.png"
    assert report.main([str(results), "--markdown", str(out), "--plot", str(png)]) == 0
    text = out.read_text()
    assert "**Test CPU (2 cores)**, torch 2.99, triton 9.9, 2031-01-02" in text
    assert "copy bandwidth 20.0 GB/s, matmul 1.50 TFLOP/s" in text
    assert "| resnet50 | inference | 8 x 224² | resnet_fast | 231.0 | 34.6 | 1.44x | — | — |\n" in text
    assert "| resnet_fast optimize_for_inference | 300.0 | 26.7 | 1.11x | 0.83x | 1.0–2.5 |\n" in text
    assert "| ONNX Runtime (torch.onnx.export) | 250.0 | 32.0 | 1.33x | 1.00x | — |\n" in text
    assert "vs torch.compile" not in text and "peak GiB" not in text  # columns empty in every row: left out
    assert "vs eager NCHW" not in text
    assert "| resnet50 | train | 4 x 224² | resnet_fast | 423.0 | 9.5 | 0.73x | — | — |" in text
    # CPU target: resnet50 eval batch 8 >= 1.3x, judged for both resnet_fast rows; no GPU targets on a CPU file.
    assert "| CPU resnet50 eval, batch 8 >= 1.3x torchvision eager | resnet_fast | 8 | 1.44x | met |" in text
    assert "| resnet_fast optimize_for_inference | 8 | 1.11x | **missed** |" in text
    assert "| CPU resnet50 training step >= 1.0x torchvision eager | resnet_fast | 4 | 0.73x | **missed** |" in text
    assert "| CPU resnet50 inference >= 1.0x ONNX Runtime | resnet_fast optimize_for_inference | 8 | 0.83x | " \
           "**missed** |" in text
    assert "| CPU resnet50 inference >= 1.5x torchvision eager NCHW | resnet_fast optimize_for_inference | 8 | — | — |" \
           in text
    assert "GPU resnet50" not in text
    assert "| bn_act | layer1 block end | forward | resnet_fast | 4.000 | 19.2 | 50% | 2.50x |" in text
    # Rows in a fixed order: the baseline first within each case.
    assert text.index("| torchvision eager | 333.0") < text.index("| resnet_fast | 231.0")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_empty_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"benchmarks": []}))
    assert report.main([str(path)]) == 1
    assert "no resnet_fast benchmark entries" in capsys.readouterr().err
