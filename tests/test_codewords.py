"""The K sweep (number of codewords) and the trained layer opened up: encnet.ablation and encnet.teaching.codewords.

Notebook 02 prints the K sweep's table from the committed sweep files; the last test checks that
its saved output is what those files give now, and that it reads them all.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from encnet import ablation
from encnet.config import preset
from encnet.data import SyntheticScenes
from encnet.errors import UserError
from encnet.models import build_model
from encnet.nn.functional import soft_assignment
from encnet.teaching.codewords import assignments, layer_input, mean_assignments

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "02_context_encoding_module.ipynb"


def _sweep(num_codes: int | None, mious: list[float]) -> dict:
    config = preset("synthetic-quick")
    if num_codes is not None:
        config = dataclasses.replace(config, model_options={"num_codes": num_codes})
    iou = [0.5] * 17
    return {"config": config.to_dict(), "alphas": [0.2], "seeds": list(range(len(mious))),
            "runs": [{"model": "encnet", "se_weight": 0.2, "seed": seed, "mIoU": miou, "pixAcc": 0.9, "IoU": iou}
                     for seed, miou in enumerate(mious)]}


def test_the_k_of_each_file_is_read_from_the_config_it_trained():
    runs = ablation.codeword_runs([_sweep(16, [0.5, 0.6]), _sweep(None, [0.7]), _sweep(4, [0.1])])
    assert list(runs) == [4, 16, 32]  # 32: the head's default, for a file whose config names no num_codes
    assert [run["mIoU"] for run in runs[16][1]] == [0.5, 0.6]
    table = ablation.codewords_table([_sweep(16, [0.5, 0.6]), _sweep(None, [0.7])], (3, 4), 17)
    lines = table.splitlines()
    assert lines[1].split()[0] == "16" and "55.00 ± 7.07 (2 seeds)" in lines[1] and "1: 60.00" in lines[1]
    assert lines[2].split()[0] == "32" and "70.00" in lines[2]


def test_a_k_twice_or_a_file_without_encnet_runs_is_refused():
    with pytest.raises(UserError, match="K = 32"):
        ablation.codeword_runs([_sweep(None, [0.5]), _sweep(32, [0.6])])
    empty = _sweep(8, [0.5])
    empty["runs"][0]["model"] = "fcn"
    with pytest.raises(UserError, match="no EncNet run"):
        ablation.codeword_runs([empty])


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("encnet", "small", num_classes=17, num_codes=8).eval()


def test_layer_input_is_what_the_encoding_layer_reads_and_assignments_sum_to_one(small):
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = small.head.enc_module.reduce(small.head.conv(small.backbone(images)["c4"]))
    x = layer_input(small, images)
    torch.testing.assert_close(x, expected)
    weights = assignments(small, images)
    assert weights.shape == (2, 8, *x.shape[2:])
    torch.testing.assert_close(weights.sum(1), torch.ones(2, *x.shape[2:]))
    layer = small.head.enc_module.encoding
    torch.testing.assert_close(weights.flatten(2), soft_assignment(x, layer.codewords, layer.smoothing).detach())
    assert not [h for h in layer._forward_hooks.values()]  # the hook is removed


def test_mean_assignments_split_per_scene(small):
    data = SyntheticScenes("val", num_samples=8, image_size=128)
    mass = mean_assignments(small, data, 8, batch_size=3)
    assert mass.shape == (4, 8)
    torch.testing.assert_close(torch.from_numpy(mass.sum(1)), torch.ones(4, dtype=torch.float64))
    per_image = assignments(small, torch.stack([data[i][0] for i in range(8)])).mean((2, 3)).double()  # (8, K)
    for scene in range(4):
        mine = [i for i in range(8) if data.scene_of(i) == scene]
        if mine:
            torch.testing.assert_close(torch.from_numpy(mass[scene]), per_image[mine].mean(0))

def test_notebook_02_prints_the_k_sweep_of_the_committed_files():
    files = [NOTEBOOKS / "results" / "se_loss_sweep.json", *sorted((NOTEBOOKS / "results").glob("num_codes_*.json"))]
    assert len(files) >= 4, "the K sweep needs at least 4 values of K, 32 among them"
    sweeps = [ablation.load(file) for file in files]
    runs = ablation.codeword_runs(sweeps)
    assert 32 in runs and len(runs) >= 4 and all(len(seeds) == 3 for _, seeds in runs.values())
    val = SyntheticScenes("val", num_samples=4, image_size=128)
    expected = ablation.codewords_table(sweeps, tuple(val.ambiguous), val.num_classes)
    cells = [cell for cell in json.loads(NOTEBOOK.read_text())["cells"]
             if cell["cell_type"] == "code" and "codewords_table" in "".join(cell["source"])]
    assert len(cells) == 1, "notebook 02 prints the K sweep's table in one cell"
    source = "".join(cells[0]["source"])
    assert 'glob("num_codes_*.json")' in source and "se_loss_sweep.json" in source
    printed = "".join("".join(out.get("text", "")) for out in cells[0]["outputs"] if out.get("name") == "stdout")
    assert printed.strip() == expected.strip(), "re-run notebook 02 on the committed K sweep"
