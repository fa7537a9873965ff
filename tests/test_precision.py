"""The precision choice: bf16 where the CPU has it natively, fp32 elsewhere and when asked; and the
one-forward joint finetuning step against the two-forward form."""

import pytest
import torch

import blockdrop_env.device as device_module
import blockdrop_env.inference as inference_module
from agents.reinforce import BlockDropAgent, ReinforceConfig, bounded, make_optimizer, reinforce_loss, train_step
from blockdrop_env.device import cpu_flags, training_dtype
from blockdrop_env.inference import PLAIN, ForwardOptions
from blockdrop_env.vector_env import BlockDropVectorEnv
from experiments import pretrain_resnet

from .conftest import trained_like

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native_bf16(request, monkeypatch) -> bool:
    """Pretend this CPU has (or lacks) bf16 units."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: request.param)
    monkeypatch.setattr(inference_module, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_cpu_flags_are_read_from_cpuinfo():
    x86 = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpu_flags(x86) == {"fpu", "avx512f", "avx512_bf16", "amx_tile"}  # the first processor's
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert cpu_flags("no flags here") == set()
    assert not cpu_flags("flags\t: fpu avx512f avx2\n") & device_module.NATIVE_BF16_FLAGS  # AVX-512 alone emulates


def test_cpu_precision_follows_native_bf16(native_bf16):
    fp32_path = ForwardOptions(channels_last=True, chunk=64, gather_below=0.8)  # the CPU path before bf16
    chosen = ForwardOptions.for_device(CPU)
    if native_bf16:
        assert chosen == ForwardOptions(dtype="bfloat16", channels_last=True, chunk=256, gather_below=0.8)
        assert training_dtype(CPU) == torch.bfloat16
    else:
        assert chosen == fp32_path  # nothing changes where bf16 would be emulated
        assert training_dtype(CPU) == torch.float32
    assert ForwardOptions.for_device(CPU, precision="fp32") == fp32_path
    assert training_dtype(CPU, "fp32") == torch.float32
    assert ForwardOptions.for_device(torch.device("cuda"), precision="fp32").dtype == "float32"
    assert ForwardOptions.for_device(torch.device("cuda")).dtype == "float16"


def test_env_and_agent_follow_the_precision(native_bf16, env_kwargs):
    env = BlockDropVectorEnv(num_envs=4, split="test", **env_kwargs)
    assert env.task.predict.options.dtype == ("bfloat16" if native_bf16 else "float32")
    forced_fp32 = BlockDropVectorEnv(num_envs=4, split="test", precision="fp32", **env_kwargs)
    assert forced_fp32.task.predict.options == ForwardOptions.for_device(CPU, precision="fp32")
    for precision, half in (("auto", native_bf16), ("fp32", False)):
        with BlockDropAgent(device="cpu", precision=precision).autocast():
            assert torch.is_autocast_enabled("cpu") == half
            if half:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bad_precision_is_refused(env_kwargs):
    with pytest.raises(ValueError, match="precision must be one of"):
        BlockDropVectorEnv(num_envs=2, precision="bf16", **env_kwargs)
    with pytest.raises(ValueError, match="precision must be one of"):
        BlockDropAgent(device="cpu", precision="half")
    with pytest.raises(ValueError, match="pass one of"):
        BlockDropVectorEnv(num_envs=2, precision="fp32", forward=PLAIN, **env_kwargs)


def test_fp32_override_scores_exactly_as_the_plain_forward(env_kwargs, monkeypatch):
    monkeypatch.setattr(inference_module, "cpu_has_native_bf16", lambda: True)  # bf16 would be the default
    model = trained_like(BlockDropVectorEnv(num_envs=1, **env_kwargs).resnet, seed=0)
    plain = BlockDropVectorEnv(num_envs=16, split="test", checkpoint=model, plain=True, device="cpu",
                               data_dir=env_kwargs["data_dir"])  # fmt: skip
    fp32 = BlockDropVectorEnv(num_envs=16, split="test", checkpoint=model, precision="fp32", device="cpu",
                              data_dir=env_kwargs["data_dir"])  # fmt: skip
    images, _ = plain.reset(seed=0)
    fp32.reset(options={"index": torch.arange(16)})
    plain.reset(options={"index": torch.arange(16)})
    keep = torch.rand(16, 15, generator=torch.Generator().manual_seed(0)) < 0.6
    assert torch.equal(fp32.evaluate(keep).prediction, plain.evaluate(keep).prediction)


def test_pretraining_precision_flag_changes_the_arithmetic(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    common = dict(epochs=1, batch_size=16, device="cpu", data_dir=str(synthetic_dir))

    def weights(name: str, precision: str) -> dict[str, torch.Tensor]:
        pretrain_resnet.main(pretrain_resnet.Args(**common, precision=precision, out=tmp_path / name))
        return torch.load(tmp_path / name, weights_only=True)["state_dict"]

    fp32, fp32_again, bf16 = weights("a.pt", "fp32"), weights("b.pt", "fp32"), weights("c.pt", "auto")
    assert all(torch.equal(fp32[k], fp32_again[k]) for k in fp32)
    assert not all(torch.equal(fp32[k], bf16[k]) for k in fp32)  # bf16 autocast really ran


def test_one_forward_finetuning_equals_the_two_forward_form(env_kwargs):
    """train_step scores the sampled action with the predictions of its own cross-entropy forward;
    in fp32 the loss and every gradient equal those of scoring it with a second forward in the env."""
    torch.manual_seed(0)
    env = BlockDropVectorEnv(num_envs=8, split="train", augment=False, penalty=-5.0, precision="fp32", **env_kwargs)
    trained_like(env.resnet, seed=1)
    _, shown = env.reset(seed=0)
    agent = BlockDropAgent(device="cpu", precision="fp32")
    config = ReinforceConfig(lr=0.0, beta=0.0, finetune=True)  # lr 0: the step leaves the weights as they are
    optimizer = make_optimizer(agent, env, config)
    images, labels = env.images.clone(), env.privileged_labels().clone()

    generator = torch.Generator().manual_seed(3)
    scored, predict = [], env.task.predict
    env.task.predict = lambda x, keep: scored.append(len(x)) or predict(x, keep)
    stats = train_step(agent, env, optimizer, config, generator)
    env.task.predict = predict
    assert scored == [8]  # the env ran the greedy baseline alone: the sampled action came scored
    # Every trained parameter but the policy's value head (REINFORCE does not use it).
    params = [p for p in [*agent.policy.parameters(), *env.resnet.parameters()] if p.grad is not None]
    assert len(params) == len(list(env.resnet.parameters())) + len(list(agent.policy.parameters())) - 2
    one_forward = [p.grad.clone() for p in params]

    # The two-forward form by hand: same images, same draws.
    generator = torch.Generator().manual_seed(3)
    optimizer.zero_grad(set_to_none=True)
    agent.policy.train()
    probs, _ = agent.policy(images)
    greedy = probs.detach() >= 0.5
    sampled = torch.bernoulli(bounded(probs.detach(), config.alpha), generator=generator).bool()
    ce = torch.nn.functional.cross_entropy(env.resnet(images, sampled), labels)
    env.reset(options={"index": shown["index"]})
    rewards = torch.stack([env.score(sampled), env.score(greedy)])  # the env's own forwards
    decide = torch.ones(15, dtype=torch.bool)
    loss, _ = reinforce_loss(probs, sampled, rewards[0] - rewards[1], decide, config.alpha, 0.0, config.entropy)
    (loss + ce).backward()
    assert torch.equal(stats["reward"], rewards[0]) and torch.equal(stats["reward_greedy"], rewards[1])
    assert stats["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert stats["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    for p, expected in zip(params, one_forward, strict=True):
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in one_forward[-len(list(env.resnet.parameters())) :])  # the ResNet learns
