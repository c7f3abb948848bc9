"""One vocabulary: the config schema, the cell schema, the attention registry, the models and the CLI all use
attnsweep.vocabulary's axes and values."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from attnsweep import attention, cli, model
from attnsweep.packages import VERSIONED
from attnsweep.sweep import KERNEL_PACKAGES
from attnsweep.vocabulary import (AXES, BATCH_POLICIES, CHOICES, COMPILED_MODES, CUDAGRAPH_MODES, DEVICES, MODELS,
                                  MODES, QUADRATIC_MEMORY, STATUSES, ATTEMPT_OUTCOMES, TORCH_COMPILE_MODES,
                                  kv_heads_problem, memory_kind)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
CELL_SCHEMA = json.loads((ROOT / "src/attnsweep/schemas/cell.schema.json").read_text())


def _enum(defn: dict) -> list:
    """The enum of a list definition (`items: {enum: [...]}`) or of a plain one."""
    return defn.get("items", defn).get("enum")


def test_config_schema_enums_are_the_vocabulary() -> None:
    defs = CONFIG_SCHEMA["$defs"]
    for axis, list_def in {"model": "model_list", "attn": "attn_list", "mode": "mode_list",
                           "precision": "precision_list", "optimizer": "optimizer_list",
                           "harness": "harness_list"}.items():
        assert tuple(_enum(defs[list_def])) == CHOICES[axis], axis
        assert defs["grid"]["properties"][axis]["$ref"] == f"#/$defs/{list_def}", axis
    assert tuple(defs["batch"]["properties"]["policy"]["enum"]) == BATCH_POLICIES
    assert tuple(CONFIG_SCHEMA["properties"]["device"]["enum"]) == DEVICES
    assert set(defs["grid"]["properties"]) >= set(AXES)


def test_cell_schema_enums_are_the_vocabulary() -> None:
    props = CELL_SCHEMA["properties"]["cell"]["properties"]
    for axis in ("mode", "precision", "optimizer", "harness"):
        assert tuple(props[axis]["enum"]) == CHOICES[axis], axis
    assert tuple(props["batch_policy"]["enum"]) == BATCH_POLICIES
    assert tuple(props["device"]["enum"]) == DEVICES
    assert tuple(CELL_SCHEMA["properties"]["status"]["enum"]) == STATUSES
    outcome = CELL_SCHEMA["properties"]["batch_attempts"]["items"]["properties"]["outcome"]["enum"]
    assert tuple(outcome) == ATTEMPT_OUTCOMES
    assert set(CELL_SCHEMA["properties"]["cell"]["required"]) >= set(AXES)


def test_attention_registry_and_models_are_the_vocabulary() -> None:
    assert tuple(attention.names()) == CHOICES["attn"]
    assert set(QUADRATIC_MEMORY) < set(CHOICES["attn"])  # the kinds name attention the registry has
    assert {memory_kind(a) for a in CHOICES["attn"]} == {"quadratic", "linear"}
    # A kernel package's family is every implementation that needs its module (flash-attn-4: flash_attn.cute), and
    # its version is one a record notes (packages.VERSIONED).
    assert set(KERNEL_PACKAGES) <= set(VERSIONED)
    assert KERNEL_PACKAGES["flash-attn-4"] == tuple(
        n for n, impl in attention.REGISTRY.items() if "flash_attn.cute" in impl.requires)
    assert list(model.MODEL_CONFIGS) == list(MODELS)
    for name, shape in MODELS.items():
        cfg = model.MODEL_CONFIGS[name]
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (shape.n_layer, shape.n_embd, shape.n_head)


def test_cli_choices_are_the_vocabulary() -> None:
    parser = cli.build_parser()
    cell = parser._subparsers._group_actions[0].choices["cell"]  # argparse keeps subparsers here
    choices = {a.dest: tuple(a.choices) for a in cell._actions if a.choices}
    for axis in ("model", "attn", "mode", "precision", "optimizer", "harness"):
        assert choices[axis] == CHOICES[axis], axis
    assert choices["batch_policy"] == BATCH_POLICIES and choices["device"] == DEVICES


def test_kv_heads_divisibility_is_checked_once() -> None:
    assert kv_heads_problem("small", None) is None and kv_heads_problem("small", 4) is None
    assert "divide the 12 heads" in kv_heads_problem("small", 5)
    assert "must be >= 1" in kv_heads_problem("medium", 0)


def test_each_mode_says_how_it_compiles() -> None:
    """The modes and what torch.compile runs for each are one table: the harnesses, the batch rules and the report
    ask it (COMPILED_MODES, CUDAGRAPH_MODES) instead of comparing names."""
    assert MODES == tuple(TORCH_COMPILE_MODES) == CHOICES["mode"]
    assert TORCH_COMPILE_MODES == {"eager": None, "compiled": "default", "compiled_cudagraphs": "reduce-overhead"}
    assert COMPILED_MODES == ("compiled", "compiled_cudagraphs") and CUDAGRAPH_MODES == ("compiled_cudagraphs",)
