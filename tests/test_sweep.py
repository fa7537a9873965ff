"""The comparison as Ray Tune trials on a local Ray cluster of two nodes made on this machine."""

import json

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from experiments import compare  # noqa: E402


@pytest.mark.slow
def test_a_sweep_runs_its_trials_on_both_nodes_and_gathers_them(tmp_path, env_kwargs):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        args = compare.Args(
            algorithms=("a2c",),
            seeds=(0, 1),
            env_steps=32,
            num_envs=16,
            eval_points=1,
            name="two-nodes",
            out_root=tmp_path,
            address=cluster.address,
            cpus_per_trial=1,
            checkpoint=env_kwargs["checkpoint"],
            device="cpu",
            data_dir=str(env_kwargs["data_dir"]),
        )
        results = compare.main(args)
    finally:
        ray.shutdown()
        cluster.shutdown()
    # One CPU per node and per trial: the two trials ran at once, one on each node.
    assert len({r["node"] for r in results}) == 2
    assert [(r["algorithm"], r["seed"]) for r in results] == [("a2c", 0), ("a2c", 1)]
    for seed in (0, 1):  # gathered in this process, as each finished
        saved = json.loads((tmp_path / "two-nodes" / "runs" / f"a2c_seed{seed}.json").read_text())
        assert saved["env_steps"] == 32 and saved["node"] in {r["node"] for r in results}
    assert "| a2c | 2 |" in (tmp_path / "two-nodes" / "statistics.md").read_text()
