"""The ``diffora`` command: ``run`` (the Hydra app), ``aggregate`` (tables of a sweep), ``export`` (a PEFT adapter
or a merged model from a finished run).

    diffora run task=mrpc seed=1                  # one run; `diffora run -m task=mrpc,rte seed=0,1` for a sweep
    diffora run --help                            # the config groups, their options, every key described
    diffora aggregate logs/multiruns/<sweep>
    diffora export logs/runs/mrpc/<run> exported/ --merge
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

from nas.errors import ConfigError

COMMANDS = {"run": "one run of the Hydra app (search → train → evaluate); -m for a sweep",
            "aggregate": "tables, paired tests and a plot of a sweep folder",
            "export": "a finished run's adapter in PEFT's format, or a merged model (--merge)",
            "bench": "the placement benchmark: build a table from placement_bench sweeps, show it, score criteria"}
USAGE = "\n".join(["usage: diffora COMMAND [ARGS]", "", "commands:",
                   *(f"  {name:<10} {text}" for name, text in COMMANDS.items()), "",
                   "`diffora COMMAND --help` for each command's arguments."])


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line) to one command; errors are one line naming the fix."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {"run": run_command, "aggregate": aggregate_command, "export": export_command, "bench": bench_command}
    if command not in handlers:
        sys.exit(f"diffora: error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    try:
        return handlers[command](rest)
    except ConfigError as error:
        sys.exit(f"diffora: error: {error}")


def run_command(overrides: list[str], prog: str = "diffora run") -> int:
    """Hydra's command line with ``overrides`` (``--help``: :func:`run_help`, which lists only pickable options); a
    config group option that is not a yaml file of conf/<group>/ is refused first (:func:`check_group_options`)."""
    from nas.config import CONF_DIR, config_groups

    check_group_options(overrides, config_groups(CONF_DIR))
    if "-h" in overrides or "--help" in overrides:
        print(run_help([o for o in overrides if o not in ("-h", "--help")], prog))
        return 0
    from nas.app import main as hydra_main
    from nas.app import quiet_hydra_off_rank_zero

    sys.argv = [prog, *overrides]
    quiet_hydra_off_rank_zero()
    hydra_main()
    return 0


def check_group_options(argv: list[str], groups: dict[str, list[str]]) -> None:
    """Refuse ``group=option`` (also ``+group=``, ``~group=``, ``group@pkg=``, sweeps ``group=a,b``, globs) where
    ``option`` is not a yaml file of the group: Hydra would list, and let a user pick, the ConfigStore's ``*_schema``
    nodes, which compose silently with other defaults. Key overrides (``method.lr=…``), Hydra's own groups
    (``hydra/launcher=joblib``: its plugins add options) and what Hydra cannot parse are left to Hydra."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a command line Hydra cannot parse: Hydra says why
            overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_known_args(argv)[0].overrides)
    except (HydraException, SystemExit):
        return
    for override in overrides:
        group = override.key_or_group
        if group not in groups or group.startswith("hydra/") or (override.is_delete() and override.value() is None):
            continue
        options, value = groups[group], override.value()
        if value is None:
            raise ConfigError(f"{group}=null cannot deselect a config group on the command line; drop it with ~{group}")
        if isinstance(value, Glob):
            hidden = [name for name in value.filter(options + schema_nodes(group)) if name not in options]
            if hidden:
                raise ConfigError(f"{group}={override.get_value_string()} would also pick {', '.join(hidden)}, not "
                                  f"options; name the options instead: {group}={','.join(value.filter(options))}")
            continue
        try:
            picked = list(override.sweep_string_iterator()) if override.is_sweep_override() else \
                [override.get_value_element_as_str()]
        except HydraException:
            continue
        for option in picked:
            if option not in options:
                raise ConfigError(f"{group}={option} is unknown; choose one of: {', '.join(options)}")


def schema_nodes(group: str) -> list[str]:
    """The ConfigStore's nodes of ``group`` (``adalora_schema``, …): Hydra offers them as options too."""
    from hydra.core.config_store import ConfigStore

    from nas.config import register_configs

    register_configs()
    return [name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)] \
        if ConfigStore.instance().repo.get(group) else []


def run_help(overrides: list[str], prog: str = "diffora run") -> str:
    """Usage, the config groups with their options, and every key of the config composed from ``overrides`` with its
    resolved value and its description (nas/config_docs.py)."""
    from nas.config import CONF_DIR, config_groups
    from nas.config_docs import compose_config, listing

    groups = config_groups(CONF_DIR)
    width = max(len(g) for g in groups) + 1
    lines = [f"usage: {prog} [-m] [OVERRIDE ...]", "",
             "One run: search (DiffoRA), discretize, train, evaluate; outputs in the run dir. Overrides are",
             "group=option (task=mrpc) or key=value (discretizer.rho=0.25, seed=1); -m runs a sweep over",
             "comma-separated values (task=mrpc,rte seed=0,1). Hydra's own flags (--cfg job, --info, --hydra-help)",
             "pass through. Every key is described in docs/config.md.", "", "config groups (group=option):",
             *(f"  {g + ':':<{width}} {', '.join(options)}" for g, options in groups.items())]
    cfg = compose_config([o for o in overrides if o not in ("-m", "--multirun")])
    return "\n".join([*lines, "", "the composed config" + (f" ({' '.join(overrides)})" if overrides else "") +
                      ": key = resolved value, then what it does", *listing(cfg)])


def aggregate_command(argv: list[str]) -> int:
    """``diffora aggregate SWEEP_DIR [--out DIR] [--reference METHOD] [--reference-label LABEL] [--within KEY]``."""
    from nas.reporting.aggregate import DEFAULT_REFERENCE, AggregateWarning, aggregate

    parser = argparse.ArgumentParser(prog="diffora aggregate", description=COMMANDS["aggregate"] + ": runs.csv, "
                                     "summary.csv, summary.md, paired.csv and summary.png")
    parser.add_argument("sweep_dir", help="a Hydra sweep folder (hydra.sweep.dir), or a folder holding several")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/aggregate)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="METHOD",
                        help=f"method the paired differences are taken against (default: {DEFAULT_REFERENCE})")
    parser.add_argument("--reference-label", default=None, metavar="LABEL",
                        help="variant label of the reference row, needed only where the reference method has several "
                             "rows in a task (e.g. 'space.rank=8', as printed in summary.md's variant column); "
                             "with --within, key=value pairs the reference rows have (e.g. 'criterion=random')")
    parser.add_argument("--within", action="append", default=[], metavar="KEY",
                        help="pair each row with the reference row of the same KEY value (a label key, e.g. "
                             "discretizer.rho: each budget against random at that budget) and draw curve.png; "
                             "repeatable")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = aggregate(args.sweep_dir, args.out, reference=args.reference, reference_label=args.reference_label,
                          within=args.within)
    for w in caught:
        if issubclass(w.category, AggregateWarning):
            print(f"diffora: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(paths["summary_md"].read_text())
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def bench_command(argv: list[str]) -> int:
    """``diffora bench {build,show,score,placements,criteria}`` (nas/bench/cli.py)."""
    from nas.bench.cli import main as bench_main

    return bench_main(argv)


def export_command(argv: list[str]) -> int:
    """``diffora export RUN_DIR OUT_DIR [--merge]``."""
    from nas.adapters.export import export_run

    parser = argparse.ArgumentParser(prog="diffora export", description=COMMANDS["export"])
    parser.add_argument("run_dir", type=Path, help="a finished run's folder (it holds metrics.json and adapter/)")
    parser.add_argument("out_dir", type=Path, help="a new or empty folder")
    parser.add_argument("--merge", action="store_true",
                        help="write the base model with the adapter merged in (loads with transformers alone)")
    args = parser.parse_args(argv)
    written = export_run(args.run_dir, args.out_dir, merge=args.merge)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
