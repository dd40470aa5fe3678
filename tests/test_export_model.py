"""A trained run as one file (issue 27): two folds trained, exported, predicted from the zip alone exactly as from
the training folder; zips that are damaged, of another dataset or of another plan refused before any scan."""
import json
import shutil
import zipfile

import pytest
import torch

from light_training.config import apply_overrides
from light_training.inference.model_package import open_model
from light_training.io import read_json, read_volume, write_volume
from light_training.postprocessing import Postprocessing, write_postprocessing
from light_training.stages.export import export
from light_training.stages.predict import predict
from light_training.stages.train import train
from test_ddp import preprocessed_synthetic

PREDICT = ["--device=cpu", "--torch_compile=False", "--mirror_axes=[]", "--overlap=0.25", "--seed=3"]


def stage(repo_root, script, function, *args):
    """A numbered script's stage in this process, with its constants and these overrides."""
    return function(apply_overrides({"__file__": str(repo_root / script)}, list(args)), script)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    """Folds 0 and 1 of a tiny Diff-UNet, one step each, on five synthetic CTs; two raw scans to predict."""
    root = tmp_path_factory.mktemp("run")
    train_dir = preprocessed_synthetic(root, num_cases=5)
    logdir = root / "logs"
    for fold in (0, 1):
        torch.manual_seed(fold)
        stage(repo_root, "2_train_diffunet_aiib2023.py", train, f"--data_dir={train_dir}", f"--logdir={logdir}",
              f"--fold={fold}", "--device=cpu", "--model_preset=tiny", "--patch_size=[16,16,16]", "--max_epoch=1",
              "--num_iterations_per_epoch=1", "--batch_size=1", "--num_workers=0", "--val_every=1",
              "--num_val_patches=1", "--augmentation=False", "--seed=" + str(fold))
    scans = root / "scans"
    for path in sorted((root / "raw_data" / "AIIB23_Train_T1" / "img").glob("*.nii.gz"))[:2]:
        write_volume(*read_volume(path), scans / path.name)
    return root, train_dir, logdir, scans


def test_two_folds_exported_and_predicted_from_an_empty_folder_identically(trained, repo_root, tmp_path):
    root, _, logdir, scans = trained
    write_postprocessing(Postprocessing(foreground=True, decision={"note": "written by the test"}), logdir)
    (logdir / "crossval").mkdir(exist_ok=True)
    (logdir / "crossval" / "diffunet_summary.json").write_text('{"IoU": {"mean": 0.5}}')
    try:
        output = tmp_path / "out" / "model.zip"
        stage(repo_root, "tools/export_model.py", export, f"--logdir={logdir}", f"--output={output}")
    finally:
        (logdir / "postprocessing.json").unlink()
    with zipfile.ZipFile(output) as archive:
        names = set(archive.namelist())
        info = json.loads(archive.read("model.json"))
    assert {"model.json", "plans.json", "dataset.json", "postprocessing.json", "crossval/diffunet_summary.json",
            "fold_0/checkpoint.pt", "fold_1/checkpoint.pt", "fold_0/training_config.json"} <= names
    assert info["dataset"] == "aiib2023" and info["folds"] == [0, 1] and info["classes"] == {"background": 0,
                                                                                              "airway": 1}
    assert info["preset"] == "tiny" and info["channels"] == ["CT"] and set(info["sha256"]) == names - {"model.json"}

    moved = tmp_path / "elsewhere"  # another machine: the zip alone, in an empty folder
    moved.mkdir()
    shutil.copy(output, moved / "model.zip")
    from_zip, from_run = tmp_path / "from_zip", tmp_path / "from_run"
    stage(repo_root, "3_predict_aiib2023.py", predict, f"--model={moved / 'model.zip'}", f"--input_dir={scans}",
          f"--save_dir={from_zip}", *PREDICT)
    write_postprocessing(Postprocessing(foreground=True), logdir)  # the run's folder, as it was exported
    try:
        stage(repo_root, "3_predict_aiib2023.py", predict, f"--logdir={logdir}", "--folds=[0,1]",
              f"--input_dir={scans}", f"--save_dir={from_run}", *PREDICT)
    finally:
        (logdir / "postprocessing.json").unlink()
    cases = sorted(p.name for p in scans.iterdir())
    assert sorted(p.name for p in from_zip.glob("*.nii.gz")) == cases
    for name in cases:
        assert (from_zip / name).read_bytes() == (from_run / name).read_bytes(), name
        case = name.removesuffix(".nii.gz")
        zip_record, run_record = (read_json(d / f"{case}_record.json") for d in (from_zip, from_run))
        assert zip_record["fingerprint"] == run_record["fingerprint"]  # same weights, same settings
        assert zip_record["postprocessing"] == {"foreground": True, "labels": []}
        assert zip_record["checkpoints"] == [f"{moved / 'model.zip'}:fold_{k}/checkpoint.pt" for k in (0, 1)]


def test_damaged_foreign_and_other_plan_zips_are_refused_before_any_scan(trained, repo_root, tmp_path):
    root, train_dir, logdir, _ = trained
    good = tmp_path / "good.zip"
    stage(repo_root, "tools/export_model.py", export, f"--logdir={logdir}", "--folds=[1]", f"--output={good}")
    assert open_model(good, "aiib2023").info["folds"] == [1]
    written = stage(repo_root, "3_predict_aiib2023.py", predict, f"--model={good}", f"--data_dir={train_dir}",
                    f"--save_dir={tmp_path / 'held_out'}", *PREDICT)  # the plan of data_dir: its held-out fold
    assert len(written) == 1 and read_json(tmp_path / "held_out" / written[0].name.replace(".nii.gz", "_record.json")
                                           )["checkpoints"] == [f"{good}:fold_1/checkpoint.pt"]
    data = good.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "edited.zip", "w") as edited:
        for item in source.infolist():  # the plan changed behind model.json's back
            content = source.read(item)
            edited.writestr(item, content.replace(b'"CT"', b'"MR"') if item.filename == "plans.json" else content)
    never_read = tmp_path / "no_scans_here"  # a refusal must come before the scans are even looked for
    for name, message in (("truncated.zip", "truncated.zip: not a readable model zip"),
                          ("edited.zip", "edited.zip: member plans.json is damaged"),
                          ("missing.zip", "missing.zip: no such model file")):
        with pytest.raises(ValueError, match=message):
            stage(repo_root, "3_predict_aiib2023.py", predict, f"--model={tmp_path / name}",
                  f"--input_dir={never_read}", f"--save_dir={tmp_path / 'x'}", *PREDICT)
    with pytest.raises(ValueError, match="good.zip: a model of dataset 'aiib2023', this script predicts 'brats2023'"):
        stage(repo_root, "brats2023/4_predict_brats2023.py", predict, f"--model={good}",
              f"--input_dir={never_read}", f"--save_dir={tmp_path / 'x'}", *PREDICT)
    other = tmp_path / "other" / "train"  # preprocessed cases of another plan (another spacing)
    other.mkdir(parents=True)
    plans = read_json(train_dir.parent / "plans.json")
    (other.parent / "plans.json").write_text(json.dumps({**plans, "target_spacing": [3.0, 3.0, 3.0]}))
    with pytest.raises(ValueError, match=r"good.zip: a model of another plan than .*plans.json .*target_spacing"):
        stage(repo_root, "3_predict_aiib2023.py", predict, f"--model={good}", f"--data_dir={other}",
              f"--save_dir={tmp_path / 'x'}", *PREDICT)
    with pytest.raises(ValueError, match="not both"):
        stage(repo_root, "3_predict_aiib2023.py", predict, f"--model={good}", "--folds=[0]", *PREDICT)


def test_a_converted_release_checkpoint_exports_the_same_way(repo_root, tmp_path):
    """The converter's output has a minimal plan and no fold (light_training.release's release_checkpoint); a
    tiny network stands in for the release's 62.8 M parameters."""
    from diffunet import build_network
    from light_training.checkpoint import save_checkpoint

    model = build_network("diffunet", 1, 2, preset="tiny")
    plans = {"dataset": "aiib2023", "channel_names": ["CT"], "labels": [0, 1], "label_names": ["background", "airway"],
             "num_classes": 2}
    save_checkpoint({"model_class": "DiffUNet", "model_config": dict(model.config), "model": model.state_dict(),
                     "plans": plans, "config": {"converted_from": "release.pt", "dropped": []}}, tmp_path / "ours.pt")
    stage(repo_root, "tools/export_model.py", export, f"--checkpoint={tmp_path / 'ours.pt'}",
          f"--output={tmp_path / 'release.zip'}")
    package = open_model(tmp_path / "release.zip", "aiib2023")
    assert package.info["folds"] == [0] and package.info["classes"] == {"background": 0, "airway": 1}
    assert package.members == ("fold_0/checkpoint.pt",) and package.postprocessing is None
