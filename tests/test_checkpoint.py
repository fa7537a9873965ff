import pytest
import torch

from blockdrop_env.checkpoint import DEFAULT_CHECKPOINT, atomic_save, load_resnet, save_resnet
from blockdrop_env.data import load_cifar
from blockdrop_env.resnet import CifarResNet, predict, resnet32

from .conftest import requires_real_data


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = resnet32()
    save_resnet(tmp_path / "m.pt", model, test_accuracy=0.5, epochs=3)
    loaded, meta = load_resnet(tmp_path / "m.pt")
    assert meta["test_accuracy"] == 0.5 and meta["epochs"] == 3 and meta["depth"] == 32
    assert not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("depth, classes", [(20, 10), (32, 100)])
def test_checkpoint_of_wrong_shape_is_refused(tmp_path, depth, classes):
    save_resnet(tmp_path / "other.pt", CifarResNet(depth, classes))
    with pytest.raises(ValueError, match=f"ResNet-{depth} with {classes} classes; expected ResNet-32 with 10"):
        load_resnet(tmp_path / "other.pt")


def test_mislabelled_checkpoint_is_refused(tmp_path):
    ckpt = {"state_dict": CifarResNet(20).state_dict(), "depth": 32, "num_classes": 10}
    atomic_save(ckpt, tmp_path / "liar.pt")
    with pytest.raises(ValueError, match="does not fit a ResNet-32"):
        load_resnet(tmp_path / "liar.pt")


def test_corrupt_and_missing_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_resnet(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_resnet(tmp_path / "none.pt")


def test_a_bit_flipped_in_the_weights_is_caught_by_the_checksum(tmp_path):
    from blockdrop_env.checkpoint import CHECKSUM_KEY, CheckpointError, load_checkpoint

    torch.manual_seed(0)
    model = resnet32()
    save_resnet(tmp_path / "r.pt", model, test_accuracy=0.5)
    assert CHECKSUM_KEY not in load_checkpoint(tmp_path / "r.pt")  # checked, then dropped
    data = bytearray((tmp_path / "r.pt").read_bytes())
    weights = model.fc.weight.detach().numpy().tobytes()
    at = data.find(weights)
    assert at > 0
    data[at + 5] ^= 0x10  # one bit of one weight: the file still unpickles
    (tmp_path / "r.pt").write_bytes(bytes(data))
    assert torch.load(tmp_path / "r.pt", weights_only=True)["state_dict"]["fc.weight"].ne(model.fc.weight).sum() == 1
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match the checksum"):
        load_resnet(tmp_path / "r.pt")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "keep.pt"
    atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"v": Unpicklable()}, path)
    from blockdrop_env.checkpoint import load_checkpoint

    assert load_checkpoint(path, required="v") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]


def test_shipped_checkpoint_has_its_metadata():
    model, meta = load_resnet()
    assert DEFAULT_CHECKPOINT.stat().st_size < 3_000_000
    for key in ("test_accuracy", "epochs", "command", "git_commit", "date", "normalization"):
        assert key in meta, key
    assert model.num_blocks == 15


@pytest.mark.slow
@requires_real_data
def test_shipped_checkpoint_reaches_its_recorded_test_accuracy():
    model, meta = load_resnet()
    images, labels = load_cifar("test")
    accuracy = (predict(model, images) == labels).float().mean().item()
    assert abs(accuracy - meta["test_accuracy"]) < 1e-3
    assert accuracy > 0.85


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    from blockdrop_env.checkpoint import atomic_write_text

    atomic_save({"v": 1}, tmp_path / "a.pt")
    atomic_write_text(tmp_path / "b.json", "{}")
    reference = tmp_path / "c"
    reference.write_text("")
    for name in ("a.pt", "b.json"):
        assert (tmp_path / name).stat().st_mode == reference.stat().st_mode, name


@pytest.mark.parametrize("how", [["-m", "probe_meta"], ["probe_meta.py"]])
def test_run_metadata_records_the_command_as_it_was_typed(tmp_path, how):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "probe_meta.py").write_text(
        "from blockdrop_env.checkpoint import run_metadata\nprint(run_metadata()['command'])\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, *how, "--seed", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == " ".join(["python", *how, "--seed", "3"])
