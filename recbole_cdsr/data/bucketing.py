"""Length-bucketed training batches: rows of similar history length share a batch, and
each batch is cut to its longest row.

RecBole right-pads every history to ``MAX_ITEM_LIST_LENGTH`` (``item_id_list`` holds
the items left-aligned from position 0, padding 0 after them), so a random batch almost
always contains one full-width row and pays for the full width. For a model whose
training loss and gradients do not depend on the padding width (declared by
``length_invariant``; see ``is_length_invariant``), cutting the right padding leaves
every row's computation unchanged: positions are counted from the left, so the real
items keep their positions. ``tests/test_speed_exact.py`` checks the loss and every
parameter gradient at full and cut width for the models marked invariant.

Config: ``length_buckets: True`` (default; ``False`` keeps RecBole's loader).
"""

from __future__ import annotations

import logging
import math

import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.utils import ModelType

logger = logging.getLogger(__name__)

# RecBole 1.2.1 sequential models whose training loss and gradients, per row, do not
# depend on the padding width (dropout off). The "why" column is what makes them exact;
# tests/test_speed_exact.py checks each True entry on real batches. Every RecBole model
# not listed is treated as width-dependent. recbole_cdsr's own models declare a class
# attribute ``length_invariant`` instead (absent: False).
RECBOLE_LENGTH_INVARIANT = {
    # left-aligned position ids; causal attention never reaches right padding
    "SASRec": True,
    # recurrent (causal), output gathered at item_length - 1
    "GRU4Rec": True,
    # GRU + attention whose weights are multiplied by the non-padding mask
    "NARM": True,
    # mean over item_length and attention masked on padding
    "STAMP": True,
    # last item only
    "FPMC": True,
    # session graph: padding nodes are isolated; attention readout masked on padding
    "SRGNN": True,
    "GCSAN": True,
    # mean / left-aligned transformer over non-padding items, masked softmax
    "CORE": True,
    # masking is a data transform (mask_itemseq) that reads the padded width
    "BERT4Rec": False,
    # fixed-height convolutions over the whole width
    "Caser": False,
    # dilated convolutions; output taken at the last column of the padded width
    "NextItNet": False,
    # low-rank projection of the sequence axis (seq_len x k_interests)
    "LightSANs": False,
    # FFT over the padded width
    "FEARec": False,
}


def is_length_invariant(model_class: type) -> bool:
    """Whether cutting a batch's right padding leaves ``model_class``'s training exact.

    RecBole's classes are looked up in ``RECBOLE_LENGTH_INVARIANT``; any other class
    must declare ``length_invariant = True`` on itself (a subclass does not inherit its
    parent's declaration, since it may change the computation).
    """
    if model_class.__module__.startswith("recbole."):
        return RECBOLE_LENGTH_INVARIANT.get(model_class.__name__, False)
    return bool(vars(model_class).get("length_invariant", False))


class LengthBucketBatchSampler:
    """Batches of row indices sorted into runs of equal length, reshuffled every epoch.

    Each epoch: a random permutation of the rows (within-length order), a stable sort by
    length, consecutive chunks of ``batch_size`` rows, and a random order of the chunks.
    Every row appears once per epoch. With ``shuffle=False`` the order is the sort by
    length (ties by row index) and the chunks come shortest first.

    Args:
        lengths: LongTensor ``[rows]`` of history lengths.
        batch_size: rows per batch (the last chunk may be smaller).
        shuffle: whether to reshuffle each epoch.
        generator: the torch.Generator the permutations are drawn from (seeded).
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator):
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n = len(self.lengths)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            order = order[torch.argsort(self.lengths[order], stable=True)]
        else:
            order = torch.argsort(self.lengths, stable=True)
        chunks = order.split(self.batch_size)
        chunk_order = (
            torch.randperm(len(chunks), generator=self.generator).tolist()
            if self.shuffle else range(len(chunks))
        )
        for i in chunk_order:
            yield chunks[i].tolist()


class LengthBucketTrainDataLoader(TrainDataLoader):
    """RecBole's TrainDataLoader with length-bucketed batches cut to their longest row.

    Only two hooks change: the index batches come from ``LengthBucketBatchSampler``
    (torch's ``_index_sampler``, which both iteration and ``len()`` read), and
    ``collate_fn`` cuts every history field (``<field><LIST_SUFFIX>`` of the padded
    width: ``item_id_list``, ``domain_id_list``, ``timestamp_list``, ...) to the
    batch's longest ``item_length``. Negative sampling and transforms run as in RecBole.
    """

    def __init__(self, config, dataset, sampler, shuffle: bool = False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        suffix = config["LIST_SUFFIX"]
        item_list = dataset.inter_feat[config["ITEM_ID_FIELD"] + suffix]
        self.padded_width = item_list.shape[1]
        self.list_fields = [
            field for field in dataset.inter_feat.columns
            if field.endswith(suffix)
            and dataset.inter_feat[field].dim() > 1
            and dataset.inter_feat[field].shape[1] == self.padded_width
        ]
        self.bucket_sampler = LengthBucketBatchSampler(
            dataset.inter_feat[self.length_field], self.step, shuffle, self.generator
        )

    @property
    def _index_sampler(self):
        return self.bucket_sampler

    def collate_fn(self, index):
        data = super().collate_fn(index)
        width = max(int(data[self.length_field].max()), 1)
        if width < self.padded_width:
            for field in self.list_fields:
                data[field] = data[field][:, :width]
        return data


def use_length_buckets(config, model_class: type, train_loader) -> bool:
    """Whether ``data_preparation`` should replace ``train_loader`` by a bucketed one.

    Raises:
        TypeError: ``length_buckets`` is not a bool.
    """
    enabled = config["length_buckets"]
    if enabled is None:
        return False
    if not isinstance(enabled, bool):
        raise TypeError(
            f"length_buckets must be True or False, got {enabled!r}; set it in "
            "properties/overall.yaml, a --config_files yaml or --length_buckets="
        )
    if not enabled or config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return False
    reason = None
    if not is_length_invariant(model_class):
        reason = f"{model_class.__name__} does not declare length_invariant"
    elif type(train_loader) is not TrainDataLoader:
        reason = f"the train loader is a {type(train_loader).__name__}"
    elif not config["single_spec"]:
        reason = "distributed training keeps RecBole's DistributedSampler"
    elif config["transform"]:
        reason = f"transform {config['transform']!r} may change the history lengths"
    elif config["ITEM_LIST_LENGTH_FIELD"] not in train_loader._dataset.inter_feat:
        reason = f"the train split has no {config['ITEM_LIST_LENGTH_FIELD']!r} field"
    if reason:
        logger.info("length_buckets: off (%s)", reason)
        return False
    logger.info("length_buckets: on (batches of similar length, cut to their longest row)")
    return True
