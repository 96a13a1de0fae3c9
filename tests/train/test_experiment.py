"""`resnet-fast experiment degradation`, reduced: plain-20/56 and resnet-20/56 on tiny synthetic
images for two epochs -- the four runs, their records, the figure and the summary."""

import csv
import os

from resnet_fast.train import cli

REDUCED = ["--image-size", "8", "--train-size", "32", "--val-size", "16", "--batch-size", "16", "--epochs", "2",
           "--workers", "0", "--no-progress"]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_degradation_reduced_run(tmp_path, capsys):
    out = str(tmp_path / "deg")
    assert cli.main(["experiment", "degradation", "--output", out, *REDUCED]) == 0
    for arch in ("plain20", "plain56", "resnet20", "resnet56"):
        with open(os.path.join(out, arch, "metrics.csv")) as f:
            assert len(list(csv.DictReader(f))) == 2, arch
    png = read(os.path.join(out, "degradation.png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    with open(os.path.join(out, "summary.csv")) as f:
        summary = list(csv.DictReader(f))
    assert [r["arch"] for r in summary] == ["plain20", "plain56", "resnet20", "resnet56"]
    assert all(r["iterations"] == "4" and 0 <= float(r["final_test_error"]) <= 100 for r in summary)
    capsys.readouterr()

    # a second invocation refuses to overwrite, --resume reuses the finished runs without training
    before = read(os.path.join(out, "plain56", "checkpoint.pt"))
    assert cli.main(["experiment", "degradation", "--output", out, *REDUCED]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(["experiment", "degradation", "--output", out, "--resume", *REDUCED]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert read(os.path.join(out, "plain56", "checkpoint.pt")) == before


def test_degradation_needs_paper_depths(tmp_path, capsys):
    assert cli.main(["experiment", "degradation", "--depths", "20", "21", "--output", str(tmp_path / "d"),
                     *REDUCED]) == 2
    assert "unknown --arch 'plain21'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
