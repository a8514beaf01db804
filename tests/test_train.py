"""Training, estimator bundles and fitting: a tiny end-to-end run on a cut-down problem."""

from __future__ import annotations

import functools
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from baseline import train_point_regressor

from sbi_twins.data import DatasetSpec, open_dataset, simulate_dataset
from sbi_twins.engine import load_model
from sbi_twins.inference import TrainingConfig, load_estimator, train_estimator
from sbi_twins.inference.bundle import dataset_prior
from sbi_twins.inference.loop import WeightAverage, fit_streaming
from sbi_twins.inference.networks import build_summary
from sbi_twins.inference.npe import train_flow, training_identity
from sbi_twins.inference.posterior import hdi
from sbi_twins.inference.rows import RowBlocks, StreamingData, SummarisedData
from sbi_twins.recording import simulate_recordings

PRIOR = """
model = "kernik2019"
description = "three conductances, for tests"
[[parameter]]
name = "ina.g_Na"
distribution = "uniform"
low = 0.6
high = 1.4
[[parameter]]
name = "ikr.g_Kr"
distribution = "uniform"
low = 0.6
high = 1.4
[[parameter]]
name = "ik1.g_K1"
distribution = "uniform"
low = 0.6
high = 1.4
[[recording]]
name = "noise_pA_per_pF"
distribution = "fixed"
value = 0.3
"""

PROTOCOL = """
name = "na_kr_steps"
holding_mV = -80.0
[[segment]]
type = "step"
duration_ms = 50
v_mV = -80
[[segment]]
type = "step"
duration_ms = 20
v_mV = -10
[[segment]]
type = "step"
duration_ms = 200
v_mV = 20
[[segment]]
type = "step"
duration_ms = 200
v_mV = -40
[[segment]]
type = "step"
duration_ms = 50
v_mV = -120
"""

# Measured on this problem: with early stopping after 5 flat epochs training stopped at epoch 29
# with R^2(g_Na) = 0.64; with 15 it ran to epoch 97 and reached 0.987.
SMALL = TrainingConfig(
    hidden_features=32,
    num_transforms=3,
    num_bins=8,
    channels=(8, 16),
    kernel_size=7,
    pooled=16,
    dense=(64,),
    embedding_hidden=64,
    embedding_dim=16,
    batch_size=128,
    learning_rate=2e-3,
    max_epochs=100,
    stop_after_epochs=15,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("problem")
    (root / "prior.toml").write_text(textwrap.dedent(PRIOR))
    (root / "protocol.toml").write_text(textwrap.dedent(PROTOCOL))
    return root


def _spec(files, seed):
    return DatasetSpec(
        prior=str(files / "prior.toml"),
        protocol=str(files / "protocol.toml"),
        seed=seed,
        chunk_size=500,
        viability=None,
    )


@pytest.fixture(scope="module")
def datasets(files):
    train = simulate_dataset(files / "train", 3000, _spec(files, 1), workers=1, progress=False)
    test = simulate_dataset(files / "test", 200, _spec(files, 2), workers=1, progress=False)
    return train, test


@pytest.fixture(scope="module")
def estimator(datasets, files):
    return train_estimator(datasets[0].directory, files / "est", SMALL, progress=False)


def test_g_na_is_recovered_and_calibrated(estimator, datasets):
    """The 90% central interval of g_Na holds the true value on close to 90% of held-out cells,
    and the posterior mean explains most of its variance.
    """
    test = datasets[1]
    truth = test.parameters["ina.g_Na"].to_numpy()
    inside, means = [], []
    for k, posterior in enumerate(estimator.posteriors(test.observations[:])):
        draws = posterior.sample(400, seed=k)["ina.g_Na"].to_numpy()
        low, high = np.quantile(draws, [0.05, 0.95])
        inside.append(low <= truth[k] <= high)
        means.append(draws.mean())
    coverage = np.mean(inside)
    r2 = 1 - np.mean((np.array(means) - truth) ** 2) / truth.var()
    print(f"g_Na: 90% interval coverage {coverage:.2f}, R2 of the posterior mean {r2:.3f}")
    assert 0.8 <= coverage <= 0.99
    assert r2 > 0.9


def test_summary_and_inference_data(estimator, datasets):
    posterior = estimator.posteriors(datasets[1].observations[0])[0]
    summary = posterior.summary(2000)
    assert list(summary.index) == ["ina.g_Na", "ikr.g_Kr", "ik1.g_K1"]
    assert list(summary.columns) == ["mean", "sd", "hdi_low", "hdi_high", "contraction"]
    assert (summary["hdi_low"] < summary["mean"]).all()
    assert (summary["mean"] < summary["hdi_high"]).all()
    assert summary.loc["ina.g_Na", "contraction"] > 0.5
    idata = posterior.to_inference_data(500, seed=3)
    assert idata.posterior["ina.g_Na"].shape == (1, 500)
    assert set(idata.groups()) == {"posterior", "prior", "observed_data"}
    prior_draws = idata.prior["ina.g_Na"].to_numpy()[0]
    assert prior_draws.shape == (500,) and prior_draws.std() > idata.posterior["ina.g_Na"].std()
    observed = idata.observed_data["current"]
    np.testing.assert_array_equal(observed.to_numpy(), posterior.observation)
    np.testing.assert_array_equal(observed["time_ms"], estimator.scheme.times_ms)
    assert idata.posterior.attrs["protocol"] == "na_kr_steps"
    assert idata.posterior.attrs["model_sha256"] == estimator.cell_model().file_hash
    # one seed convention: equal seeds give equal draws everywhere
    same = posterior.to_inference_data(500, seed=3)
    np.testing.assert_array_equal(same.posterior["ina.g_Na"], idata.posterior["ina.g_Na"])
    np.testing.assert_array_equal(
        posterior.sample(500, seed=3)["ina.g_Na"], idata.posterior["ina.g_Na"].to_numpy()[0]
    )


def test_hdi_matches_arviz():
    import arviz as az

    draws = np.random.default_rng(0).gamma(2.0, size=(1001, 3, 2))
    low, high = hdi(draws, 0.94)
    for b in range(3):
        for d in range(2):
            np.testing.assert_array_equal([low[b, d], high[b, d]], az.hdi(draws[:, b, d], 0.94))


def test_batched_summaries_match_single_fits(estimator, datasets):
    test = datasets[1]
    cells = estimator.prior.with_fixed(test.parameters.iloc[:4])
    traces = simulate_recordings(
        load_model("kernik2019"), estimator.protocol, cells, test.seeds[:4], 0.1
    )
    many = estimator.summaries(traces, n=4000, seed=1)
    assert many.index.names == ["cell", "parameter"]
    assert many.shape == (4 * 3, 5)
    for k, trace in enumerate(traces):
        single = estimator.fit(trace).summary(4000, seed=2)
        standard_error = single["sd"] / np.sqrt(4000)
        np.testing.assert_array_less(
            np.abs(many.loc[k, "mean"] - single["mean"]), 5 * np.sqrt(2) * standard_error
        )
        # the flow's tails are heavy: the sd of 4000 draws varies by ~10% between seeds
        np.testing.assert_allclose(many.loc[k, "sd"], single["sd"], rtol=0.3)


def test_samples_stay_inside_the_prior_and_log_prob_is_consistent(estimator, datasets):
    posterior = estimator.posteriors(datasets[1].observations[3])[0]
    draws = posterior.sample(5000, seed=0)
    prior = estimator.prior
    assert np.isfinite(prior.log_prob(draws)).all()
    lp = posterior.log_prob(draws.iloc[:50])
    assert np.isfinite(lp).all()
    outside = draws.iloc[:1].copy()
    outside["ina.g_Na"] = prior.baselines[0] * 1.5
    assert posterior.log_prob(outside)[0] == -np.inf


def test_bundle_round_trip_gives_identical_samples(estimator, datasets):
    again = load_estimator(estimator.path)
    x = datasets[1].observations[5]
    a = estimator.posteriors(x)[0].sample(300, seed=7)
    b = again.posteriors(x)[0].sample(300, seed=7)
    pd.testing.assert_frame_equal(a, b)


def test_fit_takes_full_rate_traces_and_checks_them(estimator):
    protocol = estimator.protocol
    model_trace = np.zeros(protocol.times(0.1).size)  # flat: only the grid is checked here
    fit = functools.partial(estimator.fit, check_plausibility=False)
    assert fit(model_trace).observation.shape == (len(estimator.scheme),)
    with pytest.raises(ValueError, match="expects 5201"):
        fit(model_trace[:-10])
    bad = model_trace.copy()
    bad[100] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit(bad)
    coarse = np.zeros(protocol.times(0.2).size)
    with pytest.warns(UserWarning, match="resampling the trace from 0.2 ms"):
        fit(coarse, sample_interval_ms=0.2)


def test_dataset_made_otherwise_is_refused(estimator, datasets, files):
    estimator.check_dataset(datasets[1])  # made like the training set: accepted
    (files / "other.toml").write_text(textwrap.dedent(PROTOCOL).replace("v_mV = 20", "v_mV = 30"))
    spec = DatasetSpec(
        prior=str(files / "prior.toml"),
        protocol=str(files / "other.toml"),
        seed=3,
        chunk_size=5,
        viability=None,
    )
    other = simulate_dataset(files / "other", 5, spec, workers=1, progress=False)
    with pytest.raises(ValueError, match="not made like this estimator's training set"):
        estimator.check_dataset(other)


def test_cell_model_of_a_changed_model_file_is_refused(estimator):
    assert estimator.cell_model().name == "kernik2019"
    again = load_estimator(estimator.path)
    again.manifest["model"]["file_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="is not the one this estimator was trained on"):
        again.cell_model()


def test_a_model_file_that_is_not_bundled_is_given_explicitly(estimator, tmp_path):
    """An estimator trained on a user's own .mmt cannot find it by name: the error says how to
    pass it, and the file passed is checked against the recorded hash.
    """
    again = load_estimator(estimator.path)
    again.manifest["model"]["name"] = "my_cell"
    with pytest.raises(ValueError, match=r"not bundled; pass load_estimator\(.*model="):
        again.cell_model()
    copy = tmp_path / "my_cell.mmt"
    copy.write_bytes(load_model("kernik2019").path.read_bytes())
    given = load_estimator(estimator.path, model=copy)
    assert given.cell_model().file_hash == estimator.cell_model().file_hash
    copy.write_bytes(copy.read_bytes() + b"\n# edited\n")
    other = load_estimator(estimator.path, model=copy)
    with pytest.raises(ValueError, match="is not the one this estimator was trained on"):
        other.cell_model()


class _Payload:
    """Unpickling this would run code (here: only a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_bundle_whose_pickle_would_run_code_is_refused(estimator, tmp_path):
    marker = tmp_path / "code_ran"
    state = load_estimator(estimator.path)._network.state_dict()
    torch.save(
        {"state_dict": state, "manifest": estimator.manifest, "extra": _Payload(marker)},
        tmp_path / "estimator.pt",
    )
    with pytest.raises(ValueError, match="refused: it holds more than weights"):
        load_estimator(tmp_path)
    assert not marker.exists()


def test_an_edited_prior_record_in_a_bundle_is_refused(estimator, tmp_path):
    data = torch.load(estimator.path / "estimator.pt", weights_only=True)
    data["manifest"]["prior"]["parameters"][0]["high"] = 3.0
    torch.save(data, tmp_path / "estimator.pt")
    with pytest.raises(ValueError, match="does not match its hash"):
        load_estimator(tmp_path)


def test_training_into_a_dataset_directory_is_refused(datasets):
    with pytest.raises(ValueError, match="is a dataset directory"):
        train_estimator(datasets[0].directory, datasets[0].directory, SMALL, progress=False)
    assert open_dataset(datasets[0].directory).candidates is not None  # still readable


def test_estimator_of_another_format_is_refused(estimator, tmp_path):
    data = torch.load(estimator.path / "estimator.pt", weights_only=True)
    data["manifest"]["format"] = 99
    torch.save(data, tmp_path / "estimator.pt")
    with pytest.raises(ValueError, match="format 99 .* Retrain it"):
        load_estimator(tmp_path)


def test_a_finished_training_rerun_with_higher_caps_trains_further(datasets, files):
    config = TrainingConfig.from_dict({**SMALL.to_dict(), "max_epochs": 2})
    out = files / "resume"
    train_estimator(datasets[0].directory, out, config, progress=False)
    first = pd.read_csv(out / "training_log.csv")

    # A higher cap for the flow stage only: the summary network is kept, the flow continues.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        continued = train_estimator(
            datasets[0].directory, out, replace(config, flow_max_epochs=3), progress=False
        )
    assert not [w for w in caught if "starts over" in str(w.message)]
    assert continued.manifest["validation"]["summary_epochs"] == 2
    assert continued.manifest["validation"]["epochs"] == 3
    log = pd.read_csv(out / "training_log.csv")
    pd.testing.assert_frame_equal(log.iloc[:4], first)  # summary 1-2, flow 1-2 kept

    # A higher cap for both: the summary network trains on, so the flow starts over.
    with pytest.warns(UserWarning, match="earlier state of the summary network"):
        longer = train_estimator(
            datasets[0].directory, out, replace(config, max_epochs=3), progress=False
        )
    assert longer.manifest["validation"]["summary_epochs"] == 3
    assert longer.manifest["validation"]["epochs"] == 3
    log = pd.read_csv(out / "training_log.csv")
    pd.testing.assert_frame_equal(log.iloc[:2], first.iloc[:2])
    assert log["stage"].tolist() == ["summary"] * 3 + ["flow"] * 3

    # Other settings make another run, whose checkpoints are not mixed with these.
    with pytest.raises(ValueError, match="checkpoint of another training run"):
        train_estimator(datasets[0].directory, out, replace(config, seed=1), progress=False)


def test_mlp_point_regressor_learns_g_na(datasets, files):
    config = TrainingConfig.from_dict({**SMALL.to_dict(), "max_epochs": 30})
    regressor = train_point_regressor(
        datasets[0].directory, files / "mlp.pt", config, progress=False
    )
    test = datasets[1]
    predicted = regressor.predict(test.observations[:])["ina.g_Na"].to_numpy()
    truth = test.parameters["ina.g_Na"].to_numpy()
    assert 1 - np.mean((predicted - truth) ** 2) / truth.var() > 0.7


def test_mlp_checkpoint_of_another_run_is_refused(datasets, files):
    config = TrainingConfig.from_dict({**SMALL.to_dict(), "max_epochs": 1})
    checkpoint = files / "mlp_one_epoch.pt"
    train_point_regressor(datasets[0].directory, checkpoint, config, progress=False)
    with pytest.raises(ValueError, match="mlp_one_epoch.pt is a checkpoint of another"):
        train_point_regressor(datasets[1].directory, checkpoint, config, progress=False)


class _Interrupted(Exception):
    pass


class _LineData(RowBlocks):
    """y = 2x + 1 with noise: 200 training and 50 validation rows; raises at ``interrupt_at``."""

    def __init__(self, interrupt_at=None):
        rng = np.random.default_rng(0)
        self.x = torch.as_tensor(rng.normal(size=(250, 1)), dtype=torch.float32)
        self.y = (
            2 * self.x + 1 + 0.1 * torch.as_tensor(rng.normal(size=(250, 1)), dtype=torch.float32)
        )
        self.n_train, self.n_validation, self.batch_size = 200, 50, 32
        self.interrupt_at = interrupt_at

    def block(self, start, stop):
        return self.y[start:stop], self.x[start:stop]

    def training_batches(self, epoch, seed):
        if epoch == self.interrupt_at:
            raise _Interrupted
        return super().training_batches(epoch, seed)


def _fit_line(
    checkpoint, max_epochs, schedule="cosine", interrupt_at=None, ema_decay=0.0, jitter=0.0
):
    torch.manual_seed(0)
    line = torch.nn.Linear(1, 1)
    config = TrainingConfig(
        learning_rate=0.3, max_epochs=max_epochs, lr_schedule=schedule, ema_decay=ema_decay
    )
    result = fit_streaming(
        line,  # jitter: a loss that draws random numbers, as the flow stage's does
        lambda y, x: ((line(x) + jitter * torch.randn_like(y) - y) ** 2).sum(1),
        _LineData(interrupt_at),
        config,
        checkpoint,
        progress=False,
    )
    return line, result


def test_cosine_schedule_and_resume_after_interruption(tmp_path):
    whole, whole_result = _fit_line(tmp_path / "whole.pt", 6)
    rates = [h["learning_rate"] for h in whole_result["history"]]
    np.testing.assert_allclose(rates, [0.15 * (1 + np.cos(np.pi * k / 6)) for k in range(6)])
    assert whole_result["best_validation_loss"] < 0.02  # the noise variance is 0.01

    with pytest.raises(_Interrupted):
        _fit_line(tmp_path / "resumed.pt", 6, interrupt_at=2)
    resumed, resumed_result = _fit_line(tmp_path / "resumed.pt", 6)
    assert resumed_result["epochs"] == 6
    assert [h["learning_rate"] for h in resumed_result["history"]] == rates
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict())


def test_a_resumed_run_draws_the_random_numbers_of_an_uninterrupted_one(tmp_path):
    whole, whole_result = _fit_line(tmp_path / "whole.pt", 5, jitter=0.1)
    with pytest.raises(_Interrupted):
        _fit_line(tmp_path / "resumed.pt", 5, interrupt_at=3, jitter=0.1)
    resumed, resumed_result = _fit_line(tmp_path / "resumed.pt", 5, jitter=0.1)
    losses = [h["training_loss"] for h in whole_result["history"]]
    assert [h["training_loss"] for h in resumed_result["history"]] == losses
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict(), rtol=0, atol=0)


def test_the_flow_stage_resumes_bit_identically(datasets, tmp_path, monkeypatch):
    config = replace(SMALL, max_epochs=3)
    ds = datasets[0]
    prior = dataset_prior(ds)
    torch.manual_seed(0)
    summary = build_summary(config, ds.observations.shape[1], prior)
    summarised = SummarisedData(StreamingData(ds, prior, config), summary)
    (tmp_path / "whole").mkdir(), (tmp_path / "resumed").mkdir()
    whole, whole_stage = train_flow(0, summarised, config, tmp_path / "whole", "cpu", False)
    batches = SummarisedData.training_batches

    def interrupted_in_epoch_2(self, epoch, seed):
        if epoch == 1:
            raise _Interrupted
        return batches(self, epoch, seed)

    monkeypatch.setattr(SummarisedData, "training_batches", interrupted_in_epoch_2)
    with pytest.raises(_Interrupted):
        train_flow(0, summarised, config, tmp_path / "resumed", "cpu", False)
    monkeypatch.undo()
    resumed, stage = train_flow(0, summarised, config, tmp_path / "resumed", "cpu", False)
    losses = [h["validation_loss"] for h in whole_stage["history"]]
    assert [h["validation_loss"] for h in stage["history"]] == losses
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict(), rtol=0, atol=0)


def test_constant_schedule_and_unknown_schedule_refused(tmp_path):
    _, result = _fit_line(tmp_path / "constant.pt", 3, schedule="constant")
    assert [h["learning_rate"] for h in result["history"]] == [0.3] * 3
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainingConfig(lr_schedule="step")


def test_weight_average_is_the_warmed_up_moving_average_and_swaps_back():
    line = torch.nn.Linear(1, 1)
    average = WeightAverage(line, decay=0.9)
    expected = line.weight.detach().clone()
    for step, value in enumerate([1.0, 2.0, -3.0, 4.0], start=1):
        with torch.no_grad():
            line.weight.fill_(value)
        average.update()
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
    with average.applied():
        torch.testing.assert_close(line.weight.detach(), expected)
    assert line.weight.item() == 4.0  # the module's own weights are back after the block

    inactive = WeightAverage(line, decay=0.0)
    inactive.update()
    with inactive.applied():
        assert line.weight.item() == 4.0


def test_weight_averaged_training_resumes_and_returns_the_validated_average(tmp_path):
    whole, whole_result = _fit_line(tmp_path / "whole.pt", 6, "constant", ema_decay=0.9)
    best = torch.nn.Linear(1, 1)
    best.load_state_dict(whole_result["best_state"])
    # The returned weights are the average, not the last step's, and they are the ones validated.
    assert not torch.equal(best.weight, whole.weight)
    data = _LineData()
    x, y = data.x[200:], data.y[200:]
    with torch.no_grad():
        validation = ((best(x) - y) ** 2).sum(1).mean().item()
    assert validation == pytest.approx(whole_result["best_validation_loss"], rel=1e-5)
    assert whole_result["best_validation_loss"] < 0.02  # the noise variance is 0.01

    with pytest.raises(_Interrupted):
        _fit_line(tmp_path / "resumed.pt", 6, "constant", interrupt_at=3, ema_decay=0.9)
    _, resumed_result = _fit_line(tmp_path / "resumed.pt", 6, "constant", ema_decay=0.9)
    torch.testing.assert_close(resumed_result["best_state"], whole_result["best_state"])


class _StubDataset:
    """What :func:`training_identity` reads of a dataset."""

    manifest = {"name": "stub"}

    def __len__(self):
        return 10


def test_weight_averaging_setting_is_checked_and_part_of_the_run_identity():
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        TrainingConfig(ema_decay=1.0)

    unaveraged = training_identity(_StubDataset(), TrainingConfig(ema_decay=0.0))
    assert training_identity(_StubDataset(), TrainingConfig(ema_decay=0.999)) != unaveraged


def test_epoch_caps_are_part_of_the_run_identity_only_under_a_cosine_schedule():
    for schedule, same_run in (("constant", True), ("cosine", False)):
        config = TrainingConfig(lr_schedule=schedule, max_epochs=30)
        short = training_identity(_StubDataset(), config)
        for longer in (dict(max_epochs=50), dict(flow_max_epochs=50)):
            identity = training_identity(_StubDataset(), replace(config, **longer))
            assert (identity == short) is same_run, (schedule, longer)
    patient = TrainingConfig(stop_after_epochs=40)
    assert training_identity(_StubDataset(), patient) == training_identity(
        _StubDataset(), TrainingConfig()
    )


def test_a_stored_bundle_of_format_2_still_loads_and_draws_the_same():
    """Compatibility: a bundle written by an earlier version (tests/data/format2_bundle, made by
    its make_format2_bundle.py) loads safely and gives the draws it gave then.
    """
    from conftest import DATA

    estimator = load_estimator(DATA / "format2_bundle")
    assert estimator.manifest["format"] == 2
    expected = np.load(DATA / "format2_bundle" / "expected.npz")
    draws = estimator.posteriors(expected["observation"])[0].sample(50, seed=0)
    np.testing.assert_allclose(draws[list(estimator.names)], expected["draws"], rtol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"flow": "nope"}, "TrainingConfig.flow must be one of 'nsf'"),
        ({"batch_size": 0}, "TrainingConfig.batch_size must be an integer >= 1"),
        ({"max_epochs": 0}, "TrainingConfig.max_epochs must be an integer >= 1"),
        ({"learning_rate": -1e-3}, "TrainingConfig.learning_rate must be a finite number > 0"),
        ({"channels": ()}, "TrainingConfig.channels must be a non-empty sequence"),
        ({"dense": (64, 0)}, "each of TrainingConfig.dense must be an integer >= 1"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\)"),
        ({"seed": 1.5}, "TrainingConfig.seed must be an integer >= 0"),
    ],
)
def test_training_settings_are_validated_when_made(change, message):
    with pytest.raises(ValueError, match=message):
        replace(SMALL, **change)


def test_an_unknown_device_is_refused_before_training(datasets, tmp_path):
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        train_estimator(datasets[0].directory, tmp_path / "e", SMALL, device="tpu")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 3], lambda data: b"", lambda data: bytes(range(256)) * 8],
    ids=["truncated", "empty", "random bytes"],
)
def test_damaged_estimator_files_are_named_not_tracebacks(estimator, tmp_path, damage):
    data = (estimator.path / "estimator.pt").read_bytes()
    (tmp_path / "estimator.pt").write_bytes(damage(data))
    with pytest.raises(ValueError, match=r"estimator.pt is damaged or not a torch file"):
        load_estimator(tmp_path)


def test_an_ensemble_of_flows_is_added_to_a_finished_run(datasets, files):
    """n_flows only adds flows: rerunning a finished single-flow run with n_flows=2 keeps its
    summary network and first flow and trains a second; the posterior is their mixture.
    """
    config = replace(SMALL, max_epochs=3)
    out = files / "ensemble"
    single = train_estimator(datasets[0].directory, out, config, progress=False)
    log = pd.read_csv(out / "training_log.csv")
    pair = train_estimator(datasets[0].directory, out, replace(config, n_flows=2), progress=False)
    again = pd.read_csv(out / "training_log.csv")
    assert set(again["stage"]) == {"summary", "flow", "flow1"}
    pd.testing.assert_frame_equal(again[again["stage"] != "flow1"], log)  # nothing retrained
    assert pair.manifest["format"] == 3 and pair.manifest["training"]["n_flows"] == 2
    assert len(pair.manifest["validation"]["flow_best_losses"]) == 2

    x = torch.as_tensor(datasets[1].observations[:2], dtype=torch.float32)
    network = pair._network
    with torch.no_grad():
        z = network.sample(300, x)
        context, anchor = network.summary.context(x)
        members = torch.stack([f.log_prob(z - anchor, condition=context) for f in network.flows])
        mixture = network.log_prob(z, x)
        first = single._network.log_prob(z, x)
    expected = torch.logsumexp(members, dim=0) - np.log(2)
    torch.testing.assert_close(mixture, expected)
    torch.testing.assert_close(members[0], first)  # flow 0 is the single run's flow
    assert not torch.allclose(members[0], members[1])
    a = pair.posteriors(datasets[1].observations[0])[0].sample(200, seed=4)
    b = load_estimator(out).posteriors(datasets[1].observations[0])[0].sample(200, seed=4)
    pd.testing.assert_frame_equal(a, b)
