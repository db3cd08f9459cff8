"""The command line end to end, on tiny settings."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import fastgan
from fastgan.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _summary(output):
    """The JSON summary that `train` prints before the line naming the images."""
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


def test_python_dash_m_fastgan_info_and_train(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    info = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, check=True)
    assert json.loads(info.stdout)["fastgan"] == fastgan.__version__
    out = tmp_path / "ring"
    run = subprocess.run([sys.executable, "-m", "fastgan", "train", "--data", "ring", "--steps",
                          "3", "--batch-size", "32", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # progress to a pipe: whole lines, no bar
    assert "\r" not in run.stderr
    assert [line.split(" |")[0] for line in run.stderr.splitlines()] == [
        "step 1/3 (33%)", "step 2/3 (66%)", "step 3/3 (100%)"]
    summary = _summary(run.stdout)
    assert summary["step"] == 3 and os.path.isfile(summary["checkpoint"])
    assert set(summary["evaluation"]) >= {"modes", "high_quality"}
    assert f"sample images: {summary['samples']}" in run.stdout
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.jsonl").is_file()


def test_train_resume_and_sample_digits(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "digits"
    common = ["train", "--data", "digits", "--image-size", "16", "--batch-size", "16",
              "--out", str(out), "--quiet", "--r1-gamma", "1", "--ema", "0.9"]
    assert main(common + ["--steps", "2"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["evaluation"]["real_classifier_score"] > 8
    assert torch.load(summary["raw_samples"], weights_only=True).shape == (64, 1, 16, 16)
    assert main(common + ["--steps", "3", "--resume"]) == 0
    assert _summary(capsys.readouterr().out)["step"] == 3
    trainer = fastgan.Trainer.load(out / "checkpoint.pt", device="cpu")
    assert trainer.step == 3 and fastgan.models.REGISTRY["DCGANGenerator"]
    # the digits recipe is class-conditional unless told otherwise
    assert trainer.generator.num_classes == 10 and trainer.config.r1_gamma == 1.0

    picture = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "12", "--out",
                 str(picture), "--device", "cpu"]) == 0
    # 12 digits: 4 columns x 3 rows of 18 pixels (padding included) + 2, enlarged 7 times
    assert Image.open(picture).size == (74 * 7, 56 * 7)
    tensor = tmp_path / "samples.pt"
    assert main(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "5", "--out",
                 str(tensor), "--device", "cpu"]) == 0
    assert torch.load(tensor, weights_only=True).shape == (5, 1, 16, 16)


def test_no_conditional_overrides_the_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", "--data", "digits", "--no-conditional", "--steps", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress
    trainer = fastgan.Trainer.load(tmp_path / "out" / "checkpoint.pt", device="cpu")
    assert trainer.generator.num_classes == 0 and trainer.discriminator.num_classes == 0


def test_train_on_an_image_folder(tmp_path, capsys):
    for label in ("a", "b"):
        os.makedirs(tmp_path / "images" / label)
        for index in range(4):
            Image.new("RGB", (24, 24), (index * 60, 0, 0)).save(
                tmp_path / "images" / label / f"{index}.png")
    assert main(["train", "--data", str(tmp_path / "images"), "--image-size", "16",
                 "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "out"),
                 "--quiet", "--conditional"]) == 0
    assert _summary(capsys.readouterr().out)["step"] == 1


@pytest.mark.parametrize("arguments, message", [
    (["--data", "missing-folder"], "no such file"),
    (["--data", "ring", "--conditional"], "no labels"),
    (["--data", "grid", "--image-size", "32"], "image-size"),
    (["--data", "digits", "--image-size", "48"], "image_size"),
    (["--data", "digits", "--channels", "3"], "channels"),
    (["--data", "empty"], "no readable images"),
    (["--data", "ring", "--amp", "--device", "cpu"], "amp"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    os.makedirs("empty")
    with pytest.raises(SystemExit) as error:
        main(["train", "--steps", "1", "--quiet", "--out", "out", *arguments])
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists("out")


def test_bench_passes_arguments_through():
    assert main(["bench", "--help"]) == 0


def test_cyclegan_on_digits_resume_and_translate(tmp_path, capsys):
    """`fastgan cyclegan --data digits` trains, prints its scores, resumes; `fastgan translate`
    writes one translation per input image."""
    out = tmp_path / "run"
    common = ["cyclegan", "--data", "digits", "--batch-size", "2", "--out", str(out), "--quiet"]
    assert main(common + ["--steps", "2"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["step"] == 2
    assert {"class_preservation", "pixel_error"} <= set(summary["evaluation"])
    assert main(common + ["--steps", "3", "--resume"]) == 0
    assert _summary(capsys.readouterr().out)["step"] == 3

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("one.png", "two.jpg"):
        Image.new("L", (18, 14), 40).save(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    assert main(["translate", "--checkpoint", str(out / "checkpoint.pt"), "--input",
                 str(inputs), "--output", str(tmp_path / "translated"), "--direction",
                 "b2a"]) == 0
    written = sorted(p.name for p in (tmp_path / "translated").iterdir())
    assert written == ["one.png", "two.png"]
    with Image.open(tmp_path / "translated" / "one.png") as image:
        assert image.size == (20, 16)  # rounded to multiples of 4


@pytest.mark.parametrize("arguments, message", [
    (["--data", "digits", "--data-a", "x"], "not both"),
    (["--data", "horses"], "the bundled task is 'digits'"),
    (["--data-a", "x"], "both --data-a and --data-b"),
    (["--data", "digits", "--amp", "--device", "cpu"], "amp=True needs a CUDA device"),
])
def test_cyclegan_argument_errors(arguments, message, capsys):
    with pytest.raises(SystemExit):
        main(["cyclegan", *arguments, "--steps", "1"])
    assert message in capsys.readouterr().err


def test_translate_errors_name_the_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["translate", "--checkpoint", str(tmp_path / "missing.pt"), "--input",
              str(tmp_path), "--output", str(tmp_path / "out")])
    assert "missing.pt" in capsys.readouterr().err
