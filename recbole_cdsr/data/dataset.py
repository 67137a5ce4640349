"""CDSRDataset: RecBole's SequentialDataset that knows each item's domain."""

from __future__ import annotations

import logging

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction

logger = logging.getLogger(__name__)

EVAL_ROW_FIELD = "eval_row_id"  # position of a row in its valid/test split


class CDSRDataset(SequentialDataset):
    """Sequential dataset with item domains (see docs/atomic_format.md).

    Attributes:
        domain_names (list[str]): domain tokens; domain index d is ``domain_names[d]``.
        item_domain (torch.LongTensor): ``[n_items]`` domain index per internal item id,
            -1 for the padding item. Single-domain data: all 0, one domain named after
            the dataset.
    """

    def __init__(self, config):
        super().__init__(config)
        self._init_domains()

    def _benchmark_presets(self) -> None:
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

    @property
    def n_domains(self) -> int:
        return len(self.domain_names)

    def build(self) -> list:
        datasets = super().build()
        for ds in datasets[1:]:
            ds.inter_feat.update(
                Interaction({EVAL_ROW_FIELD: torch.arange(len(ds.inter_feat))})
            )
        return datasets
