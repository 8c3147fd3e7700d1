"""Distillation (`nlpsuite build --teacher`): the loss, a student pulled toward its teacher, teachers refused; and
`nlpsuite evaluate --compare`, the accuracy / speed / size table of a teacher and its students."""
from __future__ import annotations

import csv
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import quick_config

torch = pytest.importorskip("torch")


def test_loss_is_the_weighted_sum_of_soft_kl_and_hard_cross_entropy():
    from nlpsuite.pipeline.distill import distillation_loss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    t = 2.0
    p_teacher = torch.softmax(teacher / t, -1)
    kl = (p_teacher * (torch.log(p_teacher) - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    ce = torch.nn.functional.cross_entropy(student, target)
    for weight in (0.0, 0.3, 1.0):
        assert float(distillation_loss(student, teacher, target, t, weight)) == pytest.approx(
            float(weight * kl + (1 - weight) * ce), rel=1e-5)
    assert float(distillation_loss(teacher, teacher, target, t, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_descending_the_soft_loss_moves_the_student_to_the_teacher():
    from nlpsuite.pipeline.distill import distillation_loss

    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(16, 4, generator=gen) * 3
    student = torch.zeros(16, 4, requires_grad=True)
    target = torch.zeros(16, dtype=torch.long)  # labels that disagree with the teacher: weight 1 ignores them
    optimizer = torch.optim.SGD([student], lr=10.0)

    def kl() -> float:
        p = torch.softmax(teacher, -1)
        return float((p * (torch.log(p) - torch.log_softmax(student.detach(), -1))).sum(-1).mean())

    before = kl()
    for _ in range(300):
        optimizer.zero_grad()
        distillation_loss(student, teacher, target, 1.0, 1.0).backward()
        optimizer.step()
    assert kl() < 0.01 * before
    assert torch.equal(torch.softmax(student, -1).argmax(-1), teacher.argmax(-1))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_checkpoint, sentiment_csv):
    """A tiny classifier trained longer and from another seed than the students, kept with its checkpoint."""
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import Hyperparameters

    hp = Hyperparameters(epochs=4, max_steps=40, batch_size=16, learning_rate=1e-3, max_length=64, seed=7)
    repo = tmp_path_factory.mktemp("teacher-repo")
    return build(quick_config(name="teacher", data=sentiment_csv, base=tiny_checkpoint, repository=repo,
                              hyperparameters=hp, save_checkpoint=True))


def _kl_to(teacher_probs: np.ndarray, version, texts: list[str]) -> float:
    from nlpsuite.shared.model import open_model, softmax

    student = softmax(open_model(version, provider="cpu", variant="fp32").predict(texts))
    return float(np.mean(np.sum(teacher_probs * (np.log(teacher_probs) - np.log(student)), axis=1)))


def test_a_distilled_student_is_closer_to_its_teacher_than_a_plainly_trained_one(
        teacher, tiny_checkpoint, sentiment_csv, tmp_path):
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import Hyperparameters
    from nlpsuite.shared.model import open_model, softmax

    texts = [row["text"] for row in csv.DictReader(open(sentiment_csv, newline=""))]
    teacher_probs = softmax(open_model(teacher, provider="cpu", variant="fp32").predict(texts))
    plain = build(quick_config(name="plain", data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path))
    hp = Hyperparameters(epochs=2, max_steps=16, batch_size=16, learning_rate=1e-3, max_length=64,
                         distill_weight=1.0, distill_temperature=1.0)
    # The teacher given as its published model folder: the build finds its checkpoint. Also named to compare
    # with, it is tabled once.
    distilled = build(quick_config(name="distilled", data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path,
                                   hyperparameters=hp, teachers=[teacher.path.parent], compare_with=[teacher.path]))
    assert _kl_to(teacher_probs, distilled, texts) < 0.5 * _kl_to(teacher_probs, plain, texts)
    manifest = distilled.manifest
    assert manifest.extra["teachers"] == [str(teacher.path / "checkpoint")]
    assert manifest.hyperparameters["distill_weight"] == 1.0 and plain.manifest.extra["teachers"] == []
    _check_build_table(manifest, teacher, sentiment_csv)
    assert [r["model"] for r in plain.manifest.extra["pareto"]["rows"]] == ["plain (this build)"] * 2


def _check_build_table(manifest, teacher, data) -> None:
    """The build's Pareto table: the published teacher's variants and the build's own, scored on the build's dev
    split (the teacher by running it there, the build's own rows are its gate metrics) and timed together."""
    from nlpsuite.pipeline.data import load_dataset, stratified_split
    from nlpsuite.pipeline.evaluate import score_classifier

    table = manifest.extra["pareto"]
    rows = table["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("teacher v1", "fp32"), ("teacher v1", "int8"), ("distilled (this build)", "fp32"),
        ("distilled (this build)", "int8")]
    for own in rows[2:]:
        gate = manifest.variants[own["variant"]].metrics
        assert (own["accuracy"], own["macro_f1"]) == (gate["accuracy"], gate["macro_f1"])
        assert own["layers"] == 2 and own["texts_per_s"] > 0 and own["single_text_ms"] > 0
    _, dev = stratified_split(load_dataset(data, "text", "label"), 0.1, manifest.hyperparameters["seed"])
    assert table["data"] == dev.source
    for row in rows[:2]:
        summary, _ = score_classifier(teacher, dev, row["variant"], provider="cpu")
        assert row["accuracy"] == summary["accuracy"] and row["size_mb"] > 0
    assert any(r["pareto"] for r in rows) and table["isa"]


def test_a_teacher_of_other_labels_is_refused_before_training(teacher, tiny_checkpoint, sentiment_csv, tmp_path):
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.distill import TeacherError

    rows = list(csv.DictReader(open(sentiment_csv, newline="")))
    other = tmp_path / "other.csv"
    with open(other, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": "up" if r["label"] == "positive" else "other"} for r in rows)
    with pytest.raises(TeacherError, match=r"predicts the labels \['negative', 'neutral', 'positive'\], the data "
                                           r"has \['other', 'up'\]"):
        build(quick_config(data=other, base=tiny_checkpoint, repository=tmp_path / "r", teachers=[teacher.path]))
    assert not (tmp_path / "r").exists()


def test_a_teacher_that_is_not_a_classifier_is_refused(tiny_checkpoint, sentiment_csv, tmp_path):
    from nlpsuite.pipeline.build import build

    with pytest.raises(ValueError, match="is not a classifier"):
        build(quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path, teachers=[tiny_checkpoint]))


def test_a_published_teacher_without_checkpoint_names_the_fix(built_classifier, tiny_checkpoint, sentiment_csv,
                                                             tmp_path):
    from nlpsuite.pipeline.build import build

    with pytest.raises(ValueError, match="without its PyTorch checkpoint: rebuild it with --save-checkpoint"):
        build(quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path,
                           teachers=[built_classifier.path]))


def test_an_ensemble_teaches_with_its_mean_logits(teacher, tiny_checkpoint, sentiment_csv):
    from nlpsuite.pipeline.distill import ensemble_logits, teacher_logits

    texts = [row["text"] for row in csv.DictReader(open(sentiment_csv, newline=""))][:8]
    labels = ["positive", "negative", "neutral"]  # another column order than the teacher's own
    one = teacher_logits(teacher.path / "checkpoint", texts, labels, 64)
    assert one.shape == (8, 3)
    both = ensemble_logits([teacher.path / "checkpoint", teacher.path / "checkpoint"], texts, labels, 64)
    np.testing.assert_allclose(both, one, rtol=1e-6)
    ordered = teacher_logits(teacher.path / "checkpoint", texts, sorted(labels), 64)
    np.testing.assert_allclose(one[:, [1, 2, 0]], ordered, rtol=1e-6)


def test_an_embedder_build_with_a_classifier_teacher_is_refused(teacher, tiny_checkpoint, sentiment_csv, tmp_path):
    from nlpsuite.pipeline.build import build

    with pytest.raises(ValueError, match="is a classifier: an embed build needs an embedder as its teacher"):
        build(quick_config(task="embed", data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path / "r",
                           teachers=[teacher.path]))
    assert not (tmp_path / "r").exists()


def test_an_embedder_teacher_of_another_width_is_refused(tiny_checkpoint, sentiment_csv, tmp_path):
    from transformers import BertConfig, BertModel

    from nlpsuite.pipeline.build import build

    wide = tmp_path / "wide"
    BertModel(BertConfig(vocab_size=30522, hidden_size=96, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=128)).save_pretrained(wide)
    for tokenizer_file in tiny_checkpoint.glob("*token*"):
        shutil.copy(tokenizer_file, wide)
    with pytest.raises(ValueError, match="embeds in 96 dimensions, the student in 64"):
        build(quick_config(task="embed", data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path / "r",
                           teachers=[wide]))


def test_the_embedding_loss_is_zero_on_the_teacher_and_weighs_the_contrastive_rest():
    from nlpsuite.pipeline.distill import embedding_distillation_loss

    gen = torch.Generator().manual_seed(1)
    teacher = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    student = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    contrastive = torch.tensor(2.5)
    assert float(embedding_distillation_loss(teacher, teacher, contrastive, 0.05, 1.0)) == pytest.approx(0, abs=1e-6)
    gap = float((1 - (student * teacher).sum(-1)).mean()) / 0.05
    assert float(embedding_distillation_loss(student, teacher, contrastive, 0.05, 0.25)) == pytest.approx(
        0.25 * gap + 0.75 * 2.5, rel=1e-6)


def test_a_distilled_embedder_is_closer_to_its_teacher_than_a_plainly_trained_one(tiny_checkpoint, sentiment_csv,
                                                                                 tmp_path):
    """A 1-layer student of a 2-layer embedder teacher: distillation pulls its vectors toward the teacher's."""
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import Hyperparameters
    from nlpsuite.shared.model import open_model

    texts = [row["text"] for row in csv.DictReader(open(sentiment_csv, newline=""))][::4]
    teacher_hp = Hyperparameters(epochs=2, max_steps=24, batch_size=16, learning_rate=1e-3, max_length=64, seed=7)
    teacher = build(quick_config(task="embed", name="teacher", data=sentiment_csv, base=tiny_checkpoint,
                                 repository=tmp_path / "t", hyperparameters=teacher_hp, save_checkpoint=True))
    hp = Hyperparameters(epochs=2, max_steps=24, batch_size=16, learning_rate=1e-3, max_length=64, keep_layers=1,
                         distill_weight=0.9)
    plain = build(quick_config(task="embed", name="plain", data=sentiment_csv, base=tiny_checkpoint,
                               repository=tmp_path, hyperparameters=hp))
    distilled = build(quick_config(task="embed", name="distilled", data=sentiment_csv, base=tiny_checkpoint,
                                   repository=tmp_path, hyperparameters=hp, teachers=[teacher.path.parent]))

    def vectors(version):
        return open_model(version, provider="cpu", variant="fp32").predict(texts)

    target = vectors(teacher)
    gap = lambda version: float(np.mean(1 - np.sum(vectors(version) * target, axis=1)))  # noqa: E731
    assert gap(distilled) < 0.5 * gap(plain)
    assert distilled.manifest.extra["teachers"] == [str(teacher.path / "checkpoint")]
    assert distilled.manifest.layers_kept == 1


@pytest.mark.parametrize("weight,temperature,message", [
    (1.5, 2.0, "--distill-weight 1.5: the teacher's share of the loss must be between 0 and 1"),
    (0.5, 0.0, "--distill-temperature 0.0: must be above 0"),
])
def test_distillation_settings_out_of_range_are_refused(teacher, tiny_checkpoint, sentiment_csv, tmp_path, weight,
                                                        temperature, message):
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import Hyperparameters

    hp = Hyperparameters(epochs=1, max_steps=2, batch_size=16, max_length=64, distill_weight=weight,
                         distill_temperature=temperature)
    with pytest.raises(ValueError, match=message):
        build(quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path, hyperparameters=hp,
                           teachers=[teacher.path]))


def test_a_student_with_more_layers_than_its_base_is_refused(sentiment_csv, tiny_checkpoint, tmp_path):
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.train import CheckpointError, Hyperparameters

    hp = Hyperparameters(epochs=1, max_steps=2, batch_size=16, max_length=64, keep_layers=3)
    with pytest.raises(CheckpointError, match="--keep-layers 3: the model has 2 layers"):
        build(quick_config(data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path, hyperparameters=hp))


def test_kept_layers_first_or_spread_to_the_top():
    from nlpsuite.pipeline.train import CheckpointError, kept_layers

    assert kept_layers(6, 3) == [0, 1, 2]
    assert kept_layers(6, 3, "spread") == [1, 3, 5]
    assert kept_layers(12, 4, "spread") == [2, 5, 8, 11]
    assert kept_layers(6, 6, "spread") == list(range(6)) and kept_layers(6, 1, "spread") == [5]
    with pytest.raises(CheckpointError, match="--layer-choice 'middle'"):
        kept_layers(6, 3, "middle")
    with pytest.raises(CheckpointError, match="--keep-layers 7: the model has 6 layers"):
        kept_layers(6, 7, "spread")


def test_a_spread_student_keeps_the_top_layer_s_weights(tiny_checkpoint):
    import torch

    from nlpsuite.pipeline.train import _encoder_layers, load_for_task

    full, _ = load_for_task(tiny_checkpoint, "classify", ["a", "b"], None)
    top, _ = load_for_task(tiny_checkpoint, "classify", ["a", "b"], 1, "spread")
    bottom, _ = load_for_task(tiny_checkpoint, "classify", ["a", "b"], 1, "first")

    def layers(model):
        base, name = _encoder_layers(model)
        return base.get_submodule(name)

    assert len(layers(top)) == len(layers(bottom)) == 1 and top.config.num_hidden_layers == 1
    first_param = lambda layer: next(layer.parameters())  # noqa: E731
    assert torch.equal(first_param(layers(top)[0]), first_param(layers(full)[-1]))
    assert torch.equal(first_param(layers(bottom)[0]), first_param(layers(full)[0]))
    assert not torch.equal(first_param(layers(full)[0]), first_param(layers(full)[-1]))


def test_the_cli_says_what_is_wrong_with_a_teacher(tiny_checkpoint, sentiment_csv, tmp_path, capsys):
    from nlpsuite.cli import main

    code = main(["build", "--task", "classify", "--name", "x", "--data", str(sentiment_csv), "--base",
                 str(tiny_checkpoint), "--repository", str(tmp_path), "--teacher", str(tmp_path / "nothing"),
                 "--max-steps", "1", "--no-progress"])
    assert code == 2
    assert "neither a Hugging Face model directory nor a published model version" in capsys.readouterr().err


def test_compare_tables_accuracy_speed_and_size_and_marks_the_front(teacher, built_classifier, sentiment_csv,
                                                                   capsys):
    import json as _json

    from nlpsuite.cli import main
    from nlpsuite.pipeline.pareto import ParetoRow, mark_front
    from nlpsuite.shared.host import isa

    assert main(["evaluate", "--model", str(teacher.path), "--compare", str(built_classifier.path), "--data",
                 str(sentiment_csv)]) == 0
    out = capsys.readouterr().out
    table = _json.loads(out.strip().splitlines()[-1])
    rows = table["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("teacher v1", "fp32"), ("teacher v1", "int8"), ("tiny v1", "fp32"), ("tiny v1", "int8")]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["texts_per_s"] > 0 and r["single_text_ms"] > 0 and r["layers"] == 2
    assert rows[1]["size_mb"] < rows[0]["size_mb"]  # int8 weights
    assert any(r["pareto"] for r in rows) and isa() in out

    def row(acc, speed):
        return ParetoRow(model="m", path="p", variant="v", layers=1, accuracy=acc, macro_f1=acc, texts_per_s=speed,
                         single_text_ms=1, size_mb=1)

    table_rows = [row(0.9, 100), row(0.8, 200), row(0.8, 150), row(0.9, 100)]
    mark_front(table_rows)
    assert [r.pareto for r in table_rows] == [True, True, False, True]  # a tie dominates neither


def test_the_example_embedder_is_a_three_layer_student_of_a_six_layer_teacher(tmp_path):
    from nlpsuite.pipeline.defaults import default_configs, teacher_configs

    configs = default_configs(tmp_path)
    teacher = teacher_configs(configs)["embedder"]
    assert configs["embedder"].hyperparameters.keep_layers == 3
    assert teacher.hyperparameters.keep_layers is None and teacher.save_checkpoint and teacher.variants == ("fp32",)
    assert (teacher.task, teacher.data) == (configs["embedder"].task, configs["embedder"].data)
    assert set(teacher_configs(configs)) == {"embedder"}


def test_teachers_n_trains_the_ensemble_from_other_seeds_and_distils_their_mean(tiny_checkpoint, sentiment_csv,
                                                                                 tmp_path):
    """`--teachers 2`: two full-depth models of the recipe from seeds 14 and 15 (the build's is 13); their mean
    logits over the training texts are the soft targets; the manifest says which teachers and how they scored."""
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.data import load_dataset, stratified_split
    from nlpsuite.pipeline.distill import train_ensemble
    from nlpsuite.pipeline.train import Hyperparameters, fine_tune, predict_torch

    hp = Hyperparameters(epochs=1, max_steps=6, batch_size=16, learning_rate=1e-3, max_length=64, keep_layers=1)
    train, dev = stratified_split(load_dataset(sentiment_csv), 0.2, hp.seed)
    labels = sorted(set(train.labels))
    targets, report = train_ensemble(tiny_checkpoint, "classify", train, dev, labels, hp, 2, progress=False)
    assert [r["seed"] for r in report] == [14, 15]
    one = [fine_tune(tiny_checkpoint, "classify", train, dev, labels, replace(hp, seed=s, keep_layers=None),
                     progress=False) for s in (14, 15)]
    expected = np.mean([predict_torch(r.model, r.tokenizer, train.texts, "classify", 64) for r in one], axis=0)
    np.testing.assert_allclose(targets, expected, rtol=1e-4, atol=1e-5)
    assert one[0].model.config.num_hidden_layers == 2  # the teachers keep every layer; the student keeps one

    version = build(quick_config(name="student", data=sentiment_csv, base=tiny_checkpoint, repository=tmp_path,
                                 hyperparameters=hp, ensemble=2))
    assert [t["seed"] for t in version.manifest.extra["ensemble"]] == [14, 15]
    assert version.manifest.layers_kept == 1


def test_embedder_ensemble_targets_are_unit_vectors(tiny_checkpoint, sentiment_csv):
    from nlpsuite.pipeline.data import load_dataset, stratified_split
    from nlpsuite.pipeline.distill import train_ensemble
    from nlpsuite.pipeline.train import Hyperparameters

    hp = Hyperparameters(epochs=1, max_steps=4, batch_size=16, learning_rate=1e-3, max_length=64)
    train, dev = stratified_split(load_dataset(sentiment_csv), 0.2, hp.seed)
    targets, _ = train_ensemble(tiny_checkpoint, "embed", train, dev, sorted(set(train.labels)), hp, 2,
                                progress=False)
    assert targets.shape == (len(train), 64)
    np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 1.0, rtol=1e-5)


def test_public_data_defaults_publish_a_fast_student_of_each_classifier(teacher, built_classifier, sentiment_csv,
                                                                        tmp_path):
    """build-defaults --data-dir: the served classifiers keep their checkpoint, and each gets a 3-layer "-fast"
    student started from its own spread layers and taught by it (here built for real at the tiny model's scale)."""
    from nlpsuite.pipeline.build import build
    from nlpsuite.pipeline.data import DataError
    from nlpsuite.pipeline.defaults import default_configs, fast_configs, fast_student
    from nlpsuite.pipeline.train import Hyperparameters

    data_dir = tmp_path / "data"
    for folder in ("financial_phrasebank", "banking77"):
        (data_dir / folder).mkdir(parents=True)
        for split in ("train", "dev"):
            shutil.copy(sentiment_csv, data_dir / folder / f"{split}.csv")
    configs = default_configs(tmp_path / "repo", data_dir)
    fast = fast_configs(configs, data_dir)
    assert sorted(fast) == ["intent", "sentiment"] and fast_configs(configs, None) == {}
    for name, config in fast.items():
        assert configs[name].save_checkpoint and not config.save_checkpoint and config.name == f"{name}-fast"
        assert (config.hyperparameters.keep_layers, config.hyperparameters.layer_choice) == (3, "spread")
        assert config.data == configs[name].data and config.hyperparameters.epochs == configs[name].hyperparameters.epochs

    with pytest.raises(DataError, match="build it with --save-checkpoint"):
        fast_student(fast["sentiment"], built_classifier)
    tiny = fast["sentiment"].model_copy(update={
        "data": sentiment_csv, "dev": None, "text_col": "text", "label_col": "label", "progress": False,
        "repository": tmp_path / "repo", "hyperparameters": Hyperparameters(
            epochs=2, max_steps=16, batch_size=16, learning_rate=1e-3, max_length=64, keep_layers=1,
            layer_choice="spread")})
    student = build(fast_student(tiny, teacher))
    assert student.manifest.base_checkpoint == str(teacher.path / "checkpoint")
    assert student.manifest.layers_kept == 1 and student.manifest.extra["teachers"] == []
    # Not taught, but tabled beside the model it started from.
    assert [r["model"] for r in student.manifest.extra["pareto"]["rows"]] == [
        "teacher v1", "teacher v1", "sentiment-fast (this build)", "sentiment-fast (this build)"]


def test_compare_with_is_checked_before_training(built_classifier, tiny_checkpoint, sentiment_csv, tmp_path,
                                                 capsys):
    from nlpsuite.cli import main

    args = ["build", "--task", "classify", "--name", "x", "--data", str(sentiment_csv), "--base",
            str(tiny_checkpoint), "--repository", str(tmp_path / "repo"), "--max-steps", "1", "--no-progress"]
    assert main([*args, "--compare-with", str(tmp_path / "nothing")]) == 2
    assert "--compare-with" in capsys.readouterr().err and not (tmp_path / "repo").exists()
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(f"text {i},{'up' if i % 2 else 'down'}\n" for i in range(20)))
    args[6] = str(other)
    assert main([*args, "--compare-with", str(built_classifier.path)]) == 2
    assert "does not predict the data's labels down, up" in capsys.readouterr().err
