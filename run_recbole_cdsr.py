"""Train and evaluate one model on one dataset.

    python run_recbole_cdsr.py --model=SASRec --dataset=food_kitchen [--config_files="a.yaml b.yaml"]
        [--result_file=r.json] [--nproc=N --world_size=W --ip=HOST --port=P --group_offset=G]
        [--any_config_key=value ...]

Any other ``--key=value`` is a config key (RecBole's command-line convention).
"""

import argparse

from recbole_cdsr.quick_start import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", default="SASRec", help="model name")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (default ml100k_genre)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes")
    parser.add_argument("--ip", default="localhost", help="master address for DDP")
    parser.add_argument("--port", default="5678", help="master port for DDP")
    parser.add_argument("--group_offset", type=int, default=0, help="rank offset of this node")
    args, _ = parser.parse_known_args()  # the rest are config keys, read by Config
    config_files = args.config_files.split() if args.config_files else None
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


if __name__ == "__main__":
    main()
