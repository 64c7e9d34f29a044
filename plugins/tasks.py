"""Built-in downstream tasks: a linear probe (logistic regression) on a model's features, as in the PRH
paper's VTAB evaluation, and a language model's bits per byte on a text corpus (the paper's OpenWebText axis)."""

from __future__ import annotations

from typing import Any

from prh_bench.plugin import BadInput, Features, SampleSet, Task, hookimpl, np


class LinearProbe(Task):
    """Test accuracy of a multinomial logistic regression on standardised features of one layer (default:
    the last), trained on a seeded stratified split of the labelled samples, or, with `fit_split` and
    `score_split`, fitted on the data set's own split and scored on another (the PRH paper's VTAB probes: train
    and val)."""

    name = "linear_probe"
    defaults = {
        "layer": -1,
        "test_fraction": 0.5,
        "seed": 0,
        "C": 1.0,
        "max_iter": 2000,
        "fit_split": "",
        "score_split": "",
    }

    def evaluate(self, feats: Features, samples: SampleSet, **params: Any) -> float:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = [s.label for s in samples.samples]
        if any(label is None for label in labels):
            raise BadInput("linear_probe: the data set has samples without labels")
        x = feats.tensors[params["layer"]].numpy()
        y = np.asarray(labels)
        if bool(params["fit_split"]) != bool(params["score_split"]):
            raise BadInput("linear_probe: give both fit_split and score_split, or neither")
        if params["fit_split"]:
            split = np.asarray([s.split for s in samples.samples])
            fit, score = split == params["fit_split"], split == params["score_split"]
            if not fit.any() or not score.any():
                raise BadInput(
                    f"linear_probe: the data set has no samples of split '{params['fit_split']}' or "
                    f"'{params['score_split']}' (its splits: {sorted(set(split.tolist()), key=str)})"
                )
            xtr, xte, ytr, yte = x[fit], x[score], y[fit], y[score]
        else:
            xtr, xte, ytr, yte = train_test_split(
                x, y, test_size=params["test_fraction"], random_state=params["seed"], stratify=y
            )
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=params["C"], max_iter=params["max_iter"]))
        return float(probe.fit(xtr, ytr).score(xte, yte))


class BitsPerByte(Task):
    """A causal LM's bits per byte on a corpus: the bits of all its texts over all their UTF-8 bytes (each
    text's bits per byte weighted by the bytes scored of it, not a mean of ratios). Cut long documents into
    passages with the data set's `passage_bytes`: each passage is scored from its own start, as in
    non-overlapping windows; a passage longer than the model's max_length counts only what was kept of it."""

    name = "bits_per_byte"
    defaults: dict[str, Any] = {}
    higher_is_better = False
    sample_score = "bits_per_byte"

    def evaluate(self, feats: Features, samples: SampleSet, **params: Any) -> float:
        if not {self.sample_score, "bytes_scored"} <= set(feats.sample_scores):
            raise BadInput(
                f"bits_per_byte: the features carry no per-sample bits per byte and bytes scored (they "
                f"have {sorted(feats.sample_scores)}): only causal language models compute them"
            )
        nbytes = feats.sample_scores["bytes_scored"].double().numpy()
        bpb = feats.sample_scores[self.sample_score].double().numpy()
        return float((bpb * nbytes).sum() / nbytes.sum())


@hookimpl
def prh_tasks() -> dict[str, Task]:
    return {"linear_probe": LinearProbe(), "bits_per_byte": BitsPerByte()}
