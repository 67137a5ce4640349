"""CDSRDataset: RecBole's SequentialDataset that knows each item's domain.

It also keeps RecBole from changing the data silently (docs/atomic_format.md):
timestamps stay float64 (RecBole's float32 merges Unix seconds), rows dropped by
filtering and users left out of a split are counted and logged, histories of a fixed
split longer than ``MAX_ITEM_LIST_LENGTH`` keep their most recent items (logged), and
a domain too small to rank in is reported.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureType

logger = logging.getLogger(__name__)

EVAL_ROW_FIELD = "eval_row_id"  # position of a row in its valid/test split
SPLIT_NAMES = ("train", "valid", "test")


def sequence_rows(users: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Train rows to keep for a model that puts a loss at every position of a row.

    The train split holds one prefix row per target, each user's rows in sequence order
    (RecBole's augmentation and the benchmark files alike); a row's history is the
    ``MAX_ITEM_LIST_LENGTH`` items before its target.

    Args:
        users: ``[R]`` user id of every train row.
        window: None keeps each user's last row (its most recent ``MAX_ITEM_LIST_LENGTH``
            targets: older ones are never trained on); an int L (= the history width)
            keeps the rows 0, L, 2L, ... before each user's last, whose positions cover
            every target of the user exactly once.

    Returns:
        LongTensor of kept row indices, ascending.
    """
    order = torch.argsort(users, stable=True)
    sorted_users = users[order]
    last = torch.bincount(sorted_users).cumsum(0) - 1  # last sorted position of each user
    from_end = torch.empty_like(order)
    from_end[order] = last[sorted_users] - torch.arange(len(users))
    keep = from_end == 0 if window is None else from_end % window == 0
    return torch.nonzero(keep).flatten()


class CDSRDataset(SequentialDataset):
    """Sequential dataset with item domains (see docs/atomic_format.md).

    Attributes:
        domain_names (list[str]): domain tokens; domain index d is ``domain_names[d]``.
        item_domain (torch.LongTensor): ``[n_items]`` domain index per internal item id,
            -1 for the padding item. Single-domain data: all 0, one domain named after
            the dataset.
        filter_report (dict): ``{setting: {"rows": dropped, "users": users lost}}`` for
            each RecBole filter that dropped interactions.
        split_report (dict): after ``build()``, ``{split: {"rows", "users",
            "users_missing", "missing_by_count": {n_interactions: users}}}``.
    """

    def __init__(self, config):
        self.filter_report = {}
        self.split_report = {}
        super().__init__(config)
        self._init_domains()

    # ------------------------------------------------------------ filtering, counted
    def _counted(self, settings: tuple[str, ...], step) -> None:
        """Runs RecBole filter ``step`` and logs what it dropped (``filter_report``)."""
        users = set(self.inter_feat[self.uid_field].values)
        rows = len(self.inter_feat)
        step()
        dropped = rows - len(self.inter_feat)
        if dropped:
            lost = len(users - set(self.inter_feat[self.uid_field].values))
            label = ", ".join(f"{k}={self.config[k]!r}" for k in settings)
            self.filter_report[settings[0]] = {"rows": dropped, "users": lost}
            logger.warning(
                "%s: %s dropped %d of %d interactions; %d users lost every row",
                self.dataset_name, label, dropped, rows, lost,
            )

    def _remove_duplication(self) -> None:
        self._counted(("rm_dup_inter",), super()._remove_duplication)

    def _filter_by_field_value(self) -> None:
        self._counted(("val_interval",), super()._filter_by_field_value)

    def _filter_by_inter_num(self) -> None:
        self._counted(
            ("user_inter_num_interval", "item_inter_num_interval"),
            super()._filter_by_inter_num,
        )

    def _filter_inter_by_user_or_item(self) -> None:
        # RecBole silently drops interactions whose user/item has no row in .user/.item.
        if self.config["filter_inter_by_user_or_item"]:
            for feat, field, suffix in (
                (self.user_feat, self.uid_field, "user"),
                (self.item_feat, self.iid_field, "item"),
            ):
                if feat is None:
                    continue
                unknown = ~self.inter_feat[field].isin(feat[field].values)
                if unknown.any():
                    examples = list(self.inter_feat.loc[unknown, field].unique()[:5])
                    raise ValueError(
                        f"{self.dataset_name}.inter: {int(unknown.sum())} interactions have a "
                        f"{field} with no row in {self.dataset_name}.{suffix} (e.g. {examples}); "
                        f"add those rows to {self.dataset_name}.{suffix}"
                    )
        super()._filter_inter_by_user_or_item()

    # ------------------------------------------------------------ exact timestamps
    def _dataframe_to_interaction(self, data: pd.DataFrame) -> Interaction:
        # RecBole makes FLOAT fields float32, which merges Unix seconds (spacing 128 s
        # near 1.7e9) and lets ties fall back to file order; keep the time field float64.
        inter = super()._dataframe_to_interaction(data)
        field = self.time_field
        if (
            field in data
            and self.field2type.get(field) == FeatureType.FLOAT
            and field not in (self.config["numerical_features"] or [])
        ):
            exact = data[field].to_numpy(dtype=np.float64, copy=True)
            inter.update(Interaction({field: torch.from_numpy(exact)}))
        return inter

    # ------------------------------------------------------------ fixed splits
    def _benchmark_presets(self) -> None:
        list_field = self.iid_field + self.config["LIST_SUFFIX"]
        if list_field not in self.inter_feat:
            raise ValueError(
                f"{self.dataset_name}: benchmark_filename {self.benchmark_filename_list} "
                f"needs the history column {list_field}:token_seq in every .inter file and "
                f"in load_col['inter']; see docs/atomic_format.md"
            )
        self._truncate_histories(list_field)
        super()._benchmark_presets()
        lengths = self.inter_feat[self.item_list_length_field]
        empty = lengths == 0
        if empty.any():
            # A pad-only history keeps every model well defined (gather at position 0)
            # and keeps the row in the metrics; groups (e.g. `nohist`) report it.
            logger.warning(
                "%s: %d rows have an empty %s; each gets one padding token as history",
                self.dataset_name, int(empty.sum()), self.item_id_list_field,
            )
            self.inter_feat.loc[empty, self.item_list_length_field] = 1

    def _truncate_histories(self, list_field: str) -> None:
        """Keeps the last ``MAX_ITEM_LIST_LENGTH`` entries of every ``<field>_list``
        column (as RecBole's own augmentation does), logging how many rows per file."""
        limit = self.max_item_list_len
        lengths = self.inter_feat[list_field].map(len).to_numpy()
        long = lengths > limit
        if not long.any():
            return
        bounds = np.cumsum([0, *self.file_size_list])
        for part, start, end in zip(self.benchmark_filename_list, bounds[:-1], bounds[1:]):
            n = int(long[start:end].sum())
            if n:
                logger.warning(
                    "%s.%s.inter: %d of %d rows have a %s longer than MAX_ITEM_LIST_LENGTH"
                    "=%d (longest %d); each keeps its %d most recent items",
                    self.dataset_name, part, n, end - start, list_field, limit,
                    int(lengths[start:end].max()), limit,
                )
        suffix = self.config["LIST_SUFFIX"]
        for field in [f + suffix for f in self.inter_feat if f + suffix in self.inter_feat]:
            self.inter_feat[field] = [
                seq[-limit:] if len(seq) > limit else seq for seq in self.inter_feat[field].values
            ]
            self.field2seqlen[field] = min(self.field2seqlen[field], limit)

    # ------------------------------------------------------------ domains
    def _init_domains(self) -> None:
        field = self.config["ITEM_DOMAIN_FIELD"]
        n_items = self.item_num
        if self.item_feat is None or field not in self.item_feat:
            self.domain_field = None
            self.domain_names = [self.dataset_name.lower()]
            item_domain = np.zeros(n_items, dtype=np.int64)
        else:
            self.domain_field = field
            self.domain_names = [str(t).lower() for t in self.field2id_token[field][1:]]
            tokens = np.zeros(n_items, dtype=np.int64)
            ids = np.asarray(self.item_feat[self.iid_field])
            tokens[ids] = np.asarray(self.item_feat[field])
            missing = np.flatnonzero(tokens[1:] == 0) + 1
            if len(missing):
                examples = list(self.field2id_token[self.iid_field][missing[:5]])
                raise ValueError(
                    f"{self.dataset_name}: {len(missing)} items have no {field} in "
                    f"{self.dataset_name}.item (e.g. {examples}); every item needs a domain"
                )
            item_domain = tokens - 1
        item_domain[0] = -1
        self.item_domain = torch.from_numpy(item_domain)
        self._warn_small_domains()

    def _warn_small_domains(self) -> None:
        if not self.config["domain_mask"]:
            return
        topk = self.config["topk"] or [10]
        k = max(topk) if isinstance(topk, (list, tuple)) else int(topk)
        sizes = np.bincount(self.item_domain[1:].numpy(), minlength=self.n_domains)
        for name, size in zip(self.domain_names, sizes):
            if size <= k:
                logger.warning(
                    "%s: domain %r has %d items, not more than the largest topk (%d): its "
                    "targets are ranked among %d items, so its hit@%d is 1 for any model and "
                    "mean/<metric> (the unweighted mean over domains) is meaningless; report "
                    "per-domain metrics or merge the domain (docs/atomic_format.md)",
                    self.dataset_name, name, size, k, size, k,
                )

    @property
    def n_domains(self) -> int:
        return len(self.domain_names)

    # ------------------------------------------------------------ splits, counted
    def build(self) -> list:
        counts = None
        if self.benchmark_filename_list is None and isinstance(self.inter_feat, pd.DataFrame):
            counts = Counter(self.inter_feat[self.uid_field].values)
            if self.time_field in self.inter_feat:
                ties = int(self.inter_feat.duplicated([self.uid_field, self.time_field]).sum())
                if ties:
                    logger.warning(
                        "%s: %d interactions share their user's %s with an earlier row; "
                        "such ties keep the file order (stable sort)",
                        self.dataset_name, ties, self.time_field,
                    )
        datasets = super().build()
        for ds in datasets[1:]:
            ds.inter_feat.update(
                Interaction({EVAL_ROW_FIELD: torch.arange(len(ds.inter_feat))})
            )
        self._report_splits(datasets, counts)
        return datasets

    def _report_splits(self, datasets: list, counts: Counter | None) -> None:
        """Counts rows and users per split and, for RecBole's own split, the users a
        split leaves out (e.g. leave-one-out never evaluates users with 1-2 rows)."""
        for name, ds in zip(SPLIT_NAMES, datasets):
            users = set(ds.inter_feat[self.uid_field].numpy().tolist())
            entry = {"rows": len(ds.inter_feat), "users": len(users)}
            if counts is not None:
                left_out = [u for u in counts if u not in users]
                entry["users_missing"] = len(left_out)
                entry["missing_by_count"] = dict(sorted(Counter(counts[u] for u in left_out).items()))
            self.split_report[name] = entry
            if entry.get("users_missing"):
                by_count = ", ".join(
                    f"{n} with {c} interaction{'s' * (c > 1)}"
                    for c, n in entry["missing_by_count"].items()
                )
                log = logger.warning if name != "train" else logger.info
                log("%s %s split: %d rows, %d of %d users; %d users are not in it (%s)",
                    self.dataset_name, name, entry["rows"], entry["users"], len(counts),
                    entry["users_missing"], by_count)
            else:
                logger.info("%s %s split: %d rows, %d users",
                            self.dataset_name, name, entry["rows"], entry["users"])
