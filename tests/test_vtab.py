"""VTAB-1k from disk: every layout and folder name in circulation reads, every bad file is named in one line, one
broken task never stops the others, and no result crosses datasets. All on a fake root (tests/vtab_root.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from vtab_root import PYRA_ONLY, TASKS, VARIANT_FOLDERS, make_vtab_root, write_task

import harness
from harness import registry
from harness.cli import main
from harness.data import ImageList, decode
from harness.errors import BadData
from harness.plan import data_config, load_tasks, plan_runs

MICRO = "vit_micro_small_patch4_32"


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def records(out: Path) -> dict[str, dict]:
    return {json.loads(path.read_text())["config"]["task"]: json.loads(path.read_text())
            for path in out.glob("*.json")}


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory) -> Path:
    return make_vtab_root(tmp_path_factory.mktemp("vtab-1k"))


def test_every_task_reads_in_the_layout_get_vtab1k_writes_under_any_circulating_name(vtab_root):
    tasks = load_tasks(registry.expand_tasks(["vtab"]), vtab_root)
    assert len(tasks) == 19 and {name: task.problem for name, task in tasks.items()} == dict.fromkeys(tasks)
    for name, folder in VARIANT_FOLDERS.items():
        assert Path(tasks[name].identity["folder"]).name == folder
    pyra = tasks[PYRA_ONLY]
    assert pyra.train is None and pyra.val is None and len(pyra.train_and_val) == 12
    assert pyra.identity["files"] == {"trainval": "train800val200.txt", "test": "test.txt"}
    both = tasks["eurosat"]  # both layouts: PYRA's list trains, train800/val200 stay for selecting on val
    assert len(both.train) == 8 and len(both.val) == 4 and both.train_and_val is both.trainval


def test_the_card_line_runs_on_the_fake_root_at_the_micro_backbones_32_px(vtab_root, tmp_path):
    out = tmp_path / "runs"
    result = invoke("--methods", "lora", "--tasks", f"{PYRA_ONLY},eurosat,kitti", "--backbone", MICRO,
                    "--epochs", "1", "--bench-batch", "4", "--data-root", vtab_root, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"eurosat: {vtab_root / 'eurosat_rgb'} (train800val200.txt, test.txt)" in result.output  # what it reads
    found = records(out)
    assert set(found) == {PYRA_ONLY, "eurosat", "kitti"} and {r["status"] for r in found.values()} == {"ok"}
    record = found["eurosat"]
    assert record["config"]["data"]["img_size"] == 32 and record["task_info"]["num_classes"] == 10
    assert record["task_info"]["split_sizes"] == {"train": 8, "val": 4, "test": 6, "trainval": 12}
    assert record["task_info"]["data"]["files"]["trainval"] == "train800val200.txt"


def test_list_lines_split_at_the_last_white_space(tmp_path):
    (tmp_path / "my images").mkdir()
    listed = tmp_path / "test.txt"
    listed.write_text("my images/a b.jpg 3\nimages/c.jpg\t4   \n\n   images/d.jpg  5\n")
    split = ImageList.read(tmp_path, listed)
    assert split.samples == (("my images/a b.jpg", 3), ("images/c.jpg", 4), ("images/d.jpg", 5))
    assert split.line_numbers == (1, 2, 4)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


# task: (how its data is broken, the start of the one line its runs fail with)
BAD = {
    "resisc45": (lambda f: (f / "test.txt").write_text(""), "{f}/test.txt lists no images"),
    "kitti": (lambda f: (f / "train800.txt").write_text(""), "{f}/train800.txt lists no images"),
    "dmlab": (lambda f: (f / "test.txt").write_text((f / "test.txt").read_text().replace(" 2\n", " 6\n")),
              "{f}/test.txt:3: label 6 is outside 0..5"),
    "smallnorb_ele": (lambda f: (f / "train800.txt").write_text((f / "train800.txt").read_text()
                                                                .replace(" 1\n", " 47\n", 1)),
                      "{f}/train800.txt:2: label 47 is outside 0..8"),
    "sun397": (lambda f: [(f / f"images/test/00000{i}.jpg").unlink() for i in (1, 4)],
               "2 of 6 images listed in {f}/test.txt are missing under {f} (images/test/000001.jpg, "
               "images/test/000004.jpg)"),
    "caltech101": (lambda f: _truncate(f / "images/test/000003.jpg"), "corrupt image {f}/images/test/000003.jpg"),
    "patch_camelyon": (lambda f: (f / "test.txt").write_text("images/test/000000.jpg 1\nimages/test/000001.jpg\n"),
                       "{f}/test.txt:2: expected 'path label', got 'images/test/000001.jpg'"),
    "svhn": (None, "VTAB-1k folder for 'svhn' not found under {root} (looked for svhn, svhn_cropped)"),
}


def test_each_bad_file_fails_its_task_in_one_line_and_the_others_run(tmp_path):
    root = tmp_path / "root"
    write_task(root, "eurosat")
    for name, (damage, _) in BAD.items():
        if damage is not None:
            damage(write_task(root, name))
    out = tmp_path / "runs"
    result = invoke("--methods", "lora", "--tasks", ",".join(["eurosat", *BAD]), "--backbone", MICRO, "--epochs", "1",
                    "--bench-batch", "4", "--data-root", root, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    found = records(out)
    assert found["eurosat"]["status"] == "ok"  # the good task's result is kept
    for name, (_, expected) in BAD.items():
        reason = found[name]["reason"]
        assert found[name]["status"] == "failed" and "traceback" not in found[name], name
        assert reason.startswith(expected.format(f=root / name, root=root)), (name, reason)
        assert "\n" not in reason and f"FAILED lora / {name} / " in result.output
    assert "1 ok, 8 failed" in result.output


def test_a_corrupt_image_is_found_before_training_with_check_images(tmp_path):
    _truncate(write_task(tmp_path, "eurosat") / "images/train800/000005.jpg")
    assert load_tasks(["eurosat"], tmp_path)["eurosat"].problem is None  # it exists: the stat is happy
    problem = load_tasks(["eurosat"], tmp_path, check_images=True)["eurosat"].problem
    assert problem.startswith(f"corrupt image {tmp_path}/eurosat/images/train800/000005.jpg")


def test_no_data_root_is_a_bad_option_that_stops_before_anything_runs(tmp_path):
    result = invoke("--tasks", "vtab", "--out", tmp_path / "runs")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and lines[0].startswith("Preparing 19 task(s)") and len(lines) == 2
    assert lines[1].startswith("error: VTAB-1k task 'cifar100' needs its data on disk: pass --data-root")


def test_the_same_config_on_another_data_root_is_another_run(tmp_path):
    arguments = ["--methods", "lora", "--tasks", "eurosat", "--backbone", MICRO, "--epochs", "1", "--bench-batch", "4",
                 "--out", tmp_path / "runs"]
    for root in ("first", "second"):
        write_task(tmp_path / root, "eurosat", seed=1)  # the same lists, other images
        result = invoke(*arguments, "--data-root", tmp_path / root)
        assert result.exit_code == 0 and "already done" not in result.output, result.output
    runs = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*.json")]
    assert len(runs) == 2 and len({run["config"]["data"]["fingerprint"] for run in runs}) == 2
    result = invoke(*arguments, "--data-root", tmp_path / "first")
    assert "already done" in result.output  # and the same data is reused


def test_image_size_and_normalisation_follow_the_backbone(vtab_root):
    task = load_tasks(["eurosat"], vtab_root)["eurosat"]
    vit_b = data_config(task, "vit_base_patch16_224.orig_in21k", None, "backbone")
    assert (vit_b.img_size, vit_b.interpolation, vit_b.normalization, vit_b.mean) == \
        (224, "bicubic", "backbone", (0.5, 0.5, 0.5))  # timm's cfg for Google's in21k weights
    pyra = data_config(task, "vit_base_patch16_224.orig_in21k", None, "imagenet")
    assert pyra.mean == (0.485, 0.456, 0.406) and pyra.normalization == "imagenet"
    assert data_config(task, MICRO, None, "backbone").img_size == 32
    assert data_config(task, "vit_base_patch16_224.orig_in21k", 64, "backbone").img_size == 64
    offline = registry.get_task("count").fn(None)  # generated data keeps its own size unless asked
    assert data_config(offline, "vit_base_patch16_224.orig_in21k", None, "backbone").img_size == 32


def test_decoding_resizes_straight_to_the_square_and_is_cached(vtab_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path))
    task = load_tasks(["eurosat"], vtab_root)["eurosat"]
    decoded = task.at_size(16)
    assert decoded.test.images.shape == (6, 3, 16, 16) and decoded.test.images.dtype == torch.uint8
    assert np.array_equal(decoded.test.images.numpy(), decode(task.test, 16))
    assert torch.equal(decoded.test.labels, torch.as_tensor([i % 10 for i in range(6)]))
    # Only what a run selecting on test reads: PYRA's training list and the test list.
    assert len(list((tmp_path / "decoded").glob("*-16-bicubic.npy"))) == 2 and decoded.train is None
    assert task.at_size(16, selection="val").train.images.shape == (8, 3, 16, 16)
    assert torch.equal(task.at_size(16).test.images, decoded.test.images)  # read back from the cache


def test_every_task_of_the_toml_is_registered_with_its_group_and_classes():
    for name, entry in TASKS.items():
        spec = registry.get_task(name)
        assert (spec.suite, spec.group) == ("vtab", entry["group"]) and str(entry["classes"]) in spec.description


def test_selection_on_val_trains_on_train800_and_records_the_test_accuracy_at_the_best_val(vtab_root, tmp_path):
    out = tmp_path / "runs"
    result = invoke("--methods", "lora", "--tasks", f"eurosat,{PYRA_ONLY}", "--backbone", MICRO, "--epochs", "2",
                    "--selection", "val", "--bench-batch", "4", "--data-root", vtab_root, "--out", out)
    assert result.exit_code == 1, result.output
    found = records(out)
    metrics = found["eurosat"]["metrics"]
    assert found["eurosat"]["config"]["train"]["selection"] == "val"
    assert metrics["test_acc_at_best_val"] in [entry["test_acc"] for entry in metrics["curve"] if "val_acc" in entry]
    assert found[PYRA_ONLY]["status"] == "failed"  # PYRA's two files hold no separate val split
    assert found[PYRA_ONLY]["reason"].startswith("--selection val needs separate train and val splits")


def test_a_list_the_run_does_not_read_does_not_change_its_key(tmp_path):
    folder = write_task(tmp_path, "dtd", pyra_only=True)
    before = load_tasks(["dtd"], tmp_path)["dtd"]
    (folder / "train800.txt").write_text("images/train800/000000.jpg 0\n")
    (folder / "val200.txt").write_text("images/val200/000000.jpg 0\n")
    after = load_tasks(["dtd"], tmp_path)["dtd"]
    assert after.problem is None and after.train is not None
    assert after.fingerprint_for("test") == before.fingerprint_for("test")  # trains on train800val200.txt either way
    assert after.fingerprint_for("val") != after.fingerprint_for("test")


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vit_base_patch16_224.no_such_tag"], "backbone 'vit_base_patch16_224.no_such_tag': timm knows "
                                                          "no such pretrained tag; its tags: "),
    (["--tasks", "eurosat", "--data-root", "{missing}"], "--data-root {missing} is not a folder"),
])
def test_bad_options_are_one_line_before_anything_runs(args, message, tmp_path):
    args = [arg.format(missing=tmp_path / "nowhere") for arg in args]
    result = invoke("--tasks", "count", *args, "--dry-run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: " + message.format(missing=tmp_path / "nowhere"))


def test_a_label_that_is_no_integer_names_its_line(tmp_path):
    (tmp_path / "test.txt").write_text("a.jpg 1\nb.jpg --3\n")
    with pytest.raises(harness.UserError, match=r"test.txt:2: expected 'path label', got 'b.jpg --3'"):
        ImageList.read(tmp_path, tmp_path / "test.txt")


def test_a_damaged_decoded_cache_is_decoded_again(vtab_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path))
    task = load_tasks(["eurosat"], vtab_root)["eurosat"]
    first = task.at_size(8).test.images.clone()
    for path in (tmp_path / "decoded").glob("*.npy"):
        path.write_bytes(b"")  # e.g. a full disk
    assert torch.equal(task.at_size(8).test.images, first)


def test_a_local_sweep_records_a_broken_tasks_runs_without_a_worker(monkeypatch, tmp_path):
    from harness import runner
    from harness.store import RunStore

    monkeypatch.setattr(runner.LocalExecutor, "_run", lambda *args: pytest.fail("no worker for a broken task"))
    tasks = load_tasks(["eurosat"], tmp_path)  # no such folder: the task's problem
    configs = plan_runs(["lora"], tasks, seeds=[0], compressions=None, backbone=MICRO, pretrained=None,
                        device=torch.device("cpu"), train_overrides={})
    executor = runner.LocalExecutor(2, tasks, RunStore(tmp_path / "runs"), torch.device("cpu"), [], tmp_path)
    record = executor(configs[0])
    assert record["status"] == "failed" and record["reason"].startswith("VTAB-1k folder for 'eurosat' not found")
    assert record["failure"] == "data"


def test_a_corrupt_image_met_while_decoding_fails_as_data_and_a_plain_rerun_retries_it_once_mended(tmp_path):
    image = write_task(tmp_path / "root", "caltech101") / "images/test/000003.jpg"
    good = image.read_bytes()
    _truncate(image)
    arguments = ["--methods", "lora", "--tasks", "caltech101", "--backbone", MICRO, "--epochs", "1", "--bench-batch",
                 "4", "--data-root", tmp_path / "root", "--out", tmp_path / "runs"]
    result = invoke(*arguments)
    record = records(tmp_path / "runs")["caltech101"]
    assert result.exit_code == 1 and (record["status"], record["failure"]) == ("failed", "data")
    assert record["reason"].startswith(f"corrupt image {image}") and "traceback" not in record
    image.write_bytes(good)
    result = invoke(*arguments)
    assert result.exit_code == 0 and records(tmp_path / "runs")["caltech101"]["status"] == "ok", result.output


def _listed(folder: Path, *names: str) -> ImageList:
    (folder / "list.txt").write_text("".join(f"{name} 0\n" for name in names))
    return ImageList.read(folder, folder / "list.txt")


def test_pils_other_ways_of_failing_are_one_line_naming_the_file(monkeypatch, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # its header claims more than twice as many pixels
    with pytest.raises(BadData, match=rf"^corrupt image {tmp_path}/huge.png \(DecompressionBombError: .*replace that"):
        decode(_listed(tmp_path, "huge.png"), 8)


def test_sixteen_bit_greys_keep_their_high_byte_and_float_pixels_are_refused(tmp_path):
    from PIL import Image

    gradient = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "sixteen.png")
    Image.fromarray((gradient >> 8).astype(np.uint8)).save(tmp_path / "eight.png")
    sixteen, eight = decode(_listed(tmp_path, "sixteen.png", "eight.png"), 16)
    assert np.array_equal(sixteen, eight) and sixteen.mean() > 100  # not clipped to white
    Image.fromarray(gradient.astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(BadData, match=rf"^image {tmp_path}/float.tiff has floating-point pixels .*to an 8-bit image"):
        decode(_listed(tmp_path, "float.tiff"), 16)


def _where_reserving_space_fails_with(code: int, monkeypatch, cache: Path, root: Path):
    """The eurosat task, with the decode cache in ``cache`` on a filesystem whose block reservation fails so."""
    import os

    def failing(descriptor, offset, length):
        raise OSError(code, os.strerror(code))
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(cache))
    monkeypatch.setattr(os, "posix_fallocate", failing)
    return load_tasks(["eurosat"], root)["eurosat"]


def test_a_full_cache_disk_is_one_line_naming_the_cache_and_the_fix(vtab_root, monkeypatch, tmp_path):
    import errno

    task = _where_reserving_space_fails_with(errno.ENOSPC, monkeypatch, tmp_path, vtab_root)
    with pytest.raises(BadData, match=rf"^no space left in {tmp_path}/decoded for {vtab_root}/eurosat\w*/\w+\.txt's "
                                      r"decoded images \(0\.0 MB at 8 px\); free space there or point \$ADAPTBENCH"):
        task.at_size(8)
    assert list((tmp_path / "decoded").iterdir()) == []  # its temporary went with it


def _decoded_then_removed(monkeypatch, cache: Path, root: Path):
    """The eurosat task decoded once into ``cache`` and its decoded files deleted again, and their paths: the next
    decode writes them anew."""
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(cache))
    task = load_tasks(["eurosat"], root)["eurosat"]
    task.at_size(8)
    finals = sorted((cache / "decoded").glob("*.npy"))
    for final in finals:
        final.unlink()
    return task, finals


def test_a_killed_decodes_temporary_is_removed_and_a_live_ones_kept(vtab_root, monkeypatch, tmp_path):
    import fcntl
    import os

    task, finals = _decoded_then_removed(monkeypatch, tmp_path, vtab_root)
    killed, live = (tmp_path / "decoded" / f".{finals[0].name}.{tag}.tmp" for tag in ("killed", "live"))
    for temporary in (killed, live):
        temporary.write_bytes(b"\0" * 4096)
        os.utime(temporary, (0, 0))  # old: no decode that was just created
    with open(live, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a decode in another process holds it
        task.at_size(8)
        assert live.exists() and not killed.exists()
    assert sorted((tmp_path / "decoded").glob("*.npy")) == finals


def test_a_label_in_other_digits_than_ascii_is_no_integer(tmp_path):
    (tmp_path / "test.txt").write_text("a.jpg 1\nb.jpg \u0663\n")  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
    with pytest.raises(harness.UserError, match=r"test.txt:2: expected 'path label', got 'b.jpg \u0663'"):
        ImageList.read(tmp_path, tmp_path / "test.txt")


@pytest.mark.parametrize("selection, lists", [("test", "train800val200.txt, test.txt"),
                                              ("val", "train800.txt, val200.txt, test.txt")])
def test_the_run_names_the_lists_it_reads_not_every_list_in_the_folder(selection, lists, tmp_path):
    write_task(tmp_path / "root", "dtd")
    result = invoke("--methods", "lora", "--tasks", "dtd", "--backbone", MICRO, "--data-root", tmp_path / "root",
                    "--selection", selection, "--dry-run", "--no-estimate")
    assert f"  dtd: {(tmp_path / 'root' / 'dtd').resolve()} ({lists})\n" in result.output, result.output


def test_a_filesystem_that_cannot_reserve_space_still_gets_its_cache(vtab_root, monkeypatch, tmp_path):
    import errno

    task = _where_reserving_space_fails_with(errno.EOPNOTSUPP, monkeypatch, tmp_path, vtab_root)
    assert np.array_equal(task.at_size(8).test.images.numpy(), decode(task.test, 8))


def test_a_decode_holds_its_temporarys_lock_and_a_fresh_unlocked_temporary_is_left_alone(vtab_root, monkeypatch,
                                                                                        tmp_path):
    import fcntl
    import os

    from harness import data

    task, finals = _decoded_then_removed(monkeypatch, tmp_path, vtab_root)
    fresh = tmp_path / "decoded" / f".{finals[0].name}.fresh.tmp"
    fresh.write_bytes(b"\0" * 4096)  # just created by a decode that has not locked it yet
    decode_into, locked = data.decode_into, []

    def watched(split, size, interpolation, target):
        for temporary in (tmp_path / "decoded").glob(".*.tmp"):
            if temporary != fresh:
                with open(temporary, "r+b") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        locked.append(temporary)
        return decode_into(split, size, interpolation, target)
    monkeypatch.setattr(data, "decode_into", watched)
    task.at_size(8)
    assert len(locked) == len(finals) and fresh.exists()  # each decode locked its own; the fresh one is kept
    assert os.stat(fresh).st_size == 4096


def test_thirty_two_bit_integer_pixels_are_refused_naming_the_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.arange(16 * 16, dtype=np.int32).reshape(16, 16) * 1000).save(tmp_path / "wide.tiff")
    with pytest.raises(BadData, match=rf"^image {tmp_path}/wide.tiff has 32-bit integer pixels \(PIL mode I\)"):
        decode(_listed(tmp_path, "wide.tiff"), 8)
