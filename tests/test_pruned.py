"""A ResNet pruned to one block set for every image: the static rival of a BlockDrop agent.

The blocks come from the drop landscape (``evaluate --landscape``), the finetuning from
``pretrain_resnet --init --keep-blocks``, the evaluation from ``evaluate --pruned``.
"""

import json
from dataclasses import replace

import pytest
import torch

from agents.baselines import FixedBlocks, blocks_by_drop_cost
from agents.policy import PolicyNet
from agents.reinforce import load_agent
from blockdrop_env.checkpoint import load_resnet, save_resnet
from blockdrop_env.data import load_cifar
from blockdrop_env.resnet import predict, resnet32
from experiments import evaluate as evaluate_script
from experiments import pretrain_resnet, train_blockdrop
from experiments.cli import UsageError

from .conftest import trained_like
from .test_scripts import train_args

KEEP = (0, 4, 7, 11)


def test_fixed_blocks_keeps_the_same_set_for_every_image_and_refuses_bad_sets():
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    mask = FixedBlocks([7, 0, 4], 15)(images)
    assert mask.shape == (3, 15) and mask.dtype == torch.bool
    assert mask[:, [0, 4, 7]].all() and mask.sum().item() == 9
    for bad in ([], [15], [-1], [2, 2]):
        with pytest.raises(ValueError):
            FixedBlocks(bad, 15)


def test_blocks_by_drop_cost_puts_the_costliest_drop_first_and_ties_in_block_order():
    assert blocks_by_drop_cost([0.9, 0.5, 0.9, 0.7, 0.5]) == [1, 4, 3, 0, 2]


def test_the_pruned_forward_skips_dropped_blocks_and_equals_the_masked_one():
    model = trained_like(resnet32(), seed=1)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    keep = FixedBlocks(KEEP, 15).mask()
    calls = []
    hooks = [b.residual.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(model.blocks)]
    pruned = pretrain_resnet.pruned_forward(model, images, keep)
    for hook in hooks:
        hook.remove()
    assert sorted(calls) == list(KEEP)  # the dropped blocks' residuals never ran
    torch.testing.assert_close(pruned, model(images, keep.expand(5, -1)))


@pytest.fixture()
def init_checkpoint(tmp_path):
    """A ResNet-32 with non-trivial batch-norm statistics, to finetune."""
    torch.manual_seed(0)
    path = tmp_path / "init.pt"
    save_resnet(path, trained_like(resnet32(), seed=2), test_accuracy=float("nan"))
    return path


def pruned_args(synthetic_dir, out, init, **kw):
    base = dict(
        epochs=1,
        batch_size=16,
        lr=0.05,
        device="cpu",
        precision="fp32",
        data_dir=str(synthetic_dir),
        init=init,
        keep_blocks=KEEP,
        train_split="train",
        out=out,
    )
    return pretrain_resnet.Args(**{**base, **kw})


def test_finetuning_a_pruned_network_trains_its_blocks_alone_and_records_them(synthetic_dir, init_checkpoint, tmp_path):
    out = tmp_path / "pruned.pt"
    summary = pretrain_resnet.main(pruned_args(synthetic_dir, out, init_checkpoint))
    before = load_resnet(init_checkpoint)[0].state_dict()
    model, meta = load_resnet(out)
    after = model.state_dict()
    assert meta["keep_blocks"] == list(KEEP) and summary["keep_blocks"] == list(KEEP)
    for k in range(15):
        changed = any(not torch.equal(v, after[n]) for n, v in before.items() if n.startswith(f"blocks.{k}."))
        assert changed == (k in KEEP), f"block {k}"  # dropped blocks: weights and BN statistics untouched
    assert not torch.equal(before["stem.0.weight"], after["stem.0.weight"])  # the rest of the network trains too

    # The recorded accuracies are those of the network running its blocks alone, on val and test.
    mask = FixedBlocks(KEEP, 15).mask()
    for split, key in (("val", "val_accuracy"), ("test", "test_accuracy")):
        images, labels = load_cifar(split, synthetic_dir)
        expected = (predict(model, images, mask.expand(len(images), -1)) == labels).float().mean().item()
        assert meta[key] == pytest.approx(expected)
    # The validation split stays out of training: the run saw the train split's images alone.
    train_images = len(load_cifar("train", synthetic_dir)[0])
    assert meta["train_images"] == train_images < len(load_cifar("trainval", synthetic_dir)[0])


def test_pruning_arguments_are_checked_before_any_work(synthetic_dir, init_checkpoint, tmp_path):
    for bad in ((15,), (3, 3), (-1,)):
        with pytest.raises(UsageError, match="--keep-blocks"):
            pretrain_resnet.main(pruned_args(synthetic_dir, tmp_path / "x.pt", init_checkpoint, keep_blocks=bad))
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(FileNotFoundError):
        pretrain_resnet.main(pruned_args(synthetic_dir, tmp_path / "y.pt", tmp_path / "missing.pt"))


def test_evaluate_ranks_blocks_on_the_landscape_and_judges_a_pruned_rival_with_its_blocks(
    synthetic_dir, init_checkpoint, tmp_path
):
    out = tmp_path / "pruned.pt"
    pretrain_resnet.main(pruned_args(synthetic_dir, out, init_checkpoint))
    common = dict(checkpoint=init_checkpoint, data_dir=str(synthetic_dir), device="cpu", precision="fp32", plots=True)
    rows = evaluate_script.main(
        evaluate_script.Args(**common, baselines="full", landscape=True, split="val", out=tmp_path / "ev")
    )
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    drops = [r["accuracy"] for r in rows if r["name"].startswith("drop block")]
    ranked = summary["blocks_by_drop_cost"]
    assert sorted(ranked) == list(range(15))
    assert [drops[k] for k in ranked] == sorted(drops)

    rows = evaluate_script.main(evaluate_script.Args(**common, baselines="full", pruned=(out,), out=tmp_path / "ev2"))
    rival = next(r for r in rows if r.get("pruned"))
    model, meta = load_resnet(out)
    assert rival["keep_blocks"] == list(KEEP) and rival["blocks_mean"] == len(KEEP) and rival["blocks_std"] == 0
    assert rival["flops_mean"] == pytest.approx(model.flops(FixedBlocks(KEEP, 15).mask()[None]).item())
    assert rival["accuracy"] == pytest.approx(meta["test_accuracy"])
    assert (tmp_path / "ev2" / "accuracy_vs_flops.png").is_file()

    with pytest.raises(UsageError, match="keep_blocks"):
        evaluate_script.main(
            evaluate_script.Args(**common, baselines="none", pruned=(init_checkpoint,), out=tmp_path / "e3")
        )


def test_a_policy_started_as_a_block_set_keeps_it_for_every_image():
    policy = PolicyNet(15).eval()
    keep = FixedBlocks(KEEP, 15).mask()
    policy.start_as(keep)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    probs, _ = policy(images)
    assert torch.allclose(probs, torch.where(keep, 0.9, 0.1).expand(4, -1))
    for bad in (keep[:14], keep.float()):
        with pytest.raises(ValueError, match="bool mask of shape"):
            policy.start_as(bad)
    with pytest.raises(ValueError, match="prob"):
        policy.start_as(keep, prob=0.5)


def test_an_agent_started_from_a_pruned_network_walks_as_that_network(
    synthetic_dir, init_checkpoint, tmp_path, env_kwargs
):
    pruned = tmp_path / "pruned.pt"
    pretrain_resnet.main(pruned_args(synthetic_dir, pruned, init_checkpoint))
    # A learning rate too small to move either network, and the pretrained batch-norm statistics:
    # the walk after the one epoch is the start itself.
    still = dict(finetune_lr=1e-9, finetune_bn="frozen", precision="fp32")
    args = train_args(tmp_path, env_kwargs, stage="finetune", finetune_epochs=1, init_blocks=KEEP, **still)
    summary = train_blockdrop.main(replace(args, resnet_checkpoint=pruned))
    walk = summary["val"]
    assert walk["blocks_mean"] == len(KEEP) and walk["blocks_std"] == 0 and walk["unique_policies"] == 1
    assert walk["accuracy"] == pytest.approx(load_resnet(pruned)[1]["val_accuracy"])
    saved = torch.load(tmp_path / "run" / "agent.pt", weights_only=True)
    assert saved["args"]["init_blocks"] == str(KEEP)


def test_an_agent_may_start_from_a_trained_agents_features_and_a_block_set(tmp_path, env_kwargs):
    train_blockdrop.main(train_args(tmp_path, env_kwargs, stage="curriculum", curriculum_epochs=1, out=tmp_path / "a"))

    def weights(out: str) -> dict:
        return dict(load_agent(tmp_path / out / "agent.pt", device="cpu").policy.trunk.named_parameters())

    trained = weights("a")  # parameters only: batch-norm statistics move whatever the learning rate
    still = dict(stage="finetune", finetune_epochs=1, finetune_lr=1e-9, init_blocks=KEEP)
    for init, out in ((tmp_path / "a" / "agent.pt", "b"), (None, "c")):
        summary = train_blockdrop.main(train_args(tmp_path, env_kwargs, init=init, out=tmp_path / out, **still))
        walk = summary["val"]  # the keep head starts as the set whatever the trunk: every image walks it
        assert walk["blocks_mean"] == len(KEEP) and walk["blocks_std"] == 0 and walk["unique_policies"] == 1
    started = {out: weights(out) for out in "bc"}
    same = {out: all(torch.allclose(started[out][k], v, atol=1e-6) for k, v in trained.items()) for out in "bc"}
    assert same == {"b": True, "c": False}  # --init gave its features; without it the trunk is a fresh one


@pytest.mark.parametrize(
    ("init_blocks", "init", "message"),
    [((15,), None, "--init-blocks"), ((2, 2), None, "--init-blocks"), ((2, 2), "r32-curriculum-cpu", "--init-blocks")],
)
def test_a_bad_block_set_to_start_from_is_refused_before_any_work(tmp_path, env_kwargs, init_blocks, init, message):
    args = train_args(tmp_path, env_kwargs, stage="finetune", init_blocks=init_blocks, init=init)
    with pytest.raises(UsageError, match=message):
        train_blockdrop.main(args)
    assert not (tmp_path / "run").exists()
