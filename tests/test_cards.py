"""Model cards (dualattn.cards): generated from a run's summary and, once evaluated, from results.json."""

from __future__ import annotations

from dualattn.cards import GUARANTEES, measured_for, model_card

SUMMARY = {"variant": "select_predict", "model": "unet_encoder", "seed": 2, "dataset": "my_scans",
           "class_names": ["normal", "tumor"], "num_train": 100, "num_val": 10, "num_test": 20,
           "val_balanced_accuracy": 0.85, "parameters": 12345, "epochs": 10, "best_epoch": 7,
           "model_config": {"name": "unet_encoder", "variant": "select_predict", "budget": 0.2}}

RESULTS = {
    "meta": {"n_images": 128, "n_patients": 64, "sealed": True, "seeds": [0, 1, 2]},
    "classification": {"rows": {"select_predict": {"balanced_accuracy": {"mean": 91.5, "std": 2.0}}}},
    "own_model": {"select_predict": {"methods": {"select_predict": {"blocks": {"block3": {
        "ap": {"mean": 50.2, "std": 3.0}, "hidden_swap_flips@20": {"mean": 15.8, "std": 4.0},
        "hidden_swap_flips_healthy@20": {"mean": 25.0, "std": 1.0}, "sharpness": {"mean": None}}}}}}},
    "warnings": ["select_predict [block3]: ap 5.0 is below the random control's 6.0", "dual [block3]: other"],
}


def test_card_before_evaluation_states_use_data_guarantee_and_how_to_reproduce():
    card = model_card(SUMMARY)
    assert card.startswith("# Model card: select_predict (unet_encoder), seed 2")
    for heading in ("## Intended use", "## Data", "## Model", "## Maps and what they mean", "## Known failure modes",
                    "## Reproduce"):
        assert heading in card
    assert "not a diagnostic device" in card and "100 train / 10 val / 20 test" in card
    assert GUARANTEES["select_predict"][1] in card and "## Measured" not in card
    assert "none measured yet" in card


def test_card_after_evaluation_carries_the_measured_numbers_and_the_variants_warnings():
    card = model_card(SUMMARY, results=RESULTS, command="dualattn demo --preset default --out DEMO")
    assert "## Measured" in card and "128 test scans of 64 patients (the sealed draw)" in card
    assert "- balanced accuracy on the test split: 91.5 ± 2.0" in card
    assert "(own model): 15.8 ± 4.0" in card and "(the floor): 25.0 ± 1.0" in card
    assert "sharpness" not in dict(measured_for(RESULTS, "select_predict"))  # a missing number is left out
    assert "below the random control" in card and "dual [block3]" not in card
    assert "dualattn demo --preset default --out DEMO" in card


def test_every_variant_has_its_guarantee_stated():
    from dualattn.models import list_variants

    for variant in ("baseline", "unconstrained", "dual", "exact", "multilevel", "additive", "select_predict"):
        assert variant in list_variants("unet_encoder") and variant in GUARANTEES


def test_a_threshold_form_run_states_its_own_guarantee():
    summary = {**SUMMARY, "model_config": {**SUMMARY["model_config"], "mask_rule": "threshold"}}
    card = model_card(summary)
    assert GUARANTEES["select_predict/threshold"][1] in card and GUARANTEES["select_predict"][2] not in card
    assert GUARANTEES["select_predict"][1] in model_card({**SUMMARY, "model_config": {
        **SUMMARY["model_config"], "mask_rule": "budget"}})
