"""``ray_cluster.yaml`` is a real cluster-launcher config: Ray's own preparation and
schema validation accept it offline, and it has the shape the docs promise."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_ray_accepts_the_cluster_config(raw):
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_validation_would_catch_a_broken_config(raw):
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cpu_head_and_gpu_workers(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p")), "the head is a CPU instance"
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)
    assert any(t.get("min_workers", 0) >= 1 for t in workers), "a GPU node is there when a run starts"


def test_setup_installs_torch_first_then_the_pinned_project_on_the_login_path(raw):
    commands = raw["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if '"torch==' in c)
    project_at = next(i for i, c in enumerate(commands) if "-c constraints.txt -e ." in c)
    assert torch_at < project_at
    assert any(".venv/bin" in c and "bashrc" in c for c in commands)
