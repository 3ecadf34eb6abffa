"""The explorer of notebook 05 without a browser: its controls offer only cached codecs, every
change re-renders, and a finetuned decoder reads the same bytes."""

import pytest

from icm_lib.codec import load_codec
from icm_lib.widgets import AS_TRAINED, Explorer


@pytest.fixture(scope="module")
def explorer(smoke_env):
    exp = smoke_env
    ref = exp.reference
    codecs = {
        ("det", "baseline", 0.5): ref,
        ("det", "aux-enc", 0.5): load_codec(ref.codec_state()),
        ("seg", "baseline", 0.5): ref,
        ("seg", "baseline", 5.0): load_codec(ref.codec_state()),
    }
    tuned = load_codec(ref.codec_state())
    for p in tuned.decoder_parameters():
        p.data.mul_(1.05)  # another decoder of the same bytes
    return Explorer(exp, codecs, {("seg", "baseline", 0.5): {"full": tuned}}, images=3)


def test_widget_offers_what_exists_and_rerenders_on_every_change(explorer):
    box = explorer.widget()
    (task, variant, lmbda), (decoder, index, step) = (
        box.children[0].children,
        box.children[1].children,
    )
    numbers, train, picture = box.children[2], box.children[3], box.children[5]
    assert train.layout.display == "none"  # every offered codec is cached
    assert (task.value, variant.value, lmbda.value, decoder.value) == (
        "det",
        "aux-enc",
        0.5,
        AS_TRAINED,
    )
    assert variant.options == ("aux-enc", "baseline") and "<b>index</b> 0" in numbers.value
    first = picture.value
    assert first[:4] == b"\x89PNG"
    step.click()
    assert index.value == 1 and "<b>index</b> 1" in numbers.value and picture.value != first
    task.value = "seg"  # the codec and λ choices follow the task
    assert variant.options == ("baseline",) and lmbda.options == (0.5, 5.0)
    assert decoder.options == (AS_TRAINED, "full") and "<b>task</b> seg" in numbers.value
    lmbda.value = 5.0
    assert decoder.options == (AS_TRAINED,)  # only that λ's codec was finetuned


def test_a_finetuned_decoder_reads_the_same_bytes(explorer):
    a = explorer.view("seg", "baseline", 0.5, 0)
    b = explorer.view("seg", "baseline", 0.5, 0, "full")
    assert a.numbers["bytes"] == b.numbers["bytes"] and a.numbers["psnr"] != b.numbers["psnr"]
    assert explorer.view("seg", "baseline", 0.5, 0) is a  # cached: a second look is instant


def test_a_recorded_codec_missing_here_says_its_command_and_trains_on_request(smoke_env):
    exp = smoke_env
    explorer = Explorer(
        exp, {("seg", "baseline", 0.5): exp.reference}, images=2, recorded=[("seg", "aux-enc", 0.5)]
    )
    assert explorer.variants("seg") == ["aux-enc", "baseline"]
    command = explorer.train_command("seg", "aux-enc", 0.5)
    assert command == (
        "python -m icm_lib.study --profile smoke --seeds 0 --tasks seg --variants aux-enc"
    )
    with pytest.raises(LookupError, match="not in this machine's cache.*--variants aux-enc"):
        explorer.view("seg", "aux-enc", 0.5, 0)
    box = explorer.widget()
    (task, variant, lmbda) = box.children[0].children
    numbers, train, picture = box.children[2], box.children[3], box.children[5]
    task.value, variant.value = "seg", "aux-enc"
    assert "not trained on this machine" in numbers.value and command in numbers.value
    assert train.layout.display is None and picture.value == b""
    train.click()  # the study's run, same key
    assert explorer.is_cached("seg", "aux-enc", 0.5) and picture.value[:4] == b"\x89PNG"
    assert train.layout.display == "none"
    run_dir = exp.run_dir("seg", "aux-enc", 0.5, 0)
    assert (run_dir / "codec.pt").is_file()


def test_another_worlds_explorer_reads_the_cache_only(smoke_env, tmp_path):
    """``other_world``: the codecs a world's recorded study holds for the seed, loaded where
    cached, offered with their command where not; nothing is trained."""
    import torch

    from icm_lib.results import RunRecord, StudyFile
    from icm_lib.widgets import other_world

    exp = smoke_env
    exp.point("seg", "baseline", 0.05, 0)  # a run of the recorded study this cache holds
    runs = [
        RunRecord(task="seg", variant="baseline", lmbda=lm, seed=s, run_dir=None, steps=None,
                  seconds=None)
        for lm, s in ((0.05, 0), (77.0, 0), (0.05, 1))
    ]  # fmt: skip
    study = StudyFile(profile="smoke", seeds=[0, 1], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, runs=runs)  # fmt: skip
    study.write(StudyFile.path(tmp_path, "smoke"))
    seen = other_world(exp.profile, exp.cache_dir.parent, torch.device("cpu"), 0, tmp_path)
    assert seen.recorded == {("seg", "baseline", 0.05), ("seg", "baseline", 77.0)}
    assert set(seen.codecs) == {("seg", "baseline", 0.05)}
    assert not exp.run_dir("seg", "baseline", 77.0, 0).exists()
    assert "--profile smoke" in seen.train_command("seg", "baseline", 77.0)
