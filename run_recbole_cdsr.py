"""Train and evaluate one model on one dataset, or tune its hyper-parameters.

    python run_recbole_cdsr.py --model=SASRec --dataset=food_kitchen [--config_files="a.yaml b.yaml"]
        [--result_file=r.json] [--nproc=N --world_size=W --ip=HOST --port=P --group_offset=G]
        [--any_config_key=value ...]
    python run_recbole_cdsr.py --model=SASRec --tune=hyperopt|ray --params_file=F --max_evals=N
        [--algo=exhaustive|random|bayes] [--tune_result=PATH.csv]
        [--cpus_per_trial=1 --gpus_per_trial=0.5 --ray_address=HOST:PORT --ray_dashboard]

Any other ``--key=value`` is a config key (RecBole's command-line convention); its value
is read as a Python literal (number, bool, None, list, dict, quoted string) or else kept
as a string, never evaluated (recbole_cdsr.literal.parse_literal).
"""

import argparse
import json
import logging

from recbole_cdsr.checks import ConfigCheckError
from recbole_cdsr.quick_start import run
from recbole_cdsr.utils import get_model


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", default="SASRec", help="model name")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default ml100k_genre)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    ddp = parser.add_argument_group("multi-process training (RecBole's DDP runner)")
    ddp.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")
    ddp.add_argument("--world_size", type=int, default=-1, help="total processes")
    ddp.add_argument("--ip", default="localhost", help="master address for DDP")
    ddp.add_argument("--port", default="5678", help="master port for DDP")
    ddp.add_argument("--group_offset", type=int, default=0, help="rank offset of this node")
    tune = parser.add_argument_group("hyper-parameter tuning")
    tune.add_argument("--tune", choices=["hyperopt", "ray"], default=None)
    tune.add_argument("--params_file", default=None, help="search space, RecBole syntax")
    tune.add_argument("--max_evals", type=int, default=10, help="number of trials")
    tune.add_argument("--algo", choices=["exhaustive", "random", "bayes"], default="random")
    tune.add_argument("--tune_result", default=None, help="trial table (.csv; .md/.png beside)")
    tune.add_argument("--cpus_per_trial", type=float, default=1, help="ray: CPUs per trial")
    tune.add_argument("--gpus_per_trial", type=float, default=0, help="ray: GPU fraction per trial")
    tune.add_argument("--ray_address", default=None, help="ray: join this cluster")
    tune.add_argument("--ray_dashboard", action="store_true",
                      help="ray: start the dashboard of the private cluster (127.0.0.1)")
    args, rest = parser.parse_known_args()  # the rest are config keys, read by Config
    return parser, args, rest


def cli_config(rest: list[str]) -> dict:
    """``--key=value`` pairs left after our flags, values kept as the strings typed.

    Config reads each string once, as RecBole reads its command line but literals only
    (recbole_cdsr.literal.parse_literal): never evaluated. Parsing here too would read a
    quoted value twice (``--x="'[1]'"`` must stay the string ``[1]``).
    """
    out = {}
    for arg in rest:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            out[key] = value
    return out


def main() -> None:
    parser, args, rest = parse_args()
    try:  # a misspelt --model (e.g. I2Vae, sasrec) is a usage error, not a traceback
        get_model(args.model)
    except ValueError as err:
        parser.error(str(err))
    config_files = args.config_files.split() if args.config_files else None
    if args.tune:
        if not args.params_file:
            parser.error("--tune needs --params_file (e.g. properties/hyper/SASRec.hyper)")
        import sys

        from recbole_cdsr.tuning import tune

        base_config = cli_config(rest)
        sys.argv = sys.argv[:1]  # trials get their config from base_config, not argv
        logging.basicConfig(level=logging.INFO)
        out = tune(
            args.model, args.dataset, args.tune, args.params_file, args.max_evals, args.algo,
            config_files, base_config, args.tune_result,
            **({"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
                "ray_address": args.ray_address, "ray_dashboard": args.ray_dashboard}
               if args.tune == "ray" else {}),
        )
        logging.getLogger(__name__).info(
            "best trial %s: valid %.4f, test %s; tables %s", out["best"]["params"],
            out["best"]["valid_score"], json.dumps(out["test"].get("all")), out["files"],
        )
        return
    try:
        run(
            args.model,
            args.dataset,
            config_file_list=config_files,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except ConfigCheckError as err:  # a start-of-run check: the message says the fix
        logging.getLogger(__name__).error("%s", err)
        parser.exit(2, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main()
