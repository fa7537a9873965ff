"""The deploy measurements (experiments.deploy) on stand-in classifiers: what is timed, in which
order, and what is summed."""

import itertools

import torch
import torch.nn.functional as F

from experiments import deploy


def stand_in(name: str, depth: int, calls: list[str]) -> deploy.Deployed:
    """A classifier that answers the class written in each image's first pixel, at 7 FLOPs."""

    def classify(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(name)
        return F.one_hot(images[:, 0, 0, 0].long() % 10, 10).float(), torch.full((len(images),), 7.0)

    return deploy.Deployed(name, "static", depth, classify)


def test_models_take_turns_in_rounds_and_their_figures_cover_every_image():
    calls: list[str] = []
    models = [stand_in("ResNet-32", 32, calls), stand_in("ResNet-20", 20, calls)]
    labels = torch.arange(12) % 10
    images = torch.zeros(12, 3, 32, 32, dtype=torch.uint8)
    images[:9, 0, 0, 0] = labels[:9].to(torch.uint8)  # the last three images answer class 0: two of them wrongly
    rounds = []
    rows = deploy.measure(models, images, labels, 6, (4,), rounds=3, on_round=rounds.append)
    # Each round times one model, then the other: a drift in the machine's speed reaches both.
    assert [name for name, _ in itertools.groupby(calls)] == ["ResNet-32", "ResNet-20"] * 3
    assert rounds == [1, 2, 3]
    for row in rows:
        assert row["accuracy"] == 10 / 12 and row["flops"] == 7.0
        assert row["latency_images"] == 6 and row["rounds"] == 3
        assert 0 < row["latency 1 thread"]["p50_ms"] <= row["latency 1 thread"]["p90_ms"]
        assert row["throughput batch 4"] > 0
    ratios = deploy.with_ratios(rows)
    assert ratios[0]["speedup"]["flops"] == ratios[1]["speedup"]["flops"] == 1.0


def test_more_rounds_than_latency_images_is_one_image_a_round():
    calls: list[str] = []
    rows = deploy.measure(
        [stand_in("ResNet-32", 32, calls)],
        torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long),
        2,
        (2,),
        rounds=5,
    )
    assert rows[0]["rounds"] == 2 and rows[0]["accuracy"] == 1.0
