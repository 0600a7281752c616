"""Training runs (minunet.runs): the command and Python make the same run, fine-tuning from a
model, and the rules of a user's files on every path (issue findings named in each test)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from cli_helpers import TINY, blob_image, make_run, snapshot, write_tif

import minunet as mu
from minunet import workflow
from minunet.cli import main
from minunet.io.locks import LOCK_NAME, FolderLock

FAST = ["--samples-per-epoch", "8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def lock_as(folder, pid: int) -> None:
    import socket

    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                "command": "minunet train", "started": 0}))


# ------------------------------------------------------------ the command is the API
def test_command_and_api_make_the_same_run_file_for_file(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    args = ["--epochs", "2", "--batch-size", "2", "--depth", "2", "--base", "4", "--crop", "32",
            "--val-fraction", "0.34", *FAST]
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", tmp_path / "cli", *args])[0] == 0
    mu.fit(data_dir, tmp_path / "api", epochs=2, batch_size=2, depth=2, base=4, crop=32,
           val_fraction=0.34, samples_per_epoch=8, progress=False)
    cli, api = snapshot(tmp_path / "cli"), snapshot(tmp_path / "api")
    assert sorted(cli) == sorted(api) == sorted(mu.runs.RUN_FILES)
    for name in ("last.npz", "best.npz", "curves.png"):
        assert cli[name] == api[name], name
    configs = [json.loads((tmp_path / r / "config.json").read_text()) for r in ("cli", "api")]
    assert {k: v for k, v in configs[0].items() if k != "data_relative_to_run"} == \
        {k: v for k, v in configs[1].items() if k != "data_relative_to_run"}
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("cli", "api")]
    assert logs[0] == logs[1] and len(logs[0]) == 2


def test_command_and_api_fine_tune_the_bundled_model_alike(tmp_path, capsys):
    """`minunet train --from nuclei` and `mu.fit(from_="nuclei")` with the fine-tuning
    defaults (held-out bands, replay of the model's recipe, its size filter) on two crops of
    different sizes: the same files, bit for bit, and the same log but for the seconds."""
    data = few_images(tmp_path / "few", shapes=[(96, 112), (104, 136)])
    code, _, err = run_cli(capsys, ["train", "--data", data, "--from", "nuclei", "--out",
                                    tmp_path / "cli", "--epochs", "1", *FAST])
    assert code == 0, err
    mu.fit(data, tmp_path / "api", from_="nuclei", epochs=1, samples_per_epoch=8,
           progress=False)
    cli, api = snapshot(tmp_path / "cli"), snapshot(tmp_path / "api")
    assert sorted(cli) == sorted(api) == sorted(mu.runs.RUN_FILES)
    for name in ("last.npz", "best.npz", "curves.png", "config.json"):
        assert cli[name] == api[name], name
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("cli", "api")]
    assert logs[0] == logs[1] and len(logs[0]) == 1


def test_a_folder_run_records_no_generator_fields_and_tunes_the_seed_threshold(tiny_run):
    _, run = tiny_run
    config = json.loads((run / "config.json").read_text())
    assert not {"preset", "n", "size"} & set(config)
    assert config["schedule"] == "cosine" and len(config["data_digests"]) == 6
    assert "seed_thresh" in mu.load(run / "best.npz").metadata["postprocess"]


def test_samples_per_epoch_gives_a_handful_of_images_many_steps(tmp_path):
    images, labels, _ = mu.data.generate(3, "standard", size=(64, 64), seed=1)
    x, t, w = workflow.training_arrays(images, labels)
    steps = []
    for samples in (None, 12):
        model = mu.UNet(1, 3, depth=1, base_channels=2, rng=np.random.default_rng(0))
        opt = mu.Adam(model.parameters(), lr=1e-3)
        mu.train(model, (x, t, w), epochs=1, batch_size=2, optimizer=opt, crop=32,
                 samples_per_epoch=samples, progress=False)
        steps.append(opt.steps)
    assert steps == [2, 6]


# ------------------------------------------------------------------ --from a model
def test_fine_tuning_starts_from_the_model_and_records_it(tiny_run, tmp_path, capsys):
    data_dir, first = tiny_run
    run = tmp_path / "ft"
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--from", first, "--out", run,
                                      "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                      *FAST])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    start = mu.load(first / "best.npz")
    assert config["from"]["checkpoint"] == str((first / "best.npz").resolve())
    assert (config["depth"], config["base"]) == (2, 4)       # the model's, not the defaults
    assert config["normalization"] == start.metadata["normalization"]
    assert config["lr"] == mu.runs.FINETUNE_DEFAULTS["lr"]
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--from", first, "--out",
                                    tmp_path / "x", "--depth", "3", *FAST])
    assert code == 2 and "--depth" in err and not (tmp_path / "x").exists(), err
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--from", "nope", "--out",
                                    tmp_path / "x"])
    assert code == 2 and "nope" in err and not (tmp_path / "x").exists(), err


def test_a_handful_of_images_holds_none_out_and_says_so(tmp_path, capsys):
    root = tmp_path / "few"
    rng = np.random.default_rng(0)
    for i in range(3):
        image, labels = blob_image(rng, (64, 64))
        write_tif(root / f"a{i}.tif", image)
        write_tif(root / f"a{i}_masks.tif", labels)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, ["train", "--data", root, "--out", run, *TINY, *FAST,
                                      "--epochs", "2"])
    assert code == 0, err
    assert "none held out" in err and "kept the last epoch, 2" in out, (out, err)
    assert json.loads((run / "config.json").read_text())["val_images"] == []
    assert mu.load(run / "best.npz").position["epoch"] == 2


def test_freeze_norm_keeps_the_running_statistics_and_trains_the_rest(tmp_path):
    images, labels, _ = mu.data.generate(2, "standard", size=(64, 64), seed=1)
    x, t, w = workflow.training_arrays(images, labels)
    for freeze in (False, True):
        model = mu.UNet(1, 3, depth=1, base_channels=2, rng=np.random.default_rng(0))
        norms = [m for _, m in model.named_modules() if isinstance(m, mu.BatchNorm2d)]
        before = [(m.running_mean.copy(), m.running_var.copy(), m.weight.data.copy())
                  for m in norms]
        mu.train(model, (x, t, w), epochs=1, batch_size=2, lr=1e-2, crop=32,
                 freeze_norm=freeze, progress=False)
        stats_kept = all(np.array_equal(m.running_mean, mean) and np.array_equal(
            m.running_var, var) for m, (mean, var, _) in zip(norms, before, strict=True))
        gamma_moved = any(not np.array_equal(m.weight.data, g)
                          for m, (_, _, g) in zip(norms, before, strict=True))
        assert stats_kept == freeze and gamma_moved, freeze


def few_images(root, n=2, shape=(96, 96), shapes=None):
    rng = np.random.default_rng(0)
    for i, size in enumerate(shapes or [shape] * n):
        image, labels = blob_image(rng, size, n=8)
        write_tif(root / f"a{i}.tif", image)
        write_tif(root / f"a{i}_masks.tif", labels)
    return root


def test_fine_tuning_a_handful_holds_out_a_band_of_each_image(tiny_run, tmp_path, capsys):
    _, first = tiny_run
    root, run = few_images(tmp_path / "few"), tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", root, "--from", first, "--out", run,
                                      "--epochs", "1", "--batch-size", "2", "--crop", "64",
                                      *FAST])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["val_band"] == mu.runs.settings.HELD_OUT_BAND and config["val_images"] == []
    assert config["freeze_norm"] is True
    assert "tuned on the held-out bands" in err, err
    assert "val_f1" in json.loads((run / "log.jsonl").read_text().splitlines()[0])
    # resume finds the same bands from the config
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["val_band"] == config["val_band"]


def test_fine_tuning_two_crops_of_different_sizes(tiny_run, tmp_path, capsys):
    """Two annotated crops as a user cuts them (different sizes): their held-out bands differ
    in size too, and validation, tuning and resume take them as they are."""
    _, first = tiny_run
    root = few_images(tmp_path / "few", shapes=[(96, 112), (104, 136)])
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", root, "--from", first, "--out", run,
                                    "--epochs", "1", "--batch-size", "2", "--crop", "64", *FAST])
    assert code == 0, err
    assert "tuned on the held-out bands" in err, err
    assert "val_f1" in json.loads((run / "log.jsonl").read_text().splitlines()[0])
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
    assert code == 0, err


def test_a_default_crop_shrinks_to_small_annotated_images(tiny_run, tmp_path, capsys):
    # two 101 x 103 annotated crops: the default crop (128) would refuse them
    _, first = tiny_run
    root = few_images(tmp_path / "few", shape=(101, 103))
    code, _, err = run_cli(capsys, ["train", "--data", root, "--from", first, "--out",
                                    tmp_path / "ft", "--epochs", "1", "--batch-size", "2",
                                    *FAST])
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["crop"] == 100
    assert "crop 100" in err and "101" in err, err
    # the same from scratch, read lazily
    code, _, err = run_cli(capsys, ["train", "--data", root, "--lazy", "--out", tmp_path / "lz",
                                    "--epochs", "1", "--batch-size", "2", "--depth", "2",
                                    "--base", "4", *FAST])
    assert code == 0, err
    assert json.loads((tmp_path / "lz" / "config.json").read_text())["crop"] == 100
    # a crop the user gives is theirs: refused, named, nothing written
    code, _, err = run_cli(capsys, ["train", "--data", root, "--from", first, "--out",
                                    tmp_path / "given", "--crop", "128", *FAST])
    assert code == 2 and "--crop" in err and not (tmp_path / "given").exists(), err


def test_fine_tuning_keeps_the_start_when_it_scores_better_on_the_bands(tmp_path):
    root = few_images(tmp_path / "few")
    start = mu.fit(root, tmp_path / "start", epochs=12, batch_size=2, depth=2, base=4,
                   crop=64, samples_per_epoch=16, lr=1e-2, val_fraction=0, progress=False)
    # a learning rate that wrecks the weights: the model it started from is kept
    run = mu.fit(root, tmp_path / "ft", from_=start.folder, epochs=1, batch_size=2, crop=64,
                 samples_per_epoch=8, lr=9.0, warmup=0, progress=False)
    kept, began = run.best, start.best
    assert kept.position["kept"] == "start", (kept.position, run.summary())
    assert kept.position["start_f1"] > kept.position["finetuned_f1"]
    for (name, p), (_, q) in zip(kept.model.named_parameters(),
                                 began.model.named_parameters(), strict=True):
        assert np.array_equal(p.data, q.data), name
    assert "kept the model the run started from" in run.summary()


def with_recipe(run, out, preset="standard"):
    """The run's best.npz saved as `out` with a training recipe in its metadata (as the
    bundled model stores it): a model that fine-tuning can replay."""
    ckpt = mu.load(run / "best.npz")
    recipe = {"preset": preset, "knobs": mu.data.knobs(preset), "size": [64, 64]}
    mu.save(ckpt.model, out, **{**ckpt.metadata, "recipe": recipe})
    return out


def test_replay_lists_the_users_samples_and_the_recipes_in_the_asked_share():
    from minunet.predict import DEFAULT_NORMALIZATION
    from minunet.runs import run as runmod

    recipe = {"preset": "standard", "knobs": mu.data.knobs("standard"), "size": [64, 64]}
    config = {"replay": 0.5, "replay_recipe": recipe, "crop": 32, "seed": 0,
              "normalization": DEFAULT_NORMALIZATION}
    user = [np.zeros((1, 64, 64), np.float32) for _ in range(3)]
    for share in (0.5, 0.25):
        x, t, w = runmod._with_replay({**config, "replay": share},
                                      (user, [u[0].astype(np.int64) for u in user],
                                       [u[0] for u in user]))
        n_user = sum(any(a is u for u in user) for a in x)
        assert len(x) == len(t) == len(w) and abs(n_user / len(x) - (1 - share)) < 0.05
        assert len(x) - n_user >= mu.runs.settings.REPLAY_IMAGES[0]
    # the same generated images every time (a resumed run trains on what it began with)
    first, again = (runmod._with_replay(config, (user, [u[0] for u in user],
                                                 [u[0] for u in user]))[0] for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_fine_tuning_replays_the_recipe_of_a_model_that_stores_one(tiny_run, tmp_path,
                                                                   capsys):
    data_dir, first = tiny_run
    start = with_recipe(first, tmp_path / "start.npz")
    run = tmp_path / "ft"
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--from", start, "--out", run,
                                    "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                    *FAST])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["replay"] == mu.runs.FINETUNE_DEFAULTS["replay"] > 0
    assert config["replay_recipe"]["preset"] == "standard"
    # the user's 8 crops per epoch, and as many replayed: 16 crops, 8 steps of 2
    assert mu.load(run / "last.npz").position["step"] == 8
    # a model without a recipe: no replay by default, refused when asked for
    plain = tmp_path / "plain"
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--from", first, "--out", plain,
                                    "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                    *FAST])
    assert code == 0 and json.loads((plain / "config.json").read_text())["replay"] == 0, err
    for argv in (["--from", first, "--replay", "0.5"], ["--replay", "0.5"],
                 ["--from", start, "--replay", "1"]):
        code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", tmp_path / "x",
                                        *argv, *FAST])
        assert code == 2 and "--replay" in err and not (tmp_path / "x").exists(), (argv, err)


def test_fine_tuning_on_few_objects_keeps_the_starts_seed_threshold(tiny_run, tmp_path):
    _, first = tiny_run
    root = few_images(tmp_path / "few")
    start = mu.load(first / "best.npz")
    own = start.metadata["postprocess"]["seed_thresh"]
    for thresh in sorted({0.5, 0.9} - {own}):  # a start whose threshold differs from own
        model = tmp_path / f"start{thresh}.npz"
        mu.save(start.model, model, **{
            **start.metadata, "postprocess": {**start.metadata["postprocess"],
                                              "seed_thresh": thresh}})
        run = mu.fit(root, tmp_path / f"ft{thresh}", from_=model, epochs=1, batch_size=2,
                     crop=64, samples_per_epoch=8, progress=False)
        assert run.best.metadata["postprocess"]["seed_thresh"] == thresh
        assert run.config["from"]["seed_thresh"] == thresh


def test_fine_tuning_keeps_the_starts_size_filter_within_half_the_cells(tiny_run, tmp_path):
    """A fine-tuned model's min_size: the start's, unless the labels teach a larger one (15 %
    of their median cell) or it exceeds half their median cell; recorded in the run."""
    from minunet.workflow import finetune_min_size, postprocess_settings

    _, first = tiny_run
    root = few_images(tmp_path / "few")
    labels = [np.asarray(tifffile.imread(f)) for f in sorted(root.glob("*_masks.tif"))]
    areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels])
    half, own = int(0.5 * np.median(areas[areas > 0])), postprocess_settings(labels)["min_size"]
    assert own < half
    assert finetune_min_size(labels, own + 1) == own + 1        # the start's, kept
    assert finetune_min_size(labels, 10 * half) == half         # capped at half a cell
    assert finetune_min_size(labels, 1) == own                  # the labels' own, larger
    start = mu.load(first / "best.npz")
    model = tmp_path / "start.npz"
    mu.save(start.model, model, **{**start.metadata, "postprocess": {
        **start.metadata["postprocess"], "min_size": own + 2}})
    run = mu.fit(root, tmp_path / "ft", from_=model, epochs=1, batch_size=2, crop=64,
                 samples_per_epoch=8, progress=False)
    assert run.best.metadata["postprocess"]["min_size"] == own + 2
    assert run.config["from"]["min_size"] == own + 2


# ------------------------------------------------------------------- #28 findings
def test_finding_2_predict_out_is_locked(tiny_run, tmp_path, capsys):
    data_dir, run = tiny_run
    out = tmp_path / "pred"
    out.mkdir()
    lock_as(out, os.getpid())                      # a live holder
    code, _, err = run_cli(capsys, ["predict", run, data_dir / "images", "--out", out])
    assert code == 2 and f"process {os.getpid()}" in err, err
    assert not list(out.glob("*.tif"))
    lock_as(out, dead_pid())                       # a stale lock: taken over
    code, _, err = run_cli(capsys, ["predict", run, data_dir / "images", "--out", out])
    assert code == 0, err
    assert not (out / LOCK_NAME).exists() and len(list(out.glob("*.tif"))) == 6


def test_finding_3_a_run_in_use_is_not_resumed_twice(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY, *FAST])[0] == 0
    before = snapshot(run)
    with FolderLock(run, "minunet train --resume"):
        code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
        assert code == 2 and f"process {os.getpid()}" in err and "in use" in err, err
    assert snapshot(run) == before
    lock_as(run, dead_pid())
    assert run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])[0] == 0
    assert not (run / LOCK_NAME).exists()


@pytest.mark.parametrize("lazy", [False, True])
def test_finding_4_resume_refuses_changed_contents(tiny_run, tmp_path, capsys, lazy):
    data_dir, _ = tiny_run
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
        for f in (data_dir / sub).glob("*.tif"):
            (data / sub / f.name).write_bytes(f.read_bytes())
    run = tmp_path / "run"
    extra = ["--lazy"] if lazy else []
    assert run_cli(capsys, ["train", "--data", data, "--out", run, *TINY, *FAST, *extra])[0] == 0
    victim = sorted((data / "images").glob("*.tif"))[2]
    image = tifffile.imread(victim)
    tifffile.imwrite(victim, image[::-1].copy())          # same name, other content
    code, _, err = run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])
    assert code == 2 and "1 changed" in err and victim.name in err, err
    tifffile.imwrite(victim, image)
    assert run_cli(capsys, ["train", "--resume", run, "--epochs", "2"])[0] == 0


def test_finding_5_generate_overwrite_with_fewer_images_leaves_none_of_the_old(tmp_path,
                                                                              capsys):
    out = tmp_path / "data"
    assert run_cli(capsys, ["generate", "--n", "5", "--size", "32", "--out", out])[0] == 0
    assert run_cli(capsys, ["generate", "--n", "2", "--size", "32", "--out", out,
                            "--overwrite"])[0] == 0
    for sub in ("images", "labels"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["0000.tif", "0001.tif"]


def test_finding_6_lazy_checks_masks_as_plain_data(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    for case, value in (("fraction", 1.5), ("negative", -3.0)):
        data = tmp_path / case
        for sub in ("images", "labels"):
            (data / sub).mkdir(parents=True)
            for f in (data_dir / sub).glob("*.tif"):
                (data / sub / f.name).write_bytes(f.read_bytes())
        bad = sorted((data / "labels").glob("*.tif"))[3]
        labels = tifffile.imread(bad).astype(np.float32)
        labels[labels == labels.max()] = value
        tifffile.imwrite(bad, labels)
        run = tmp_path / f"run-{case}"
        code, _, err = run_cli(capsys, ["train", "--data", data, "--lazy", "--out", run, *TINY])
        assert code == 2 and bad.name in err, (case, err)
        assert not run.exists()


def test_lazy_reads_every_layout(tmp_path, capsys):
    root = tmp_path / "cellpose"
    rng = np.random.default_rng(0)
    for i in range(6):
        image, labels = blob_image(rng, (48, 40 + 8 * (i % 2)))  # two sizes
        write_tif(root / f"a{i}_img.tif", image)
        write_tif(root / f"a{i}_masks.tif", labels)
    code, _, err = run_cli(capsys, ["train", "--data", root, "--lazy", "--out",
                                    tmp_path / "run", *TINY, *FAST])
    assert code == 0, err


def test_finding_17_a_crop_too_large_for_lazy_data_writes_nothing(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--lazy", "--out", run,
                                    *TINY, "--crop", "128"])
    assert code == 2 and "--crop" in err and not run.exists(), err
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--lazy", "--out", run, *TINY])
    assert code == 0, err


def test_finding_17_failures_leave_no_empty_out(tmp_path, capsys):
    out = tmp_path / "gen"
    code, _, err = run_cli(capsys, ["generate", "--n", "2", "--size", "4", "--out", out])
    assert code == 2, err
    assert not out.exists()


def test_finding_17_a_run_that_fails_before_its_first_epoch_leaves_nothing(
        tiny_run, tmp_path, capsys, monkeypatch):
    data_dir, _ = tiny_run
    run = tmp_path / "run"

    def broken(*args, **kwargs):
        raise ValueError("a sample could not be read")

    monkeypatch.setattr(mu, "train", broken)
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY])
    assert code == 2 and "could not be read" in err and not run.exists(), err


def test_finding_19_disk_full_names_the_file_and_how_to_resume(tiny_run, tmp_path, capsys,
                                                              monkeypatch):
    import errno
    import importlib

    train_module = importlib.import_module("minunet.train")  # (mu.train is the function)

    data_dir, _ = tiny_run
    run = tmp_path / "run"
    real_save, calls = train_module.save, []

    def full_disk(model, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # epoch 1's best and last are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save", full_disk)
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY, *FAST,
                                    "--epochs", "3"])
    assert code == 2 and "No space left" in err and str(run) in err, err
    assert ".npz" in err and f"minunet train --resume {run}" in err, err


def test_finding_20_a_run_killed_before_its_curves_is_finished_by_resume(tiny_run, tmp_path,
                                                                         capsys):
    data_dir, _ = tiny_run
    run = tmp_path / "run"
    assert run_cli(capsys, ["train", "--data", data_dir, "--out", run, *TINY, *FAST])[0] == 0
    (run / "curves.png").unlink()                # killed after the last epoch
    code, _, err = run_cli(capsys, ["train", "--resume", run])
    assert code == 0, err
    assert (run / "curves.png").is_file()
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    code, _, err = run_cli(capsys, ["train", "--resume", run])
    assert code == 2 and "finished" in err, err


def test_finding_21_a_negative_seed_names_the_flag(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    code, _, err = run_cli(capsys, ["train", "--data", data_dir, "--out", tmp_path / "r",
                                    "--seed", "-1"])
    assert code == 2 and "--seed" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_mistyped_data_folder_is_named_as_given(tiny_run, tmp_path, capsys):
    """--data that does not exist: said as the user's --data, on a new run, fine-tuning and a
    resume alike, not as a run whose data moved ("give --data" to one who gave it)."""
    _, run = tiny_run
    missing = tmp_path / "annotaded"
    for argv in (["train", "--data", missing, "--out", tmp_path / "r"],
                 ["train", "--data", missing, "--from", run, "--out", tmp_path / "r"],
                 ["train", "--resume", run, "--data", missing, "--epochs", "2"]):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and f"--data {missing}: no such folder" in err, err
        assert "is gone" not in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()
    with pytest.raises(mu.runs.RunError, match="no such folder"):
        mu.fit(missing, tmp_path / "r", epochs=1)
    assert not (tmp_path / "r").exists()


def test_the_api_refuses_what_the_command_refuses(tiny_run, tmp_path):
    data_dir, run = tiny_run
    with pytest.raises(mu.runs.RunError, match="existing run"):
        mu.fit(data_dir, run, epochs=1)
    with pytest.raises(mu.runs.RunError, match="unknown setting"):
        mu.fit(data_dir, tmp_path / "r", epoch=1)
    assert not (tmp_path / "r").exists()


def test_folder_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    from minunet.io.locks import FolderLocked

    lock_as(tmp_path, os.getpid())
    with pytest.raises(FolderLocked, match=f"process {os.getpid()}"):
        FolderLock(tmp_path, "test").acquire()
    for stale in (json.dumps({"pid": dead_pid(), "host": __import__("socket").gethostname()}),
                  "half a lock fi"):
        (tmp_path / LOCK_NAME).write_text(stale)
        with FolderLock(tmp_path, "test"):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(FolderLocked, match="another-host"):
        FolderLock(tmp_path, "test").acquire()


def test_finding_2_an_evaluate_report_folder_in_use_is_refused(tiny_run, tmp_path, capsys):
    data_dir, _ = tiny_run
    report = tmp_path / "report"
    report.mkdir()
    argv = ["evaluate", "--pred", data_dir / "labels", "--truth", data_dir / "labels",
            "--out", report]
    with FolderLock(report, "minunet evaluate"):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and f"process {os.getpid()}" in err and "in use" in err, err
    assert sorted(p.name for p in report.iterdir()) == []
    assert run_cli(capsys, argv)[0] == 0 and not (report / LOCK_NAME).exists()
