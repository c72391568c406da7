"""``pip install .`` (not editable) gives a working ``tfcompress`` command with its packaged recipes."""
from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from conftest import SST_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def test_tfcompress_run_works_from_a_plain_install_outside_the_checkout(tmp_path, tiny_tokenizer):
    from tfcompress.models.loading import save_model

    # A venv that sees this machine's packages (TensorFlow is not downloaded again) with tfcompress
    # itself installed from a built wheel, not linked to the checkout.
    environment = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(tmp_path / "site"), str(ROOT)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    site = next((environment / "lib").glob("python*/site-packages"))
    (site / "plain-install.pth").write_text(str(tmp_path / "site") + "\n")

    model_dir = tmp_path / "tiny-model"
    save_model(build_tiny_model("sequence"), tiny_tokenizer, model_dir)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST_ROWS)
    for name in ("train.tsv", "validation.tsv", "test.tsv"):
        (data_dir / name).write_text(rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import tfcompress, tfcompress.recipes.sst2 as r; print(r.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(str(tmp_path / "site")), where.stdout  # the installed copy
    entry_points = next((tmp_path / "site").glob("tfcompress-*.dist-info")) / "entry_points.txt"
    assert "tfcompress = tfcompress.cli:main" in entry_points.read_text()  # the `tfcompress` command
    command = [str(environment / "bin" / "python"), "-m", "tfcompress.cli", "run", "sst2", "--smoke",
               "--data-dir", str(data_dir), "--model", str(model_dir), "--output-dir", "run",
               "--stages", "finetune,export,evaluate,release", "--export", "fp32", "--batch-size", "4"]
    done = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "run" / "release" / "fp32" / "model.tflite").is_file()
