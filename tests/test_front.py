"""The accuracy-FLOPs front in evaluate: shipped static ResNets beside the policy, published points."""

import json

import pytest

from agents.policy import PolicyNet
from blockdrop_env.resnet import CifarResNet
from experiments import evaluate as evaluate_script
from experiments.cli import UsageError
from experiments.published import published_rows


def test_published_points_carry_our_flops():
    rows = {r["name"]: r for r in published_rows()}
    r32 = CifarResNet(32)
    assert rows["He et al. 2016: ResNet-32"]["flops_mean"] == float(r32.flops())
    assert rows["He et al. 2016: ResNet-20"]["blocks_mean"] == 9
    reproduction = next(r for name, r in rows.items() if "reproduction" in name)
    by_hand = r32.fixed_flops + 12.98 * float(r32.block_flops.sum()) / 15 + PolicyNet(15).flops()
    assert reproduction["flops_mean"] == pytest.approx(by_hand)
    paper = next(r for name, r in rows.items() if name.startswith("BlockDrop paper"))
    assert paper["flops_mean"] is None and paper["reward_mean"] is None


def test_evaluate_puts_static_resnets_and_published_points_beside_the_policy(env_kwargs, tmp_path):
    common = dict(device="cpu", data_dir=str(env_kwargs["data_dir"]), checkpoint=env_kwargs["checkpoint"])
    rows = evaluate_script.main(
        evaluate_script.Args(baselines="full", static=(20,), published=True, out=tmp_path / "e", batch_size=8, **common)
    )
    by_name = {r["name"]: r for r in rows}
    static = by_name["static ResNet-20"]
    assert static["blocks_mean"] == 9 and static["flops_mean"] == float(CifarResNet(20).flops())
    assert static["reward_mean"] is None and static["num_images"] == 16
    assert by_name["full ResNet"]["blocks_mean"] == 15 and by_name["full ResNet"]["reward_mean"] is not None
    assert any(r.get("published") for r in rows)
    table = (tmp_path / "e" / "table.md").read_text()
    paper_line = next(line for line in table.splitlines() if line.startswith("| BlockDrop paper"))
    assert paper_line.endswith("| 88.60 |  |  |  |  |")
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["rows"][1]["name"] == "static ResNet-20"
    assert (tmp_path / "e" / "accuracy_vs_flops.png").stat().st_size > 1000


def test_an_unshipped_static_depth_is_refused_before_any_work(env_kwargs, tmp_path):
    # 50 = 6n+2 is a valid CIFAR ResNet depth that is not one of He et al.'s, so none will ship.
    with pytest.raises(UsageError, match="no shipped ResNet-50"):
        evaluate_script.main(
            evaluate_script.Args(static=(50,), out=tmp_path / "e", data_dir=str(env_kwargs["data_dir"]))
        )
    assert not (tmp_path / "e").exists()
