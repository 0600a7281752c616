"""The command never loses a user's data: inputs, runs and earlier outputs are never replaced,
every file is whole and has the user's permissions, a bad file in a batch is named and the rest
run, and every stop (argument error, divergence, Ctrl-C) says what happened and what to do.

Numbers in the test names are the cases of the issue "Safe with a lab's own files".
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import minunet as mu
from minunet.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import TINY, make_run, snapshot, write_tif


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("safety"))


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    for name in ("a", "b"):
        write_tif(folder / f"{name}.tif", (rng.random((40, 36)) * 255).astype(np.uint8))
    return folder


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------- 1. inputs are sacred
def test_1_predict_refuses_to_write_over_its_inputs(tiny_run, images, capsys):
    _, run = tiny_run
    before = snapshot(images)
    code, _, err = run_cli(capsys, ["predict", run, images, "--out", images])
    assert code == 2 and "input folder" in err, err
    # an input file's own folder: refused as the API refuses it (inference.check_outputs)
    code, _, err = run_cli(capsys, ["predict", run, images / "a.tif", "--out", images])
    assert code == 2 and "folder of the input" in err and "a.tif" in err, err
    # an input where another input's overlay would be written: refused, even with --overwrite
    out = images.parent / "out"
    (out / "overlays").mkdir(parents=True)
    picture = out / "overlays" / "a.png"
    picture.write_bytes(b"a user's picture")
    code, _, err = run_cli(capsys, ["predict", run, images / "a.tif", picture, "--out", out,
                                    "--overlays", "--overwrite"])
    assert code == 2 and "would replace the input" in err and "a.png" in err, err
    assert picture.read_bytes() == b"a user's picture"
    assert snapshot(images) == before


def test_1_predict_refuses_to_replace_earlier_outputs(tiny_run, images, tmp_path, capsys):
    _, run = tiny_run
    out = tmp_path / "pred"
    assert run_cli(capsys, ["predict", run, images, "--out", out])[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(capsys, ["predict", run, images, "--out", out])
    assert code == 2 and "--overwrite" in err, err
    assert snapshot(out) == before
    assert run_cli(capsys, ["predict", run, images, "--out", out, "--overwrite"])[0] == 0


# -------------------------------------------------------------------- 2. an existing run
def test_2_train_into_an_existing_run_changes_nothing(tiny_run, capsys):
    data_dir, run = tiny_run
    before = snapshot(run)
    # an argument error (the crop is larger than the 64-px images) ...
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, "--crop", "128"])
    assert code == 2, err
    # ... and a valid call: both refused, the run untouched
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])
    assert code == 2 and "--resume" in err and "--overwrite" in err, err
    assert snapshot(run) == before


def test_2_argument_errors_leave_no_run_folder(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "new_run"
    for bad in (["--crop", "128"], ["--crop", "30"], ["--depth", "0"], ["--epochs", "0"],
                ["--val-fraction", "1.5"], ["--lr", "-1"]):
        code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY, *bad])
        assert code == 2 and "Traceback" not in err, (bad, err)
        assert not run.exists(), bad


def test_2_overwrite_replaces_a_run_explicitly(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])[0] == 0
    (run / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')  # an older, longer run
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY,
                            "--overwrite"])[0] == 0
    assert len((run / "log.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------- 3. resume finds the run's data
def test_3_resume_from_another_folder_uses_the_runs_data(tiny_run, tmp_path, capsys,
                                                        monkeypatch):
    data_dir, _ = tiny_run
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    os.symlink(data_dir, project / "cells")
    assert run_cli(capsys, ["train", "--data", "cells", "--out", "run", *TINY])[0] == 0
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "cells" / "images").mkdir(parents=True)  # a decoy ./cells: unusable data
    (elsewhere / "cells" / "labels").mkdir()
    write_tif(elsewhere / "cells" / "images" / "x.tif", np.zeros((64, 64), np.float32))
    write_tif(elsewhere / "cells" / "labels" / "x.tif", np.full((64, 64), 1.5, np.float32))
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(capsys, ["train", "--resume", project / "run", "--epochs", "2"])
    assert code == 0, err
    log = (project / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_3_resume_says_when_the_data_is_gone(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    data_copy = tmp_path / "data"
    os.symlink(data_dir, data_copy)
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_copy, "--out", run, *TINY])[0] == 0
    data_copy.unlink()
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
    assert code == 2 and "--data" in err and str(data_copy) in err, err
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2", "--data",
                                    data_dir])
    assert code == 0, err


# ---------------------------------------------------------------------- 4. name collisions
def test_4_same_stem_in_two_formats_is_refused(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    folder = tmp_path / "mixed"
    write_tif(folder / "x.tif", np.zeros((32, 32), np.uint8))
    np.save(folder / "x.npy", np.ones((32, 32), np.float32))
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, ["predict", run, folder, "--out", out])
    assert code == 2 and "x.tif" in err and "x.npy" in err, err
    assert not out.exists()


# -------------------------------------------------------- 5. atomic pictures, stale temp files
def test_5_interrupted_overlay_leaves_no_broken_file(tiny_run, images, tmp_path, capsys,
                                                     monkeypatch):
    _, run = tiny_run

    def half_png(image, true_labels, labels, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half a picture")
        raise KeyboardInterrupt

    monkeypatch.setattr(mu.viz, "overlay", half_png)
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, ["predict", run, images, "--out", out, "--overlays"])
    assert code == 130 and "interrupted" in err, err
    assert [p.name for p in out.rglob("*.png")] == []
    assert [p.name for p in out.rglob(".*")] == []


def test_5_stale_temporary_files_are_removed(tiny_run, images, tmp_path, capsys):
    data_dir, run0 = tiny_run
    out = tmp_path / "pred"
    out.mkdir()
    (out / ".a.tif.x1y2.tmp.tif").write_bytes(b"half")
    assert run_cli(capsys, ["predict", run0, images, "--out", out])[0] == 0
    assert not list(out.glob(".*"))
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])[0] == 0
    (run / ".best.npz.abcd.tmp").write_bytes(b"half")
    (run / ".last.npz.efgh.tmp").write_bytes(b"half")
    assert run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])[0] == 0
    assert not list(run.glob(".*"))


# ------------------------------------------------------------------ 6. one bad file in a batch
def test_6_a_bad_file_is_named_and_the_rest_still_run(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    folder = tmp_path / "batch"
    folder.mkdir()
    np.save(folder / "a.npy", np.random.default_rng(0).random((32, 32)).astype(np.float32))
    np.save(folder / "b.npy", np.full((32, 32), np.nan, np.float32))
    np.save(folder / "c.npy", np.random.default_rng(1).random((32, 32)).astype(np.float32))
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, ["predict", run, folder, "--out", out])
    assert code == 2, err
    assert "b.npy" in err and "NaN" in err and "1 of 3" in err, err
    assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "c.tif"]


def test_6_a_bad_first_file_is_named_and_the_rest_still_run(tiny_run, tmp_path, capsys):
    """The first file is read while the command sets itself up (`cli._read_ahead`); a file
    that cannot be read is still reported in its turn, and the others are segmented."""
    _, run = tiny_run
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "a.tif").write_bytes(b"not a TIFF at all")
    np.save(folder / "b.npy", np.random.default_rng(1).random((32, 32)).astype(np.float32))
    out = tmp_path / "pred"
    code, stdout, err = run_cli(capsys, ["predict", run, folder, "--out", out])
    assert code == 2, err
    assert "a.tif" in err and "1 of 2" in err, err
    assert "b.npy" in stdout, stdout
    assert sorted(p.name for p in out.glob("*.tif")) == ["b.tif"]


def test_6_the_first_image_is_read_once_and_its_memory_mapped_ahead(tiny_run, tmp_path,
                                                                    capsys, monkeypatch):
    """The command reads the first file once, maps about the memory its prediction takes
    (`predict.memory_estimate`) on another thread while Numba sets up, and frees that before
    the first image; its dry run takes the images' type of numbers (16-bit here)."""
    import minunet.cli as cli
    import minunet.inference as inference
    from minunet.kernels import memory
    from minunet.predict import memory_estimate

    _, run = tiny_run
    folder = tmp_path / "batch"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 4000, (48, 80), np.uint16))
    events, reads, blanks = [], [], []

    class Recorded(memory.Prefault):
        def __init__(self, nbytes):
            events.append(("map", nbytes))
            super().__init__(nbytes)

        def release(self):
            events.append(("release",))
            super().release()

    def read(path, axes=None):
        reads.append(Path(path).name)
        return read_any(path, axes)

    def segment(model, image, **kwargs):
        blanks.append(image.data.dtype)
        return segment_real(model, image, **kwargs)

    read_any, segment_real = cli._read_any, inference.segment
    monkeypatch.setattr(memory, "Prefault", Recorded)
    monkeypatch.setattr(cli, "_read_any", read)
    monkeypatch.setattr(inference, "segment", segment)
    code, _, err = run_cli(capsys, ["predict", run, folder, "--out", tmp_path / "pred"])
    assert code == 0, err
    assert reads == ["a.tif", "b.tif"]
    expected = memory_estimate(mu.load(run).model, (48, 80), 1024)
    assert expected and events == [("map", expected), ("release",)]
    assert blanks == [np.uint16]


# ------------------------------------------------------------------- 7./8. crafted checkpoints
def test_7_crafted_checkpoint_is_refused_by_the_command(tiny_run, images, tmp_path, capsys):
    _, run = tiny_run
    with np.load(run / "best.npz") as npz:
        contents = dict(npz)
    header = json.loads(str(contents["minunet_header"]))
    header["model_config"]["depth"] = 1000
    contents["minunet_header"] = np.array(json.dumps(header))
    bad = tmp_path / "deep.npz"
    np.savez(bad, **contents)
    code, _, err = run_cli(capsys, ["predict", bad, images, "--out", tmp_path / "o"])
    assert code == 2 and "deep.npz" in err and "depth" in err, err
    contents["minunet_header"] = np.array(json.dumps(
        {k: v for k, v in header.items() if k != "model_config"}))
    np.savez(bad, **contents)
    code, _, err = run_cli(capsys, ["predict", bad, images, "--out", tmp_path / "o"])
    assert code == 2 and "deep.npz" in err and "no 'model_config' entry" in err, err
    assert not (tmp_path / "o").exists()


def test_8_divergence_and_ctrl_c_end_with_a_message(tiny_run, tmp_path, capsys, monkeypatch):
    data_dir, _ = tiny_run
    run = tmp_path / "run"

    def diverge(*args, **kwargs):
        raise mu.TrainingDiverged("train stopped: the loss became nan; try a lower lr")

    monkeypatch.setattr(mu, "train", diverge)
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])
    assert code == 1 and "loss became nan" in err and "Traceback" not in err, err

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mu, "train", interrupt)
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY,
                                    "--overwrite"])
    assert code == 130, err
    assert err.strip().splitlines()[-1].endswith(f"minunet train --resume {run}"), err


def test_8_negative_label_ids_name_the_file(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    pred = tmp_path / "pred"
    for f in sorted((data_dir / "labels").glob("*.tif")):
        write_tif(pred / f.name, tifffile.imread(f).astype(np.int32))
    bad = sorted(pred.glob("*.tif"))[1]
    write_tif(bad, -tifffile.imread(bad).astype(np.int32))
    code, _, err = run_cli(capsys, ["evaluate", "--pred", pred, "--truth", data_dir / "labels",
                                    "--out", tmp_path / "report"])
    assert code == 2 and bad.name in err and "negative" in err, err
    assert (tmp_path / "report" / "report.json").is_file()  # the other images are scored
    assert json.loads((tmp_path / "report" / "report.json").read_text())["n_images"] == 5


# ------------------------------------------------------------------------ 9. permissions
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_9_every_output_gets_the_users_umask(tiny_run, images, tmp_path, capsys, umask):
    data_dir, _ = tiny_run
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])[0] == 0
        out = tmp_path / "pred"
        assert run_cli(capsys, ["predict", run, images, "--out", out, "--overlays",
                                "--probs"])[0] == 0
        report = tmp_path / "report"
        assert run_cli(capsys, ["evaluate", "--pred", data_dir / "labels", "--truth",
                                data_dir / "labels", "--out", report])[0] == 0
    finally:
        os.umask(old)
    files = [p for d in (run, out, report) for p in d.rglob("*") if p.is_file()]
    assert len(files) >= 13
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


# ---------------------------------------------------------------------- 10. --resume --epochs
def test_10_resume_with_epochs_extends_or_refuses(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])[0] == 0
    code, _, err = run_cli(capsys, ["train", "--resume", run])
    assert code == 2 and "finished its 1 epochs" in err and "--epochs" in err, err
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "1"])
    assert code == 2 and "more than 1" in err, err
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "3", "--lr", "0.1"])
    assert code == 2 and "--lr" in err, err
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
    assert code == 0, err
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_1_generate_and_evaluate_do_not_replace_earlier_outputs(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    before = snapshot(data_dir)
    code, _, err = run_cli(capsys, ["generate", "--n", "2", "--size", "32", "--out", data_dir])
    assert code == 2 and "--overwrite" in err, err
    assert snapshot(data_dir) == before
    labels = data_dir / "labels"
    code, _, err = run_cli(capsys, ["evaluate", "--pred", labels, "--truth", labels, "--out",
                                    labels])
    assert code == 2 and "input folders" in err, err
    report = tmp_path / "report"
    argv = ["evaluate", "--pred", labels, "--truth", labels, "--out", report]
    assert run_cli(capsys, argv)[0] == 0
    report_before = snapshot(report)
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and "--overwrite" in err, err
    assert snapshot(report) == report_before and snapshot(data_dir) == before
    assert run_cli(capsys, [*argv, "--overwrite"])[0] == 0


def test_7_unusable_stored_settings_are_reported_once(tiny_run, images, tmp_path, capsys):
    _, run = tiny_run
    with np.load(run / "best.npz") as npz:
        contents = dict(npz)
    header = json.loads(str(contents["minunet_header"]))
    header["metadata"]["normalization"] = {"method": "zscore!"}
    contents["minunet_header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "odd.npz", **contents)
    code, _, err = run_cli(capsys, ["predict", tmp_path / "odd.npz", images, "--out",
                                    tmp_path / "o"])
    assert code == 2 and "odd.npz" in err and "zscore!" in err, err
    assert err.count("zscore!") == 1 and not (tmp_path / "o").exists()


def test_2_a_run_may_not_live_among_the_training_images(tmp_path, capsys):
    folder = tmp_path / "cells"
    for i in range(4):
        write_tif(folder / f"a{i}.tif", np.zeros((64, 64), np.uint8))
        write_tif(folder / f"a{i}_masks.tif", np.eye(64, dtype=np.uint16))
    before = snapshot(folder)
    code, _, err = run_cli(capsys, ["train", "--data", folder, "--out", folder, *TINY,
                                    "--overwrite"])
    assert code == 2 and "of its own" in err, err
    assert snapshot(folder) == before
