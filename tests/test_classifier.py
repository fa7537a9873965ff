"""agents.classifier: a trained agent as an image classifier that runs only the blocks it keeps."""

import pytest
import torch

from agents.classifier import BlockDropClassifier
from agents.evaluation import make_eval_env
from agents.policy import PolicyNet
from blockdrop_env.checkpoint import load_resnet
from blockdrop_env.resnet import CifarResNet, resnet32

from .conftest import requires_real_data, trained_like


def test_logits_equal_the_masked_forward_and_dropped_blocks_are_skipped():
    torch.manual_seed(0)
    model = BlockDropClassifier(PolicyNet(15), trained_like(resnet32(), seed=0))
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    logits, keep = model.classify(images)
    with torch.no_grad():
        expected = model.resnet(images, keep)
    assert torch.allclose(logits, expected, atol=1e-4) and torch.equal(logits.argmax(1), expected.argmax(1))
    assert torch.equal(model(images[:1]), model.classify(images[:1])[0])  # batch 1: each block runs or not
    assert torch.equal(model.flops(keep), model.resnet.flops(keep) + model.policy.flops())


def test_bad_inputs_are_refused():
    model = BlockDropClassifier(PolicyNet(15), resnet32())
    with pytest.raises(ValueError, match="uint8"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(batch, 3, 32, 32\)"):
        model(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="the policy decides 54 blocks; the ResNet-32 has 15"):
        BlockDropClassifier(PolicyNet(54), resnet32())


@requires_real_data
@pytest.mark.slow
def test_a_shipped_agent_classifies_as_the_env_scores_it_on_real_test_images():
    model = BlockDropClassifier.load("r32-in16-finetune-p2-cpu")
    resnet, _ = load_resnet(depth=32)
    resnet.load_state_dict(model.resnet.state_dict())
    env = make_eval_env("test", batch_size=500, limit=1000, precision="fp32", checkpoint=resnet, device="cpu")
    for start in (0, 500):
        images, _ = env.reset(options={"index": torch.arange(start, start + 500)})
        logits, keep = model.classify(images)
        assert torch.equal(keep, model.decide(images))
        assert torch.equal(logits.argmax(1), env.evaluate(keep).prediction)


def test_load_takes_a_training_runs_checkpoint(tmp_path):
    from agents.reinforce import BlockDropAgent, save_agent

    torch.manual_seed(0)
    agent = BlockDropAgent(device="cpu", policy_input=16)
    finetuned = trained_like(resnet32(), seed=1)
    save_agent(tmp_path / "agent.pt", agent, resnet=finetuned)
    model = BlockDropClassifier.load(tmp_path / "agent.pt")
    assert isinstance(model.resnet, CifarResNet) and model.policy.input_size == 16
    assert all(torch.equal(v, finetuned.state_dict()[k]) for k, v in model.resnet.state_dict().items())


def test_folding_batch_norm_keeps_the_logits_and_export_keeps_the_predictions(tmp_path):
    torch.manual_seed(0)
    model = BlockDropClassifier(trained_like(PolicyNet(15), seed=2), trained_like(resnet32(), seed=0))
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    logits, keep = model.classify(images)
    folded = model.folded()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    folded_logits, folded_keep = folded.classify(images)
    assert torch.equal(folded_keep, keep) and torch.allclose(folded_logits, logits, atol=1e-4)
    assert 0 < keep.float().mean() < 1  # some blocks skipped, some run: the data-dependent path is exercised

    torch.export.save(model.export(max_batch=64), tmp_path / "classifier.pt2")
    exported = torch.export.load(tmp_path / "classifier.pt2").module()
    with torch.no_grad():
        for batch in (images[:1], images[1:2], images):  # batch 1 (a block runs on 0 or 1 image) and 24
            exported_logits, exported_keep = exported(batch)
            logits, keep = model.classify(batch)
            assert torch.equal(exported_keep, keep)
            assert torch.allclose(exported_logits, logits, atol=1e-4)
    with pytest.raises(ValueError, match="max_batch must be >= 2"):
        model.export(max_batch=1)


@requires_real_data
@pytest.mark.slow
def test_the_exported_shipped_agent_predicts_as_the_classifier_on_real_test_images():
    from blockdrop_env.data import load_cifar

    model = BlockDropClassifier.load("r32-in16-finetune-p2-cpu")
    exported = model.export().module()
    images = load_cifar("test")[0][:1000]
    with torch.no_grad():
        logits, keep = exported(images)
    expected_logits, expected_keep = model.classify(images)
    assert torch.equal(keep, expected_keep)
    assert torch.equal(logits.argmax(1), expected_logits.argmax(1))
