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
    assert paper_line.endswith("| 88.60 |  |  |  |  |  |")  # no FLOPs, so no gap to our static line
    # He et al.'s ResNet-20 sits at our ResNet-20's FLOPs, an end of the line through ours.
    he20 = by_name["He et al. 2016: ResNet-20"]
    assert he20["vs_static_line"] == pytest.approx(he20["accuracy"] - static["accuracy"])
    assert static["vs_static_line"] is None and by_name["full ResNet"]["vs_static_line"] is None
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["rows"][1]["name"] == "static ResNet-20"
    assert (tmp_path / "e" / "accuracy_vs_flops.png").stat().st_size > 1000


def test_an_unshipped_static_depth_is_refused_before_any_work(env_kwargs, tmp_path):
    # 50 = 6n+2 is a valid CIFAR ResNet depth that is not one of He et al.'s, so none will ship.
    with pytest.raises(UsageError, match="no shipped ResNet-50"):
        evaluate_script.main(
            evaluate_script.Args(static=(50,), out=tmp_path / "e", data_dir=str(env_kwargs["data_dir"]))
        )
    assert not (tmp_path / "e").exists()


def test_the_gap_to_our_static_line_is_read_off_the_line_between_neighbouring_static_points():
    def point(name, flops, accuracy, **kind):
        return {"name": name, "flops_mean": flops, "accuracy": accuracy, **kind}

    rows = [
        point("agent", 0.2e9, 0.93),
        point("costly agent", 0.6e9, 0.99),
        point("static ResNet-20", 0.1e9, 0.90, static=True),
        point("full ResNet", 0.5e9, 0.95),
        point("static ResNet-44", 0.3e9, 0.94, static=True),
        point("pruned ResNet-110", 0.4e9, 0.94, static=True, pruned=True),
        point("He et al. 2016: ResNet-56", 0.25e9, 0.93, static=True, published=True),
        point("BlockDrop paper", None, 0.936, published=True),
    ]
    gap = {r["name"]: r["vs_static_line"] for r in evaluate_script.with_static_line_gap(rows)}
    assert gap["agent"] == pytest.approx(0.01)  # the line: 0.92 halfway from 0.90 to 0.94
    assert gap["pruned ResNet-110"] == pytest.approx(-0.005)  # pruned and published are judged, not the line
    assert gap["He et al. 2016: ResNet-56"] == pytest.approx(-0.0)
    for name in ("costly agent", "static ResNet-20", "full ResNet", "static ResNet-44", "BlockDrop paper"):
        assert gap[name] is None  # beyond the line's span, on it, or without FLOPs
    alone = evaluate_script.with_static_line_gap([rows[0], rows[3]])  # one static point is no line
    assert alone[0]["vs_static_line"] is None
    assert "| +1.00 |" in evaluate_script.markdown_table(
        [
            {
                **rows[0],
                **dict.fromkeys(("blocks_mean", "blocks_std", "flops_std", "unique_policies", "reward_mean")),
                "vs_static_line": 0.01,
            }
        ]
    )
