"""End-to-end behaviour of the pipeline on a tiny two-domain slice of ml100k_genre:
per-domain masking, fixed candidates, result JSON, checkpoint reload, baselines."""

import json

import numpy as np
import pytest
import torch

from recbole_cdsr.config import Config
from recbole_cdsr.quick_start import load_data_and_model, run_recbole_cdsr
from recbole_cdsr.trainer import CDSRTrainer, sample_candidates
from recbole_cdsr.utils import create_dataset, data_preparation, get_model

from conftest import N_USERS, tiny_config

def build(tiny_path, model="SASRec", **overrides):
    config = Config(model, "tiny", config_dict=tiny_config(tiny_path, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train._dataset)
    return config, dataset, train, valid, test, model


def captured_scores(trainer, loader):
    """Runs the trainer's full-sort batches and returns (scores, positives)."""
    trainer.eval_collector.bind(loader._dataset)
    trainer._eval_dataset = loader._dataset
    trainer.tot_item_num = loader._dataset.item_num
    trainer.model.eval()
    out, pos = [], []
    with torch.no_grad():
        for batch in loader:
            _, scores, _, positive_i = trainer._full_sort_batch_eval(batch)
            out.append(scores)
            pos.append(positive_i)
    return torch.cat(out), torch.cat(pos)


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec"])
def test_one_epoch_baseline_writes_per_domain_results(tiny_path, tmp_path, model):
    result_file = tmp_path / "r.json"
    result = run_recbole_cdsr(
        model, "tiny", config_dict=tiny_config(tiny_path, result_file=str(result_file))
    )
    written = json.loads(result_file.read_text())
    assert set(written) >= {"model", "dataset", "config", "valid", "test", "time"}
    assert written["model"] == model and written["dataset"] == "tiny"
    test = written["test"]
    assert test["all"]["n"] == N_USERS
    assert {"drama", "other"} <= set(test)
    assert test["drama"]["n"] + test["other"]["n"] == N_USERS
    for part in ("all", "drama", "other"):
        for key in ("hit@10", "ndcg@10", "mrr@10"):
            assert 0.0 <= test[part][key] <= 1.0
    # group rows: every tiny user is in one of the user_group tokens
    groups = [g for g in test if g in {"both", "drama_only", "other_only"}]
    assert sum(test[g]["n"] for g in groups) == N_USERS
    assert written["time"]["epochs"] == 1 and written["time"]["train_s"] > 0
    assert result["test"] == test


def test_domain_mask_never_ranks_other_domain_items(tiny_path):
    config, dataset, _, _, test, model = build(tiny_path)
    trainer = CDSRTrainer(config, model)
    scores, positives = captured_scores(trainer, test)
    item_domain = dataset.item_domain
    other = item_domain.unsqueeze(0) != item_domain[positives].unsqueeze(1)
    assert torch.isinf(scores[other]).all() and (scores[other] < 0).all()
    assert torch.isfinite(scores[~other & (torch.arange(scores.shape[1]) > 0)]).all()
    top = scores.topk(20, dim=1).indices
    assert (item_domain[top] == item_domain[positives].unsqueeze(1)).all()


def test_without_domain_mask_other_domains_are_ranked(tiny_path):
    config, _, _, _, test, model = build(tiny_path, domain_mask=False)
    scores, _ = captured_scores(CDSRTrainer(config, model), test)
    assert torch.isfinite(scores[:, 1:]).all()


def test_candidates_are_fixed_seeded_and_from_the_target_domain(tiny_path):
    _, dataset, _, _, test, _ = build(tiny_path)
    test_ds = test._dataset
    first = sample_candidates(test_ds, num=50, pool="domain", exclude="history", seed=7)
    again = sample_candidates(test_ds, num=50, pool="domain", exclude="history", seed=7)
    other_seed = sample_candidates(test_ds, num=50, pool="domain", exclude="history", seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other_seed)
    positives = test_ds.inter_feat["item_id"]
    item_domain = dataset.item_domain
    assert (item_domain[first] == item_domain[positives].unsqueeze(1)).all()
    assert not (first == positives.unsqueeze(1)).any()
    history = test_ds.inter_feat["item_id_list"]
    assert not (first.unsqueeze(2) == history.unsqueeze(1)).any()
    assert all(len(set(row.tolist())) == 50 for row in first)  # without replacement


def test_candidate_protocol_masks_everything_else(tiny_path):
    cand = {"num": 30, "pool": "all", "seed": 3}
    config, _, _, _, test, model = build(tiny_path, eval_candidates=cand)
    trainer = CDSRTrainer(config, model)
    scores, positives = captured_scores(trainer, test)
    finite = torch.isfinite(scores)
    assert (finite.sum(1) == 31).all()  # 30 negatives + the positive
    assert finite[torch.arange(len(positives)), positives].all()
    table = trainer._candidate_table(test._dataset)
    assert torch.equal(table, sample_candidates(test._dataset, **trainer.candidate_args))


def test_bad_candidate_args_are_rejected(tiny_path):
    with pytest.raises(ValueError, match="eval_candidates.pool"):
        CDSRTrainer._check_candidate_args({"num": 5, "pool": "target"})
    with pytest.raises(ValueError, match="eval_candidates.num"):
        CDSRTrainer._check_candidate_args({"num": 0})
    _, _, _, _, test, _ = build(tiny_path)
    with pytest.raises(ValueError, match="eligible items"):
        sample_candidates(test._dataset, num=10_000)


def test_checkpoint_reload_gives_identical_metrics(tiny_path):
    result = run_recbole_cdsr("SASRec", "tiny", config_dict=tiny_config(tiny_path))
    config, model, _, _, _, test = load_data_and_model(result["saved_model_file"])
    trainer = CDSRTrainer(config, model)
    reloaded = trainer.evaluate(test, load_best_model=False)
    from recbole_cdsr.quick_start import results_to_nested

    assert results_to_nested(reloaded) == result["test"]


def test_per_domain_metrics_match_a_direct_computation(tiny_path):
    config, dataset, _, _, test, model = build(tiny_path)
    trainer = CDSRTrainer(config, model)
    scores, positives = captured_scores(trainer, test)
    result = trainer.evaluate(test, load_best_model=False)
    pos_scores = scores[torch.arange(len(positives)), positives]
    ranks = (scores > pos_scores.unsqueeze(1)).sum(1)
    domain = dataset.item_domain[positives]
    for d, name in enumerate(dataset.domain_names):
        r = ranks[domain == d].double()
        assert result[f"{name}/n"] == int((domain == d).sum())
        hit = (r < 10).double().mean().item()
        ndcg = torch.where(r < 10, 1 / torch.log2(r + 2), torch.zeros_like(r)).mean().item()
        assert result[f"{name}/hit@10"] == pytest.approx(hit, abs=1e-4)
        assert result[f"{name}/ndcg@10"] == pytest.approx(ndcg, abs=1e-4)
    means = np.mean([result[f"{n}/ndcg@10"] for n in dataset.domain_names])
    assert result["mean/ndcg@10"] == pytest.approx(means, abs=1e-4)


def test_per_domain_selection_applies_to_baselines_too(tiny_path):
    """Under ``per_domain_selection`` (LLMCDSR's protocol) a RecBole baseline reports each
    domain from that domain's own best valid epoch, like LLMCDSR: the same experiment file
    selects every model alike."""
    from recbole.utils import init_seed

    init_seed(2020, reproducibility=True)
    config, _, train, valid, test, model = build(
        tiny_path, epochs=4, per_domain_selection=True, domain_select_metric="hit@10",
        stopping_step=10, learning_rate=0.01)
    trainer = CDSRTrainer(config, model)
    names = list(valid._dataset.domain_names)
    seen, states = {name: [] for name in names}, []
    original = trainer._valid_epoch

    def recording(data, show_progress=False):
        score, result = original(data, show_progress)
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        for name in names:
            seen[name].append(result[f"{name}/hit@10"])
        return score, result

    trainer._valid_epoch = recording
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)

    def test_at(epoch):
        trainer.model.load_state_dict(states[epoch])
        return trainer.evaluate(test, load_best_model=False)

    for name in names:
        best = int(np.argmax(seen[name]))  # the first epoch with the domain's best score
        assert trainer._domain_best[name][0] == seen[name][best]
        kept = trainer._domain_best[name][1]
        assert all(torch.equal(kept[k], v) for k, v in states[best].items())
        direct = test_at(best)
        assert result[f"{name}/hit@10"] == direct[f"{name}/hit@10"]
        assert result[f"{name}/ndcg@10"] == direct[f"{name}/ndcg@10"]
    mean = np.mean([result[f"{name}/ndcg@10"] for name in names])
    assert result["mean/ndcg@10"] == round(float(mean), 4)

    # whatever the trajectory: a domain whose kept state differs from the best checkpoint
    # is read from its own state, the other domain is untouched
    other_state = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in states[0].items()}
    trainer._domain_best[names[0]] = (1.0, other_state)
    again = trainer.evaluate(test, load_best_model=True)
    trainer.model.load_state_dict(other_state)
    direct = trainer.evaluate(test, load_best_model=False)
    for key in ("hit@10", "ndcg@10", "mrr@10"):
        assert again[f"{names[0]}/{key}"] == direct[f"{names[0]}/{key}"]
        assert again[f"{names[1]}/{key}"] == result[f"{names[1]}/{key}"]
    assert any(again[f"{names[0]}/{k}"] != result[f"{names[0]}/{k}"]
               for k in ("hit@10", "ndcg@10", "mrr@10"))
